"""``cnn``: the trained SSIM-alpha fusion network as a method with the baselines' ``fuse(a, b)`` shape.

The weights default to the bundle's ``models/model.pt`` (:func:`pipeline.resources.shipped_checkpoint`,
found in a checkout and in an installed wheel alike); a loaded network is
kept per (checkpoint, modification time, device), so fusing a data set loads it once. It runs in
the fastest measured inference form (:class:`pipeline.inference.CNNFuser`: batch norm folded into
the convolutions, channels-last, ``inference_mode``), equal to the eager network up to float
rounding; to fuse many pairs at once, batched, use ``CNNFuser.fuse_many``.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import torch

from pipeline.resources import shipped_checkpoint

__all__ = ["fuse", "DEFAULT_CHECKPOINT"]

#: Weights shipped with the bundle (produced by its training run).
DEFAULT_CHECKPOINT = shipped_checkpoint()


@functools.lru_cache(maxsize=4)
def _fuser(path: str, mtime: float, device: str):
    from pipeline.inference import CNNFuser, load_fusion_network

    return CNNFuser(load_fusion_network(path, device=device))


def fuse(
    a: np.ndarray,
    b: np.ndarray,
    checkpoint: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """Fuse two registered slices with the trained FusionNet.

    Args:
        a: source A, ``(H, W)`` float in [0, 1] (a colour ``(H, W, 3)`` source is fused in YCbCr).
        b: source B, same size.
        checkpoint: weights file; default :data:`DEFAULT_CHECKPOINT`.
        device: ``"cpu"``/``"cuda"``; default CUDA when available.

    Returns:
        the fused image, float64 in [0, 1], ``(H, W)`` (``(H, W, 3)`` when a source is colour).

    Raises:
        pipeline.inference.CheckpointError: no weights at the checkpoint path (train the bundle
            first), or weights of another architecture.
        ValueError: the two images differ in size.
    """
    path = Path(checkpoint) if checkpoint is not None else DEFAULT_CHECKPOINT
    from pipeline.inference import load_state_dict

    if not path.is_file():
        load_state_dict(path)  # raises the explanatory CheckpointError
    dev = str(device) if device is not None else ("cuda:0" if torch.cuda.is_available() else "cpu")
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape[:2] != b.shape[:2]:
        raise ValueError(f"cnn.fuse: the sources differ in size, {a.shape} and {b.shape}")
    return _fuser(str(path.resolve()), path.stat().st_mtime, dev).fuse(a, b)
