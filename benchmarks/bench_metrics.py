"""Seconds per 256x256 triple for every registered fusion metric, on one CPU core.

Usage::

    python benchmarks/bench_metrics.py [--repeat 5] [--metrics Q_Y,FMI_pixel] [--clock wall|cpu]
                                       [--json] [--check]

The triple is a real atlas pair (``harvard/CT-MRI`` slice ``2010``: CT, MRI and their rounded mean
as the fused image) when the shared data is found ($FUSION_SHARED_DATA, or ``../shared/data``
beside the checkout), else a synthetic 256x256 phantom (smooth blobs on a black background plus
noise). Each metric is timed as the best of ``--repeat`` runs after one warm-up run (the best
run is the one least disturbed by other processes), with numpy/BLAS/torch limited to one thread.
The clock is wall time; ``--clock cpu`` takes the process's CPU time instead, which on a shared
machine leaves out the time spent waiting for a core (on an idle one the two agree, since the
work is single-threaded). The ``pipeline`` package timed is the one of this checkout.

Targets (issue 12): the whole set under 0.5 s, every FMI feature under 0.1 s. The report gives
each metric's seconds, the total, and pass/fail per target (the whole-set target is judged only
when every registered metric is timed); ``--check`` exits with status 1 when a target is missed.
"""

from __future__ import annotations

import os

# One core: set before numpy/scipy/torch load their thread pools.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable  # noqa: E402

import numpy as np  # noqa: E402

__all__ = ["WHOLE_SET_TARGET_S", "FMI_TARGET_S", "CLOCKS", "load_triple", "time_metric", "judge",
           "print_report", "main"]

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # time this checkout's metrics, not another installed copy
SHARED_DATA = Path(os.environ.get("FUSION_SHARED_DATA", REPO.parent / "shared" / "data"))
#: Issue 12's targets, on one core: all registered metrics together, and each FMI feature.
WHOLE_SET_TARGET_S = 0.5
FMI_TARGET_S = 0.1


def load_triple() -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """(a, b, f, description): the atlas triple if the shared data exists, else a synthetic one."""
    from pipeline.io import read_image

    ct = SHARED_DATA / "harvard" / "CT-MRI" / "CT" / "2010.png"
    mri = SHARED_DATA / "harvard" / "CT-MRI" / "MRI" / "2010.png"
    if ct.is_file() and mri.is_file():
        a = read_image(ct, mode="gray").astype(np.float64)
        b = read_image(mri, mode="gray").astype(np.float64)
        description = f"atlas CT-MRI 2010 {a.shape[1]}x{a.shape[0]}, fused = rounded mean"
        return a, b, np.round((a + b) / 2.0), description
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:256, :256] / 255.0
    head = ((xx - 0.5) ** 2 + (yy - 0.5) ** 2 < 0.16).astype(np.float64)
    a = head * (120 + 100 * np.exp(-((xx - 0.4) ** 2 + (yy - 0.45) ** 2) / 0.01))
    b = head * (60 + 80 * np.sin(12 * xx) ** 2 + 40 * np.exp(-((xx - 0.6) ** 2 + (yy - 0.55) ** 2) / 0.02))
    a = np.clip(np.round(a + head * rng.normal(0, 4, a.shape)), 0, 255)
    b = np.clip(np.round(b + head * rng.normal(0, 4, b.shape)), 0, 255)
    return a, b, np.round((a + b) / 2.0), "synthetic 256x256 phantom (no shared data found)"


CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


def time_metric(name: str, a: np.ndarray, b: np.ndarray, f: np.ndarray, repeat: int,
                clock: str = "wall") -> tuple[float, float]:
    """(best seconds on ``clock``, the metric's value) over ``repeat`` runs after a warm-up."""
    from pipeline.metrics import get_metric

    metric = get_metric(name)
    value = metric(a, b, f)  # warm-up: imports, caches
    best = float("inf")
    for _ in range(repeat):
        start = CLOCKS[clock]()
        metric(a, b, f)
        best = min(best, CLOCKS[clock]() - start)
    return best, value


def judge(timings: dict[str, dict[str, float]], whole_set: bool) -> dict[str, dict[str, Any]]:
    """Each target's verdict: limit, measured seconds, what was measured, and ``met``.

    ``met`` is None for a target the selection cannot judge (the whole set when only some
    metrics were timed; the FMI target when no FMI feature was).
    """
    total = sum(t["seconds"] for t in timings.values())
    fmi = {n: t["seconds"] for n, t in timings.items() if n.startswith("FMI_")}
    worst = max(fmi, key=fmi.__getitem__) if fmi else None
    return {
        "whole_set": {"limit_s": WHOLE_SET_TARGET_S, "seconds": total, "of": "total",
                      "met": (total < WHOLE_SET_TARGET_S) if whole_set else None},
        "fmi_each": {"limit_s": FMI_TARGET_S, "seconds": fmi[worst] if worst else None,
                     "of": worst, "met": (fmi[worst] < FMI_TARGET_S) if worst else None},
    }


def _verdict(met: bool | None) -> str:
    return {True: "pass", False: "FAIL", None: "not judged"}[met]


def print_report(timings: dict[str, dict[str, float]], targets: dict[str, dict[str, Any]],
                 source: str, repeat: int, whole_set: bool, clock: str = "wall") -> None:
    """The human-readable table: one line per metric, the total, then each target's verdict."""
    print(f"triple: {source}; one thread; {clock} clock, best of {repeat} runs after a warm-up")
    width = max(len(n) for n in [*timings, "total"])
    print(f"  {'metric'.ljust(width)}  {'seconds':>8}  {'value':>12}  target")
    for name, t in timings.items():
        target = ""
        if name.startswith("FMI_"):
            target = f"< {FMI_TARGET_S} s  {_verdict(t['seconds'] < FMI_TARGET_S)}"
        print(f"  {name.ljust(width)}  {t['seconds']:8.4f}  {t['value']:12.6g}  {target}".rstrip())
    whole = targets["whole_set"]
    label = "" if whole_set else "  (a subset: the whole-set target needs every metric)"
    print(f"  {'total'.ljust(width)}  {whole['seconds']:8.4f}  {'':12}  "
          f"< {WHOLE_SET_TARGET_S} s  {_verdict(whole['met'])}{label}")
    fmi = targets["fmi_each"]
    fmi_text = f"worst {fmi['of']} {fmi['seconds']:.4f} s" if fmi["of"] else "no FMI feature timed"
    print(f"targets (issue 12): whole set < {WHOLE_SET_TARGET_S} s: {_verdict(whole['met'])} "
          f"(total {whole['seconds']:.4f} s); each FMI feature < {FMI_TARGET_S} s: "
          f"{_verdict(fmi['met'])} ({fmi_text})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per metric (best is kept)")
    parser.add_argument("--metrics", default=None, help="comma-separated subset (default: all registered)")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="wall time (default) or the process's CPU time (for a shared machine)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    from pipeline.metrics import METRIC_NAMES

    names = METRIC_NAMES if args.metrics is None else [n.strip() for n in args.metrics.split(",")
                                                        if n.strip()]
    a, b, f, source = load_triple()
    timings = {}
    for name in names:
        seconds, value = time_metric(name, a, b, f, args.repeat, args.clock)
        timings[name] = {"seconds": seconds, "value": value}
    whole_set = args.metrics is None or set(names) >= set(METRIC_NAMES)
    targets = judge(timings, whole_set)
    ok = all(t["met"] is not False for t in targets.values())

    if args.json:
        print(json.dumps({"triple": source, "repeat": args.repeat, "clock": args.clock, "metrics": timings,
                          "total_seconds": targets["whole_set"]["seconds"], "targets": targets, "met": ok},
                         indent=2))
    else:
        print_report(timings, targets, source, args.repeat, whole_set, args.clock)
    return 0 if (ok or not args.check) else 1


if __name__ == "__main__":
    sys.exit(main())
