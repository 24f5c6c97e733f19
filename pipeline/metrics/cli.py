"""``python -m pipeline metrics A B F``: fusion metrics of one fused image, or of folders of them.

Given three image files (source A, source B, fused F) it prints one line per metric; given three
folders it pairs the files by name (the part before the extension, so ``fused/2010.png`` goes with
``ct/2010.gif``), prints a table of per-image values and, per metric, the mean +- standard
deviation (sample standard deviation, 0 for one image). ``--json`` prints one JSON object instead:
``{metric: value}`` for files, ``{"images": {name: {metric: value}}, "summary": {metric: {"mean",
"std", "n"}}}`` for folders; a non-finite value (a perfect PSNR) is written as the string "inf".

Files are decoded by :func:`pipeline.io.read_image` (8-bit, 0..255); colour is handled as
:func:`pipeline.metrics.compute_metrics` documents (``--colour y`` or ``per-channel``).
``--convention cddfuse`` (or ``vifb``) prints that evaluator's columns in its order instead, with
its image reading and colour handling (:mod:`pipeline.metrics.conventions`); ``--metrics`` then
takes its column names.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.metrics import COLOUR_MODES, DEFAULT_METRICS, METRICS, compute_metrics, get_spec
from pipeline.metrics.conventions import CONVENTIONS, Convention, get_convention
from pipeline.pairing import pair_folders

__all__ = ["add_arguments", "run", "pair_folders", "metric_table"]


def metric_table() -> str:
    """The registered metrics, one line each: name, better direction, summary and reference.

    Returns:
        the lines, for ``--help``; read from the specs (:data:`pipeline.metrics.METRICS`).
    """
    width = max(map(len, METRICS))
    lines = [f"  {spec.name.ljust(width)}  {spec.direction:<6}  {spec.summary} [{spec.reference}]"
             for spec in METRICS.values()]
    return "metrics (name, which values are better, what it is [what it reproduces]):\n" + "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``metrics`` command's arguments to ``parser``, and the metric table to its help.

    Args:
        parser: the ``metrics`` sub-command's parser.
    """
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = metric_table()
    parser.add_argument("a", type=Path, help="first source image, or a folder of them")
    parser.add_argument("b", type=Path, help="second source image, or a folder of them")
    parser.add_argument("f", type=Path, help="fused image, or a folder of them (same names)")
    parser.add_argument("--metrics", default=None,
                        help="comma-separated metric names (default: all of them, listed below)")
    parser.add_argument("--colour", choices=COLOUR_MODES, default=None,
                        help="colour images: 'y' = the Y channel (default), "
                             "'per-channel' = mean over RGB (VIFB); a --convention fixes its own")
    parser.add_argument("--convention", default="project",
                        help="whose columns, names and image reading (default: project): "
                             + "; ".join(f"{c.name} = {c.summary}" for c in CONVENTIONS.values()))
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def _parse_names(text: str | None, convention: Convention) -> list[str]:
    if text is None:
        return list(DEFAULT_METRICS) if convention.name == "project" else list(convention.names)
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise ValueError("--metrics is empty; give comma-separated names such as Q_Y,FMI_pixel")
    if convention.name == "project":
        for name in names:
            get_spec(name)  # fails fast, listing the valid names
    else:
        convention.select(names)  # fails fast, listing the convention's columns
    return names


def _jsonable(value: float) -> Any:
    return value if math.isfinite(value) else str(value)


def _fmt(value: float) -> str:
    return f"{value:.6g}"


def _summary(rows: dict[str, dict[str, float]], names: list[str]) -> dict[str, dict[str, float]]:
    summary = {}
    for name in names:
        values = np.array([row[name] for row in rows.values()], dtype=np.float64)
        std = float(values.std(ddof=1)) if values.size > 1 else 0.0
        summary[name] = {"mean": float(values.mean()), "std": std, "n": int(values.size)}
    return summary


def run(args: argparse.Namespace) -> int:
    """Run the ``metrics`` command; returns the exit status (0 on success).

    Raises:
        ValueError: unknown metric names or convention, mixed file/folder arguments, unpaired or
            unreadable images (the CLI prints the message and exits with status 2).
        FileNotFoundError: a path does not exist.
    """
    convention = get_convention(args.convention)
    names = _parse_names(args.metrics, convention)
    read, kwargs = convention.read, {"colour": args.colour, "convention": convention.name}
    paths = (args.a, args.b, args.f)
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file or folder")
    if all(path.is_dir() for path in paths):
        rows = {
            name: compute_metrics(read(pa), read(pb), read(pf), names, **kwargs)
            for name, pa, pb, pf in pair_folders(*paths)
        }
        summary = _summary(rows, names)
        if args.json:
            out = {"images": {k: {m: _jsonable(v) for m, v in row.items()} for k, row in rows.items()},
                   "summary": {m: {k: _jsonable(v) for k, v in s.items()} for m, s in summary.items()}}
            print(json.dumps(out, indent=2))
            return 0
        width = max(len("image"), *(len(k) for k in rows))
        cols = [max(len(m), 10) for m in names]
        print("  ".join(["image".ljust(width)] + [m.rjust(c) for m, c in zip(names, cols)]))
        for key, row in rows.items():
            print("  ".join([key.ljust(width)] + [_fmt(row[m]).rjust(c) for m, c in zip(names, cols)]))
        print(f"\nmean +- std over {len(rows)} image(s):")
        for m in names:
            mean, std = _fmt(summary[m]["mean"]), _fmt(summary[m]["std"])
            print(f"  {m.ljust(max(map(len, names)))}  {mean} +- {std}")
        return 0
    if any(path.is_dir() for path in paths):
        raise ValueError("give three image files or three folders, not a mix: " + ", ".join(map(str, paths)))
    images = read(args.a), read(args.b), read(args.f)
    values = compute_metrics(*images, names, **kwargs)
    if args.json:
        print(json.dumps({m: _jsonable(v) for m, v in values.items()}, indent=2))
    else:
        width = max(map(len, names))
        for m, v in values.items():
            print(f"{m.ljust(width)}  {_fmt(v)}")
    return 0
