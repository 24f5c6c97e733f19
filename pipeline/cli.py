"""``python -m pipeline <command>``: ``fuse``, ``metrics``, ``benchmark``, ``bundle-path``, ``bundle-ids``.

Each command module exposes ``add_arguments(parser)`` and ``run(args) -> int``; it is imported only
when chosen, so the CLI starts fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Mapping, Sequence

from pipeline.io import ImageReadError

__all__ = ["main", "dispatch"]

COMMANDS = {
    "fuse": ("pipeline.baselines.cli", "fuse one pair with a method (wa, gff, lpcnn, dwt, lp, cnn)"),
    "metrics": ("pipeline.metrics.cli", "fusion quality metrics of a fused image (or folders of them)"),
    "benchmark": ("pipeline.benchmark", "fuse a datalist split with several methods and score them"),
    "bundle-path": ("pipeline.resources", "print the folder of the installed ssim_fusion MONAI bundle"),
    "bundle-ids": ("pipeline.bundle_cli", "list the bundle's overridable ids, their defaults and meaning"),
}


def dispatch(
    prog: str,
    description: str,
    commands: Mapping[str, tuple[str, str]],
    argv: Sequence[str] | None,
    errors: tuple[type[BaseException], ...],
) -> int:
    """Parse ``argv`` into one sub-command and run it, importing only the chosen module.

    Args:
        prog: program name for the usage line.
        description: first line of ``--help``.
        commands: sub-command -> (module exposing ``add_arguments``/``run``, help text).
        argv: arguments (``None``: ``sys.argv[1:]``).
        errors: exception types printed as one ``error:`` line (exit status 2) instead of a traceback.

    Returns:
        the command's exit status.
    """
    parser = argparse.ArgumentParser(prog=prog, description=description)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    argv = list(sys.argv[1:] if argv is None else argv)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, help_text) in commands.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            importlib.import_module(module).add_arguments(p)
    args = parser.parse_args(argv)
    try:
        return int(importlib.import_module(commands[args.command][0]).run(args) or 0)
    except errors as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def main(argv: Sequence[str] | None = None) -> int:
    return dispatch("python -m pipeline", __doc__.splitlines()[0], COMMANDS, argv,
                    (ImageReadError, ValueError, FileNotFoundError))
