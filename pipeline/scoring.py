"""One datalist entry of the benchmark: its checked output name, fused and scored by each method.

The unit of work shared by the benchmark's engines (this process, or a Ray actor:
:mod:`pipeline.ray_engine`), so that an entry gives the same PNG bytes and metric values wherever
it runs. Apart from :mod:`pipeline.benchmark` so that the engine module can import it without a
cycle.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.baselines import fuse_pair
from pipeline.io import read_pair, write_png
from pipeline.model_index import entry_pair_type
from pipeline.outputs import check_name, check_slice, output_path

__all__ = ["name_parts", "fused_name", "score_entry"]


def name_parts(entry: dict, datalist: str | os.PathLike, index: int) -> tuple[str, str, int]:
    """``(pair, case, slice)`` of an entry, each checked as an output name part.

    Raises:
        ValueError: the entry has no ``case`` or ``slice``, or one of them cannot name a file.
    """
    if "case" not in entry or "slice" not in entry:
        raise ValueError(f"{datalist}: entry {index} ({entry.get('image_a')}) has no 'case' and 'slice', "
                         "which name the benchmark's files; re-create it with `python -m data_prep`")
    source = f"{datalist}: entry {index}"
    return (check_name(entry.get("pair", "pairs"), "pair", source), check_name(entry["case"], "case", source),
            check_slice(entry["slice"], source))


def fused_name(parts: tuple[str, str, int], mixed_pairs: bool) -> tuple[str, ...]:
    name = f"{parts[1]}_{parts[2]:03d}"
    return (parts[0], name) if mixed_pairs else (name,)


def _pair_param(method: str, params: dict[str, Any], entry: dict[str, Any]) -> dict[str, Any]:
    """``cnn`` without a checkpoint fuses each entry with the shipped network of its pair type."""
    if method != "cnn" or params.get("checkpoint"):
        return {}
    return {"pair": entry_pair_type(entry)}


def score_entry(
    entry: dict[str, Any],
    methods: Sequence[str],
    params: dict[str, dict[str, Any]],
    out: str,
    colour: str,
    mixed_pairs: bool,
    metric_names: Sequence[str],
    scoring: dict[str, Any],
    keep_fused: bool = False,
) -> tuple[list[dict[str, Any]], dict[str, np.ndarray] | None]:
    """Fuse one datalist entry with each method, write the PNGs and score them: one row per method.

    The unit of work of both engines (this process, or a Ray actor): the same entry gives the
    same PNG bytes and the same metric values wherever it runs.

    Args:
        entry: a datalist entry (absolute image paths).
        methods: the runnable methods.
        params: method -> its keyword parameters.
        out: the benchmark's output folder (PNGs go to ``out/fused/<method>/``).
        colour: colour mode for PET/SPECT pairs.
        mixed_pairs: the split mixes pair types (names get a ``<pair>/`` folder).
        metric_names: the metric columns.
        scoring: keyword arguments of :func:`pipeline.metrics.compute_metrics` (colour or convention).
        keep_fused: also return the 8-bit fused images (for a figure).

    Returns:
        ``(rows, fused)``: the rows (``method, pair, case, slice, seconds`` and the metrics) and,
        with ``keep_fused``, method -> ``uint8`` fused image (else ``None``).
    """
    from pipeline.metrics import compute_metrics

    parts = name_parts(entry, "datalist", 0)  # checked by run_benchmark already; cheap, and on the worker
    a8, b8 = read_pair(entry["image_a"], entry["image_b"])
    a, b = a8 / 255.0, b8 / 255.0
    rows: list[dict[str, Any]] = []
    kept: dict[str, np.ndarray] = {}
    for m in methods:
        start = time.perf_counter()
        fused = fuse_pair(m, a, b, colour=colour, **params[m], **_pair_param(m, params[m], entry))
        seconds = time.perf_counter() - start
        target = output_path(Path(out), "fused", m, *fused_name(parts, mixed_pairs), suffix=".png")
        write_png(target, fused, durable=False)  # synced once, when the set is published
        f8 = np.clip(np.rint(fused * 255.0), 0, 255).astype(np.uint8)  # what write_png wrote
        scores = compute_metrics(a8.astype(np.float64), b8.astype(np.float64), f8.astype(np.float64),
                                 names=list(metric_names), nan_policy="warn", **scoring)
        row = {"method": m, "pair": entry.get("pair", ""), "case": entry["case"],
               "slice": int(entry["slice"]), "seconds": seconds}
        row.update({k: float(scores[k]) for k in metric_names})
        rows.append(row)
        if keep_fused:
            kept[m] = f8
    return rows, (kept if keep_fused else None)
