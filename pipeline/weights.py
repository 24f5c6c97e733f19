"""Trained FusionNet weights from a checkpoint file: the state dict, the network, its default device.

Apart from :mod:`pipeline.checkpoint` (which saves and resumes training and needs Ignite and MONAI)
so that what only fuses - ``python -m pipeline fuse --method cnn``, :mod:`pipeline.baselines.cnn` -
imports torch and nothing of the training stack. :mod:`pipeline.checkpoint` re-exports these names.
Files are read by :func:`pipeline.io.load_checkpoint` (``torch.load(weights_only=True)``: no code
runs from a checkpoint), and every failure is a :class:`pipeline.io.CheckpointError` naming the file
and the fix.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch

from pipeline.io import CheckpointError, load_checkpoint
from pipeline.networks import FusionNet, widths_from_state_dict

__all__ = ["load_state_dict", "load_fusion_network", "default_device"]


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The network weights in a checkpoint: a plain state dict (``model.pt``) or ``{"model": ...}``
    (the resumable ``latest.pt``).

    Args:
        path: the checkpoint file.

    Returns:
        parameter name -> tensor, on the CPU.

    Raises:
        CheckpointError: missing, unreadable, or holding no network weights.
    """
    obj = load_checkpoint(path, "cpu", missing=(
        "no such checkpoint. Train the bundle (python -m monai.bundle run training --config_file "
        "bundles/ssim_fusion/configs/train.yaml) and copy its best models/model.pt there, "
        "or pass --ckpt_path"))
    if "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    if not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: holds no network state dict. "
                              "Use the bundle's models/model.pt or a latest.pt from training")
    return obj


def load_fusion_network(
    checkpoint: str | os.PathLike,
    device: str | torch.device | None = None,
    widths: Sequence[int] | None = None,
    **net_kwargs: Any,
) -> FusionNet:
    """A FusionNet with the checkpoint's weights, in eval mode, on ``device``.

    Args:
        checkpoint: ``model.pt`` (state dict) or a training checkpoint with a ``model`` entry.
        device: target device; default CUDA when available, else CPU.
        widths: the widths the checkpoint must have; ``None`` reads them from the checkpoint.
        net_kwargs: further :class:`FusionNet` arguments.

    Returns:
        the network.

    Raises:
        CheckpointError: missing or unreadable file, or weights of another architecture (the
            message says what differs and how to fix it).
    """
    state = load_state_dict(checkpoint)
    try:
        found = widths_from_state_dict(state)
    except ValueError as err:
        raise CheckpointError(f"{checkpoint}: is a checkpoint of another architecture, {err}. "
                              "Use a checkpoint trained by the ssim_fusion bundle") from err
    if widths is not None and tuple(int(w) for w in widths) != found:
        raise CheckpointError(f"{checkpoint}: was trained with widths {list(found)} but widths "
                              f"{list(widths)} were asked for. Pass --widths \"{list(found)}\" "
                              "(or leave widths unset)")
    net = FusionNet(widths=found, **net_kwargs)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{checkpoint}: does not fit FusionNet(widths={list(found)}): {err}. "
                              "Use a checkpoint trained by the ssim_fusion bundle") from err
    dev = torch.device(device) if device is not None else default_device()
    return net.to(dev).eval()


def default_device() -> torch.device:
    """The device a network goes to by default.

    Returns:
        CUDA device 0 when available, else the CPU.
    """
    return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
