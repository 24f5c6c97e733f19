"""Seconds per 256x256 triple for every registered fusion metric, on one CPU core.

Usage::

    python benchmarks/bench_metrics.py [--repeat 5] [--metrics Q_Y,FMI_pixel] [--json] [--check]

The triple is a real atlas pair (``harvard/CT-MRI`` slice ``2010``: CT, MRI and their rounded mean
as the fused image) when the shared data is found ($FUSION_SHARED_DATA, or ``../shared/data``
beside the checkout), else a synthetic 256x256 phantom (smooth blobs on a black background plus
noise). Each metric is timed as the best of ``--repeat`` runs after one warm-up run (the best
run is the one least disturbed by other processes), wall clock, with numpy/BLAS/torch limited to
one thread. Targets (issue 4): the whole set under 1 s, every FMI feature under 0.2 s;
``--check`` exits with status 1 when a target is missed.
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

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FUSION_SHARED_DATA", REPO.parent / "shared" / "data"))
WHOLE_SET_TARGET_S = 1.0
FMI_TARGET_S = 0.2


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


def time_metric(name: str, a: np.ndarray, b: np.ndarray, f: np.ndarray, repeat: int) -> tuple[float, float]:
    """(best wall seconds, the metric's value) over ``repeat`` runs after a warm-up."""
    from pipeline.metrics import get_metric

    metric = get_metric(name)
    value = metric(a, b, f)  # warm-up: imports, caches
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        metric(a, b, f)
        best = min(best, time.perf_counter() - start)
    return best, value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per metric (best is kept)")
    parser.add_argument("--metrics", default=None, help="comma-separated subset (default: all registered)")
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
        seconds, value = time_metric(name, a, b, f, args.repeat)
        timings[name] = {"seconds": seconds, "value": value}
    total = sum(t["seconds"] for t in timings.values())
    fmi_worst = max((t["seconds"] for n, t in timings.items() if n.startswith("FMI_")), default=0.0)
    whole_set = args.metrics is None
    ok = fmi_worst < FMI_TARGET_S and (not whole_set or total < WHOLE_SET_TARGET_S)

    if args.json:
        print(json.dumps({"triple": source, "repeat": args.repeat, "metrics": timings, "total_seconds": total,
                          "targets": {"whole_set_s": WHOLE_SET_TARGET_S, "fmi_s": FMI_TARGET_S}, "met": ok},
                         indent=2))
    else:
        print(f"triple: {source}; one thread; best of {args.repeat} runs after a warm-up")
        width = max(map(len, names))
        for name, t in timings.items():
            missed = name.startswith("FMI_") and t["seconds"] >= FMI_TARGET_S
            flag = "  (target < 0.2 s missed)" if missed else ""
            print(f"  {name.ljust(width)}  {t['seconds']:8.4f} s   value {t['value']:.6g}{flag}")
        label = "whole set" if whole_set else "selected metrics"
        print(f"  {'total'.ljust(width)}  {total:8.4f} s   "
              f"({label}; target < {WHOLE_SET_TARGET_S} s for the whole set)")
        print("targets met" if ok else "targets MISSED")
    return 0 if (ok or not args.check) else 1


if __name__ == "__main__":
    sys.exit(main())
