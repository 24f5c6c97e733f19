"""``python -m pipeline <command>``: ``fuse``, ``metrics``, ``benchmark``.

Each command module exposes ``add_arguments(parser)`` and ``run(args) -> int``; it is imported only
when chosen, so the CLI starts fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from pipeline.io import ImageReadError

__all__ = ["main"]

COMMANDS = {
    "fuse": ("pipeline.baselines.cli", "fuse one pair with a method (wa, gff, lpcnn, dwt, lp, cnn)"),
    "metrics": ("pipeline.metrics.cli", "fusion quality metrics of a fused image (or folders of them)"),
    "benchmark": ("pipeline.benchmark", "fuse a datalist split with several methods and score them"),
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    argv = list(sys.argv[1:] if argv is None else argv)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            importlib.import_module(module).add_arguments(p)
    args = parser.parse_args(argv)
    try:
        return int(importlib.import_module(COMMANDS[args.command][0]).run(args) or 0)
    except (ImageReadError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
