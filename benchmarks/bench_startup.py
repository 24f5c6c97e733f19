"""Cold-start time of the command lines: from ``python ...`` to its exit, one small job each.

Usage::

    python benchmarks/bench_startup.py [--repeat 3] [--json]

Each command runs in a fresh interpreter (its own process, so every import is paid again), from an
empty temporary folder, on one generated 64x64 pair; the best of ``--repeat`` runs is printed with
the median (other processes on a shared machine only ever add time):

- ``python -m pipeline --help``
- ``python -m pipeline fuse --method wa A B OUT`` (no torch, no MONAI: numpy and Pillow)
- ``python -m pipeline fuse --method cnn A B OUT`` (torch and the shipped model, no MONAI)
- ``python -m monai.bundle run inference --config_file <bundle>/configs/inference.yaml
  --input_dir PAIRS --output_dir OUT`` (MONAI's command line imports all of MONAI first)

With ``--imports`` it also lists, per command, whether torch, MONAI and Ignite were imported (from
``python -X importtime``). The checkout's packages are used when it is run from the checkout
(``PYTHONPATH`` is set to it), the installed ones otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["commands", "time_command", "imported_roots", "main"]

REPO = Path(__file__).resolve().parents[1]
#: The top-level packages whose import the report names.
HEAVY = ("torch", "monai", "ignite", "scipy", "mlflow")


def _pair(folder: Path) -> tuple[Path, Path]:
    """Write one gray 64x64 pair ``CT/x.png`` + ``MRI/x.png`` below ``folder``.

    Args:
        folder: where the pair goes.

    Returns:
        the two files.
    """
    rng = np.random.default_rng(0)
    out = []
    for sub in ("CT", "MRI"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
        path = folder / sub / "x.png"
        Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8)).save(path)
        out.append(path)
    return out[0], out[1]


def commands(work: Path) -> dict[str, list[str]]:
    """The timed command lines, by label, with their inputs written below ``work``.

    Args:
        work: an empty folder.

    Returns:
        label -> argv (the interpreter first).
    """
    if str(REPO) not in sys.path and (REPO / "pipeline" / "__init__.py").is_file():
        sys.path.insert(0, str(REPO))  # the checkout's bundle, as the timed commands use (_env)
    from pipeline.resources import bundle_root

    a, b = _pair(work / "pairs")
    py = sys.executable
    return {
        "pipeline --help": [py, "-m", "pipeline", "--help"],
        "fuse --method wa": [py, "-m", "pipeline", "fuse", "--method", "wa", str(a), str(b),
                             str(work / "wa.png")],
        "fuse --method cnn": [py, "-m", "pipeline", "fuse", "--method", "cnn", str(a), str(b),
                              str(work / "cnn.png")],
        "bundle run inference": [py, "-m", "monai.bundle", "run", "inference", "--config_file",
                                 str(bundle_root() / "configs" / "inference.yaml"),
                                 "--input_dir", str(work / "pairs"), "--output_dir", str(work / "fused")],
    }


def _env() -> dict[str, str]:
    """The environment of a timed run: this checkout first on the path when run from it."""
    env = dict(os.environ)
    if (REPO / "pipeline" / "__init__.py").is_file():
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    return env


def time_command(argv: list[str], cwd: Path) -> float:
    """Seconds from starting ``argv`` to its exit; it must succeed.

    Args:
        argv: the command line.
        cwd: its working folder.

    Returns:
        the wall time.

    Raises:
        RuntimeError: the command failed.
    """
    t0 = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"{argv} failed:\n{done.stderr[-3000:]}")
    return seconds


def imported_roots(argv: list[str], cwd: Path) -> list[str]:
    """Which of :data:`HEAVY` a command imports (``python -X importtime``).

    Args:
        argv: the command line (the interpreter first).
        cwd: its working folder.

    Returns:
        the heavy top-level packages it imported.
    """
    done = subprocess.run([argv[0], "-X", "importtime", *argv[1:]], cwd=cwd, env=_env(),
                          capture_output=True, text=True, timeout=600)
    names = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()
             if line.startswith("import time")}
    return [h for h in HEAVY if h in names]


def main(argv: list[str] | None = None) -> int:
    """Time every command and print a table (or JSON).

    Args:
        argv: command-line arguments.

    Returns:
        0.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per command (default 3)")
    parser.add_argument("--imports", action="store_true", help="also name the heavy packages each imports")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for label, cmd in commands(work).items():
            runs = [time_command(cmd, work) for _ in range(args.repeat)]
            results[label] = {"best_s": round(min(runs), 2), "median_s": round(statistics.median(runs), 2)}
            if args.imports:
                results[label]["imports"] = imported_roots(cmd, work)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"cold start, {args.repeat} run(s) each ({os.cpu_count()} CPUs):")
    for label, r in results.items():
        extra = f"   imports: {', '.join(r['imports']) or '-'}" if "imports" in r else ""
        print(f"  {label:24s} best {r['best_s']:6.2f} s   median {r['median_s']:6.2f} s{extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
