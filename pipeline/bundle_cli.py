"""The bundle's command line as a user meets it: one line per mistake, ``--help``, the overridable ids.

MONAI's ``python -m monai.bundle run`` evaluates every config expression inside
``ConfigExpression.evaluate`` (and instantiates every component inside ``ConfigComponent.instantiate``),
which wrap whatever they raise in ``RuntimeError("Failed to evaluate ...")``: the project's own message
ends up in the chained cause, tens of lines above the last one. The bundle configs' ``initialize`` id,
which MONAI evaluates before the workflow's own id, calls :func:`start`, which

- installs :func:`excepthook`: an uncaught exception whose chain holds a user mistake
  (:func:`user_error`: a missing or unreadable file, an unregistered pair, a bad datalist or checkpoint,
  an unreachable tracking server) prints ``error: <message>`` (the file and the fix) to stderr and
  exits with status 2; any other exception keeps its full traceback, so a bug stays debuggable;
- answers ``--help``/``-h`` (which MONAI's command line would take as an override and then train) with
  the ids of the given configs, their defaults and meaning, and exits before anything is built;
- silences the deprecation warnings of dependencies, which a user cannot act on.

``python -m pipeline bundle-ids [--config train|inference|evaluate]`` prints the same table.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

__all__ = [
    "BundleId",
    "CONFIGS",
    "bundle_ids",
    "format_ids",
    "user_error",
    "excepthook",
    "silence_dependency_warnings",
    "start",
    "add_arguments",
    "run",
]

#: The bundle's configs that ``bundle-ids`` knows, by short name.
CONFIGS = ("train", "inference", "evaluate", "multi_gpu_train")

#: A top-level ``key: value  # comment`` line of a config.
_TOP_LEVEL = re.compile(r"^([A-Za-z_]\w*):(.*)$")
#: An indented comment line: the previous id's meaning goes on.
_CONTINUED = re.compile(r"^\s+#\s?(.*)$")


@dataclass(frozen=True)
class BundleId:
    """One overridable id of a bundle config.

    Args:
        name: the id (``--name value`` on MONAI's command line).
        default: its value in the config, as written there.
        meaning: the config's comment on it ("" when it has none).
    """

    name: str
    default: str
    meaning: str


def _split_comment(text: str) -> tuple[str, str]:
    """Split ``value  # comment`` at the first ``#`` outside quotes that follows white space.

    Args:
        text: the part of a YAML line after ``key:``.

    Returns:
        the value and the comment, both stripped.
    """
    quote = ""
    for i, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or text[i - 1].isspace()):
            return text[:i].strip(), text[i + 1:].strip()
    return text.strip(), ""


def bundle_ids(config: str | Path) -> list[BundleId]:
    """The ids of a config's top section, where the bundle keeps what a user may override.

    The top section is the run of top-level ``key: value`` lines before the first top-level key
    without a value (a component such as ``network_def:``); ``imports`` and the workflow's run list are
    not ids to override. An indented comment line continues the previous id's meaning.

    Args:
        config: a YAML config file, or one of :data:`CONFIGS` (the installed bundle's).

    Returns:
        the ids in file order.

    Raises:
        FileNotFoundError: no such config.
    """
    path = Path(config)
    if str(config) in CONFIGS:
        from pipeline.resources import bundle_root

        path = bundle_root() / "configs" / f"{config}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such bundle config; name one of {', '.join(CONFIGS)} "
                                "or a YAML file")
    ids: list[BundleId] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        top = _TOP_LEVEL.match(line)
        if top:
            value, comment = _split_comment(top.group(2))
            if not value:
                if ids:
                    break
                continue
            ids.append(BundleId(top.group(1), value, comment))
            continue
        more = _CONTINUED.match(line)
        if more and ids and not line.lstrip().startswith("# -"):
            last = ids[-1]
            ids[-1] = BundleId(last.name, last.default, f"{last.meaning} {more.group(1).strip()}".strip())
    return ids


def format_ids(ids: Sequence[BundleId], width: int = 110) -> str:
    """The ids as an aligned table: ``--name default  meaning``.

    Args:
        ids: what :func:`bundle_ids` returned.
        width: the longest line wanted; a long meaning wraps under itself.

    Returns:
        the table, one id per line (or more when wrapped).
    """
    import textwrap

    if not ids:
        return ""
    left = [f"  --{i.name} {i.default}" for i in ids]
    col = min(max(len(s) for s in left) + 2, 46)
    lines = []
    for head, item in zip(left, ids):
        wrapped = textwrap.wrap(item.meaning, max(width - col, 30)) or [""]
        if len(head) + 2 > col:
            lines.append(head)
            lines.extend(" " * col + w for w in wrapped if w)
            continue
        lines.append(head.ljust(col) + wrapped[0])
        lines.extend(" " * col + w for w in wrapped[1:])
    return "\n".join(line.rstrip() for line in lines)


def user_error(exc: BaseException) -> BaseException | None:
    """The user mistake behind an exception, looked for along its chain of causes.

    A user mistake is one of the project's own error types (:class:`pipeline.io.ImageReadError`,
    :class:`pipeline.io.CheckpointError`, :class:`pipeline.datalist.DatalistError` - ``data_prep``'s
    ``DataPrepError`` is the same class -, :class:`pipeline.tracking.TrackingServerError`), a file that
    is missing, a folder where a file should be or a permission refused, or a ``ValueError`` that the
    project's code raised on an input (the project raises it only for what a user gave).

    Args:
        exc: the exception that reached the top.

    Returns:
        the outermost such exception in the chain (the project's message, not the OS error it wraps),
        or ``None`` when there is none (a bug).
    """
    from pipeline.datalist import DatalistError
    from pipeline.io import CheckpointError, ImageReadError

    own: tuple[type[BaseException], ...] = (ImageReadError, CheckpointError, DatalistError,
                                            FileNotFoundError, NotADirectoryError, IsADirectoryError,
                                            PermissionError)
    tracking = sys.modules.get("pipeline.tracking")
    if tracking is not None:
        own += (tracking.TrackingServerError,)
    seen = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, own) or (isinstance(cur, ValueError) and _raised_by_project(cur)):
            return cur
        cur = cur.__cause__ if cur.__cause__ is not None else (
            None if cur.__suppress_context__ else cur.__context__)
    return None


def _raised_by_project(exc: BaseException) -> bool:
    """Whether the innermost frame of ``exc``'s traceback is in ``pipeline`` or ``data_prep``.

    Args:
        exc: an exception.

    Returns:
        ``True`` when the project's code raised it.
    """
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    name = str(tb.tb_frame.f_globals.get("__name__", ""))
    return name.split(".")[0] in ("pipeline", "data_prep")


def excepthook(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    """``sys.excepthook`` of a bundle run: a user mistake is one ``error:`` line and exit status 2.

    Args:
        exc_type: the exception's type.
        exc: the exception.
        tb: its traceback.
    """
    mistake = user_error(exc) if isinstance(exc, Exception) else None
    if mistake is None:
        sys.__excepthook__(exc_type, exc, tb)
        return
    message = " ".join(str(mistake).split()) or type(mistake).__name__
    sys.stdout.flush()
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def silence_dependency_warnings() -> None:
    """Hide the deprecation warnings that dependencies (MONAI, Ignite, MLflow, torch...) raise.

    A user cannot act on them; the project's own deprecations (``pipeline``, ``data_prep``: e.g. the
    bundle's old ``--second_term``) stay visible.
    """
    for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category, module=r"(?!pipeline\b|data_prep\b)")


def _config_files(argv: Sequence[str]) -> list[str]:
    """The ``--config_file`` value(s) of a MONAI command line.

    Args:
        argv: the command line.

    Returns:
        the config files given (a quoted Python list is split), or ``[]``.
    """
    value = None
    for i, arg in enumerate(argv):
        if arg == "--config_file" and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith("--config_file="):
            value = arg.split("=", 1)[1]
    if value is None:
        return []
    if value.lstrip().startswith(("[", "(")):
        try:
            return [str(v) for v in ast.literal_eval(value)]
        except (ValueError, SyntaxError):
            return [value]
    return [value]


def _help(argv: Sequence[str]) -> str:
    """The text of ``--help``: usage and the ids of the given configs.

    Args:
        argv: the command line.

    Returns:
        the text.
    """
    files = [f for f in _config_files(argv) if Path(f).suffix in (".yaml", ".yml", ".json")]
    workflow = next((a for a in argv[2:3] if not a.startswith("-")), "ID") if len(argv) > 2 else "ID"
    out = [f"usage: python -m monai.bundle run {workflow} --config_file CONFIG [--ID VALUE ...]",
           "", "Any id below can be given as --ID VALUE (nested ids: --train#dataloader#num_workers 2).",
           "A dict or list is a quoted Python literal: --terms \"{'gradient': 4.0}\"."]
    for f in files:
        ids = bundle_ids(f) if Path(f).is_file() else []
        out += ["", f"{f}:", format_ids(ids) or "  (no overridable ids)"]
    return "\n".join(out)


def start(argv: Sequence[str] | None = None) -> None:
    """The bundle's ``initialize`` step: the one-line errors, ``--help``, quiet dependency warnings.

    Args:
        argv: the command line (``None``: ``sys.argv``).

    Raises:
        SystemExit: 0 after printing the help, when ``--help`` or ``-h`` was given.
    """
    argv = list(sys.argv if argv is None else argv)
    sys.excepthook = excepthook
    silence_dependency_warnings()
    # only MONAI's own command line: a program that calls monai.bundle.run keeps its options
    from_monai_cli = bool(argv) and Path(argv[0]).parent.name == "bundle" and "monai" in Path(argv[0]).parts
    if from_monai_cli and any(a in ("--help", "-h") for a in argv[1:]):
        print(_help(argv))
        sys.exit(0)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``bundle-ids`` command's arguments.

    Args:
        parser: the sub-command's parser.
    """
    parser.add_argument("--config", default="train",
                        help=f"one of {', '.join(CONFIGS)} (the installed bundle's) or a YAML file "
                             "(default train)")


def run(args: argparse.Namespace) -> int:
    """Print the overridable ids of a bundle config, their defaults and meaning.

    Args:
        args: the parsed arguments.

    Returns:
        0.
    """
    print(f"ids of {args.config} (override with --ID VALUE on python -m monai.bundle run ...):")
    print(format_ids(bundle_ids(args.config)))
    return 0
