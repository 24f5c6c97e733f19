"""Fuse new slice pairs with a trained FusionNet: load the checkpoint, find the pairs, write 8-bit PNG.

A pair is either two files of the same name in the two subfolders of an input folder
(``DIR/CT/2010.png`` with ``DIR/MRI/2010.png``), or an entry of a datalist split. Gray pairs go
through the network as they are; a colour source (PET/SPECT pseudo-colour) is fused in YCbCr: its
Y with the other source, then its Cb/Cr are put back and the result is written as RGB
(:func:`pipeline.colour.fuse_with_colour`). Images are float in [0, 1] inside (÷255 after
decoding, no min-max normalisation) and written as 8-bit PNG; the network output is clipped to
[0, 1].

Every input pair is decoded and checked before anything is written, and each PNG is written
atomically, so a bad pair stops the run with a clear error and leaves no partial output file.

The parts have their own homes: the checkpoint is loaded and checked by
:func:`pipeline.checkpoint.load_fusion_network`, folders are paired by
:func:`pipeline.pairing.find_pairs`, and the network runs in :class:`pipeline.baselines.cnn.CNNFuser`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from pipeline.baselines.cnn import DEFAULT_BATCH_SIZE, CNNFuser
from pipeline.checkpoint import load_fusion_network
from pipeline.datalist import SPLITS, load_datalist
from pipeline.io import read_pair, write_png
from pipeline.pairing import find_pairs

__all__ = ["datalist_pairs", "run_inference"]

logger = logging.getLogger(__name__)


def datalist_pairs(datalist: str | os.PathLike, split: str | None = "test") -> list[tuple[str, Path, Path]]:
    """Pairs of a datalist split (``None``: all splits), named ``<pair>/<case>_<slice:03d>``.

    Raises:
        pipeline.datalist.DatalistError: the datalist is missing, invalid or has no such split.
    """
    data = load_datalist(datalist)
    splits = SPLITS if split is None else (split,)
    if split is not None and split not in data:
        raise ValueError(f"{datalist}: no split {split!r}; choose one of {SPLITS}")
    out = []
    for s in splits:
        for e in data[s]:
            name = Path(e["image_a"]).stem
            if "case" in e and "slice" in e:
                name = f"{e['case']}_{int(e['slice']):03d}"
            out.append((f"{e.get('pair', 'pairs')}/{name}", Path(e["image_a"]), Path(e["image_b"])))
    return out


def run_inference(
    ckpt_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    input_dir: str | os.PathLike | None = None,
    datalist: str | os.PathLike | None = None,
    split: str | None = "test",
    subdirs: Sequence[str] | None = None,
    device: str | torch.device | None = None,
    widths: Sequence[int] | None = None,
    amp: bool = False,
    batch_size: int | None = DEFAULT_BATCH_SIZE,
    engine: str = "local",
    ray_address: str | None = None,
    ray_workers: int = 2,
    ray_gpus_per_worker: float = 0.0,
    ray_threads_per_worker: int | None = None,
) -> list[Path]:
    """Fuse every pair of ``input_dir`` (or of a datalist split) and write 8-bit PNGs to ``output_dir``.

    Args:
        ckpt_path: the trained weights (``models/model.pt``).
        output_dir: where ``<name>.png`` files go (created).
        input_dir: folder of two subfolders of same-named images (see :func:`pipeline.pairing.find_pairs`).
        datalist: alternatively, a ``datalist.json``; outputs go to ``<pair>/<case>_<slice>.png``.
        split: the datalist split to fuse (``None``: all).
        subdirs: ``(A, B)`` subfolder names of ``input_dir``.
        device: ``"cpu"``, ``"cuda"``...; default CUDA when available.
        widths: expected network widths (``None``: read from the checkpoint).
        amp: float16 autocast on CUDA.
        batch_size: pairs of one size per forward pass.
        engine: ``local`` (this process) or ``ray`` (Ray Data actors holding the network,
            :func:`pipeline.ray_engine.ray_inference`: the same PNG bytes).
        ray_address: the Ray cluster for ``engine="ray"`` (``None``: a local instance).
        ray_workers: Ray actors at once.
        ray_gpus_per_worker: GPUs reserved per Ray actor.
        ray_threads_per_worker: torch threads per Ray actor (``None``: this process's, so that the
            PNGs are byte-identical to the local engine's).

    Returns:
        the written files, in pair order.

    Raises:
        ValueError: neither or both of ``input_dir`` and ``datalist``; bad pairs or checkpoint
            (:class:`pipeline.io.CheckpointError`, :class:`pipeline.io.ImageReadError`) - before anything
            is written.
    """
    if (input_dir is None) == (datalist is None):
        raise ValueError("give exactly one of input_dir (two subfolders of paired images) or datalist")
    pairs = find_pairs(input_dir, subdirs) if input_dir is not None else datalist_pairs(datalist, split)
    if not pairs:
        raise ValueError(f"{datalist}: split {split!r} has no pairs")
    if engine != "local":
        from pipeline.ray_engine import RayOptions, ray_inference

        if engine != "ray":
            raise ValueError(f"unknown engine {engine!r}; choose local or ray")
        options = RayOptions(address=ray_address, workers=ray_workers, gpus_per_worker=ray_gpus_per_worker,
                             threads_per_worker=ray_threads_per_worker)
        return ray_inference(pairs, ckpt_path, output_dir, device=device, widths=widths, amp=amp,
                             batch_size=batch_size, options=options)
    fuser = CNNFuser(load_fusion_network(ckpt_path, device=device, widths=widths), amp=amp,
                     batch_size=batch_size)
    decoded = [(name, *read_pair(pa, pb)) for name, pa, pb in pairs]  # check all before writing any
    out_dir = Path(output_dir)
    written = []
    fused_all = fuser.fuse_many([(a.astype(np.float64) / 255.0, b.astype(np.float64) / 255.0)
                                 for _, a, b in decoded])
    for (name, _, _), fused in zip(decoded, fused_all):
        target = out_dir / f"{name}.png"
        write_png(target, fused)
        written.append(target)
    logger.info(f"fused {len(written)} pairs into {out_dir} with {ckpt_path} on {fuser.device}")
    return written
