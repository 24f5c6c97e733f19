"""Fuse new slice pairs with a trained FusionNet: load the checkpoint, find the pairs, write 8-bit PNG.

A pair is either two files of the same name in the two subfolders of an input folder
(``DIR/CT/2010.png`` with ``DIR/MRI/2010.png``), or an entry of a datalist split. Gray pairs go
through the network as they are; a colour source (PET/SPECT pseudo-colour) is fused in YCbCr: its
Y with the other source, then its Cb/Cr are put back and the result is written as RGB
(:func:`pipeline.colour.fuse_with_colour`). Images are float in [0, 1] inside (÷255 after
decoding, no min-max normalisation) and written as 8-bit PNG; the network output is clipped to
[0, 1].

Pairs are streamed: decoded when their batch comes, fused, written, dropped, so memory stays flat in
the number of pairs. Every output name is built from checked parts inside the output folder
(:func:`pipeline.outputs.output_path`); two pairs with one output name are an error. The files are
written into a staging folder and published together at the end (:class:`pipeline.outputs.StagedOutput`),
so a bad pair, a crash or a kill leaves the previous output (or none), never a partial set; a
second inference into the same folder stops at once, and an output folder inside an input folder
is refused.

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
from pipeline.model_index import checkpoint_for, entry_pair_type, pair_type
from pipeline.outputs import StagedOutput, check_name, check_slice
from pipeline.pairing import find_pairs

__all__ = ["datalist_pairs", "checkpoint_groups", "run_inference"]

logger = logging.getLogger(__name__)


def datalist_pairs(datalist: str | os.PathLike, split: str | None = "test") -> list[tuple[str, Path, Path]]:
    """Pairs of a datalist split (``None``: all splits), named ``<pair>/<case>_<slice:03d>``.

    Every part of a name is a checked field of the datalist (:func:`pipeline.datalist.load_datalist`);
    an entry without ``case``/``slice`` is named by its ``image_a`` file.

    Args:
        datalist: the ``datalist.json``.
        split: the split, or ``None`` for all.

    Returns:
        ``(name, image_a, image_b)`` per entry.

    Raises:
        pipeline.datalist.DatalistError: the datalist is missing, invalid or has no such split.
        pipeline.outputs.OutputPathError: an ``image_a`` name that cannot name an output file.
    """
    data = load_datalist(datalist)
    splits = SPLITS if split is None else (split,)
    if split is not None and split not in data:
        raise ValueError(f"{datalist}: no split {split!r}; choose one of {SPLITS}")
    out = []
    for s in splits:
        for e in data[s]:
            if "case" in e and "slice" in e:
                name = f"{check_name(e['case'], 'case')}_{check_slice(e['slice']):03d}"
            else:
                name = check_name(Path(e["image_a"]).stem, "image_a file name", datalist)
            pair = check_name(e.get("pair", "pairs"), "pair")
            out.append((f"{pair}/{name}", Path(e["image_a"]), Path(e["image_b"])))
    return out


def checkpoint_groups(
    pairs: Sequence[tuple[str, Path, Path]], ckpt_path: str | os.PathLike | None, by_folder: bool
) -> dict[Path, list[int]]:
    """Which checkpoint fuses which pairs: ``ckpt_path`` for all, or each pair type's shipped network.

    Args:
        pairs: ``(name, image_a, image_b)``; a datalist pair's name starts with its ``pair`` field.
        ckpt_path: one checkpoint for every pair, or ``None`` to choose by pair type
            (:func:`pipeline.model_index.checkpoint_for`).
        by_folder: the pairs come from an input folder, whose subfolder names are the modalities.

    Returns:
        checkpoint -> indices of its pairs, in pair order.
    """
    groups: dict[Path, list[int]] = {}
    for i, (name, pa, pb) in enumerate(pairs):
        if ckpt_path is not None:
            path = Path(ckpt_path)
        elif by_folder:
            path = checkpoint_for(pair_type(Path(pa).parent.name, Path(pb).parent.name))
        else:
            path = checkpoint_for(entry_pair_type({"pair": name.split("/")[0]}))
        groups.setdefault(path, []).append(i)
    return groups


def run_inference(
    ckpt_path: str | os.PathLike | None,
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
        ckpt_path: the trained weights for every pair; ``None``: each pair type's shipped network
            (the input subfolders' or the datalist's modalities pick it, :mod:`pipeline.model_index`).
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
            (:class:`pipeline.io.CheckpointError`, :class:`pipeline.io.ImageReadError`); unsafe or
            colliding output names, an output folder inside an input folder, or one another
            process is writing (:mod:`pipeline.outputs`). The output folder is then left as it was.
        pipeline.outputs.OutputWriteError: the output cannot be written (disk full, read-only).
    """
    if (input_dir is None) == (datalist is None):
        raise ValueError("give exactly one of input_dir (two subfolders of paired images) or datalist")
    pairs = find_pairs(input_dir, subdirs) if input_dir is not None else datalist_pairs(datalist, split)
    if not pairs:
        raise ValueError(f"{datalist}: split {split!r} has no pairs")
    inputs = [input_dir] if input_dir is not None else [Path(datalist).resolve().parent]
    out_dir = Path(output_dir)
    staged = StagedOutput(out_dir, "inference", inputs=inputs)
    if engine not in ("local", "ray"):
        raise ValueError(f"unknown engine {engine!r}; choose local or ray")
    groups = checkpoint_groups(pairs, ckpt_path, by_folder=input_dir is not None)
    with staged:  # one set of checked names, one lock and all-or-nothing output for both engines
        targets = [staged.path(*name.split("/"), suffix=".png", source=pa) for name, pa, _ in pairs]
        where = "Ray workers"
        if engine == "ray":
            from pipeline.ray_engine import RayOptions, ray_inference

            options = RayOptions(address=ray_address, workers=ray_workers, gpus_per_worker=ray_gpus_per_worker,
                                 threads_per_worker=ray_threads_per_worker)
        fusers = {} if engine == "ray" else {  # every network is loaded and checked before a pair is fused
            c: CNNFuser(load_fusion_network(c, device=device, widths=widths), amp=amp, batch_size=batch_size)
            for c in groups}
        for checkpoint, indices in groups.items():
            if engine == "ray":
                ray_inference([pairs[i] for i in indices], checkpoint, staged.staging, device=device, widths=widths,
                              amp=amp, batch_size=batch_size, options=options)
                continue
            fuser = fusers[checkpoint]
            for start in range(0, len(indices), fuser.batch_size):
                chunk = indices[start:start + fuser.batch_size]
                sources = []
                for i in chunk:
                    a, b = read_pair(pairs[i][1], pairs[i][2])
                    sources.append((a.astype(np.float64) / 255.0, b.astype(np.float64) / 255.0))
                for i, fused in zip(chunk, fuser.fuse_many(sources)):
                    write_png(targets[i], fused, durable=False)  # synced once, when the set is published
                del sources
            where = str(fuser.device)
        if hasattr(os, "sync"):
            os.sync()
    used = ", ".join(f"{Path(c).name} ({len(i)} pairs)" for c, i in groups.items())
    logger.info(f"fused {len(staged.files)} pairs into {out_dir} with {used} on {where}")
    return staged.files
