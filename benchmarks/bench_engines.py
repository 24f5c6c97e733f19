"""Pairs per second of batch inference: one process (``--engine local``) against Ray Data actors (``ray``).

Usage::

    python benchmarks/bench_engines.py [--pairs 64] [--size 256] [--workers 2] [--repeat 2] [--json]

Writes ``--pairs`` synthetic gray pairs (``--size`` pixels square) as PNG to a temporary folder
and fuses them with the shipped model through :func:`pipeline.inference.run_inference`, once per
round with each engine, interleaved: ``local`` (this process, torch's default thread count),
``ray`` on a local Ray instance of ``--workers`` CPUs with ``--workers`` actors of one CPU each
running torch with this process's thread count (the default: byte-identical PNGs), and ``ray-1t``,
the same actors with one torch thread each.
The Ray instance is started before the rounds (not timed); each Ray round includes its actors'
start (importing torch and loading the network). It counts the PNGs each Ray variant wrote that
differ from the local engine's, and prints the best pairs/s of ``--repeat`` rounds with the load
average (on a shared
machine the figures move with the other processes' load). Needs the ``ray`` extra.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def write_pairs(root: Path, n: int, size: int) -> None:
    """``n`` pairs of blobs and stripes in ``root/CT`` and ``root/MRI``."""
    from pipeline.io import write_png

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for k in range(n):
        ct = np.exp(-((xx - rng.uniform(.3, .7)) ** 2 + (yy - rng.uniform(.3, .7)) ** 2) / .03)
        mr = 0.6 * np.sin(8 * xx + k) ** 2 * (((xx - .5) ** 2 + (yy - .5) ** 2) < .16)
        write_png(root / "CT" / f"p{k:04d}.png", np.clip(ct + rng.normal(0, .02, ct.shape), 0, 1))
        write_png(root / "MRI" / f"p{k:04d}.png", np.clip(mr + rng.normal(0, .03, mr.shape), 0, 1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2, help="Ray CPUs and actors (default 2)")
    parser.add_argument("--repeat", type=int, default=2, help="rounds per engine (default 2)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import torch

    from pipeline.inference import run_inference
    from pipeline.ray_engine import _code_root, require_ray
    from pipeline.resources import shipped_checkpoint

    ray = require_ray()
    ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": _code_root()}})
    ckpt = shipped_checkpoint()
    best: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_pairs(root / "pairs", args.pairs, args.size)
        for k in range(args.repeat):
            variants = (("local", "local", None), ("ray", "ray", None), ("ray-1t", "ray", 1))
            for variant, engine, threads in variants:
                start = time.perf_counter()
                run_inference(ckpt, root / f"{variant}{k}", input_dir=root / "pairs", subdirs=["CT", "MRI"],
                              device="cpu", engine=engine, ray_workers=args.workers,
                              ray_threads_per_worker=threads)
                best[variant] = max(best.get(variant, 0.0), args.pairs / (time.perf_counter() - start))
        differ = {v: sum((root / "local0" / p.name).read_bytes() != p.read_bytes()
                         for p in (root / f"{v}0").glob("*.png"))
                  for v in ("ray", "ray-1t")}
    ray.shutdown()
    info = {"pairs": args.pairs, "size": args.size, "workers": args.workers, "rounds": args.repeat,
            "pairs_per_s": {k: round(v, 2) for k, v in best.items()}, "png_differing_from_local": differ,
            "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "load_average": [round(v, 2) for v in os.getloadavg()]}
    if args.json:
        print(json.dumps(info))
    else:
        print(f"{args.pairs} pairs of {args.size}x{args.size}, shipped model, best of {args.repeat} rounds, "
              f"{info['cpu_count']} CPUs, load average {info['load_average']}:")
        print(f"  local (1 process, {info['torch_threads']} threads): {best['local']:.2f} pairs/s")
        print(f"  ray ({args.workers} actors, {info['torch_threads']} threads each): "
              f"{best['ray']:.2f} pairs/s, "
              f"{differ['ray']} PNGs differ from local")
        print(f"  ray-1t ({args.workers} actors, 1 thread each): {best['ray-1t']:.2f} pairs/s, "
              f"{differ['ray-1t']} PNGs differ from local")
        print("  (Ray rounds include their actors' start)")
    return 0 if differ["ray"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
