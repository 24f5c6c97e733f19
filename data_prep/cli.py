"""``python -m data_prep <command>``: one sub-command per input layout.

Each command module exposes ``add_arguments(parser)`` and ``run(args) -> int``; they are imported
only when chosen, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from data_prep.datalist import DataPrepError, SplitSpec
from pipeline.cli import dispatch
from pipeline.io import ImageReadError

__all__ = ["main", "add_split_arguments", "split_from_args"]

COMMANDS = {
    "harvard": ("data_prep.harvard", "Harvard Whole Brain Atlas: the atlas GIF tree or the flat PNG pair tree"),
    "download-harvard": ("data_prep.download", "fetch the atlas's per-slice GIFs over HTTP (resumable)"),
    "volumes": ("data_prep.volumes", "two registered (or registrable) 3D volumes: NIfTI, DICOM, MHA, NRRD"),
    "demo": ("data_prep.demo", "the built-in synthetic phantom (for trying the pipeline, not for clinical use)"),
    "demo-volumes": ("data_prep.demo_volumes", "the synthetic phantom as a 3D CT-like / MR-like volume pair"),
}


def add_split_arguments(parser: argparse.ArgumentParser) -> None:
    """The case-wise split options shared by every command that writes a datalist."""
    g = parser.add_argument_group("split (by case, never by slice)")
    g.add_argument("--fractions", type=float, nargs=3, default=(0.7, 0.15, 0.15),
                   metavar=("TRAIN", "VAL", "TEST"), help="fractions of cases per split (default 0.7 0.15 0.15)")
    g.add_argument("--seed", type=int, default=0, help="seed of the case shuffle (default 0)")
    for s in ("training", "validation", "test"):
        g.add_argument(f"--{s}-cases", nargs="+", default=None, metavar="CASE",
                       help=f"explicit {s} cases (give all three lists to override --fractions)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT when done")


def split_from_args(args: argparse.Namespace) -> SplitSpec:
    """Build the :class:`SplitSpec` from :func:`add_split_arguments` options."""
    lists = {s: getattr(args, f"{s}_cases") for s in ("training", "validation", "test")}
    if any(v is not None for v in lists.values()):
        cases = {s: [str(c) for c in (v or [])] for s, v in lists.items()}
        return SplitSpec(seed=args.seed, cases=cases)
    return SplitSpec(fractions=tuple(args.fractions), seed=args.seed)


def main(argv: Sequence[str] | None = None) -> int:
    return dispatch("python -m data_prep", __doc__.splitlines()[0], COMMANDS, argv, (DataPrepError, ImageReadError))
