"""Seconds to fuse a 256 x 256 x 180 CT/MR volume pair into a NIfTI on A's grid (issue 17's figure).

Usage::

    python benchmarks/bench_volumes.py [--repeat 3] [--shape 256 256 180] [--batch-sizes 8]
        [--same-grid] [--register] [--threads N] [--json]

The pair is synthetic (an ellipsoid head: skull, brain, a lesion, CT noise in HU; MR with Rician
noise), written as NIfTI to a temporary folder: A with 0.9 x 0.9 x 1.0 mm voxels, B on another
grid (1.0 mm isotropic, shifted) so that the resampling is timed too (``--same-grid``: B on A's
grid). Each round runs :func:`pipeline.volume_fusion.fuse_volumes` with the shipped model:
read both files, orient, resample, window / scale, fuse every axial slice, write the NIfTI. The
first call (the network's loading, the imports) is a warm-up and not counted. For each batch size
it prints the best wall time of ``--repeat`` rounds, the median, and the CPU time of that best
round (all threads of this process; on a shared machine CPU time / cores is the figure an idle
machine would give).
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


def make_pair(folder: Path, shape: tuple[int, int, int], same_grid: bool) -> tuple[Path, Path]:
    """Write the synthetic CT (HU) and MR volumes as NIfTI; returns their paths."""
    import nibabel as nib

    rng = np.random.default_rng(0)
    spacing = np.array([0.9, 0.9, 1.0])
    affine_a = np.diag([*spacing, 1.0])
    affine_a[:3, 3] = -(np.array(shape) - 1) / 2 * spacing
    x, y, z = np.meshgrid(*[(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing)],
                          indexing="ij", sparse=True)
    r = (x / 85) ** 2 + (y / 100) ** 2 + (z / 80) ** 2
    lesion = ((x - 30) / 12) ** 2 + ((y + 20) / 12) ** 2 + (z / 15) ** 2 < 1
    ct = np.where(r < 1, 35.0, -1000.0).astype(np.float32)
    ct[(r < 1) & (r > 0.85)] = 900.0
    ct[lesion] = 70.0
    ct += rng.normal(0, 4, shape).astype(np.float32) * (r < 1)
    a = folder / "ct.nii.gz"
    nib.save(nib.Nifti1Image(ct, affine_a), str(a))
    if same_grid:
        shape_b, affine_b, grid = shape, affine_a, (x, y, z)
    else:
        shape_b = tuple(int(round(n * s)) for n, s in zip(shape, spacing))
        affine_b = np.eye(4)
        affine_b[:3, 3] = -(np.array(shape_b) - 1) / 2 + np.array([2.0, -1.5, 1.0])
        grid = np.meshgrid(*[np.arange(n) + o for n, o in zip(shape_b, affine_b[:3, 3])], indexing="ij",
                           sparse=True)
    xb, yb, zb = grid
    rb = (xb / 85) ** 2 + (yb / 100) ** 2 + (zb / 80) ** 2
    mr = np.where(rb < 1, 0.5 + 0.1 * np.cos(xb / 7.0) * np.sin(yb / 9.0), 0.0)
    mr = np.where((rb < 1) & (rb > 0.85), 0.08, mr)
    mr = np.where(((xb - 30) / 12) ** 2 + ((yb + 20) / 12) ** 2 + (zb / 15) ** 2 < 1, 0.9, mr)
    noise = rng.normal(0, 0.02, (2, *shape_b))
    mr = np.hypot(mr + noise[0], noise[1]).astype(np.float32)
    b = folder / "mr.nii.gz"
    nib.save(nib.Nifti1Image(mr, affine_b), str(b))
    return a, b


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(256, 256, 180), metavar=("X", "Y", "Z"))
    parser.add_argument("--repeat", type=int, default=3, help="timed rounds per batch size (default 3)")
    parser.add_argument("--batch-sizes", default="8",
                        help="comma-separated slices per forward pass (default 8)")
    parser.add_argument("--same-grid", action="store_true", help="B on A's grid (no resampling)")
    parser.add_argument("--register", action="store_true", help="time the rigid registration too")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    import torch

    from pipeline.volume_fusion import fuse_volumes

    if args.threads:
        torch.set_num_threads(args.threads)
    shape = tuple(args.shape)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        start = time.perf_counter()
        a, b = make_pair(folder, shape, args.same_grid)
        made = time.perf_counter() - start
        fuse_volumes(a, b, folder / "warm.nii.gz", device=args.device, register=args.register)  # warm-up
        for bs in [int(v) for v in args.batch_sizes.split(",")]:
            rounds = []
            for k in range(args.repeat):
                wall, cpu = time.perf_counter(), time.process_time()
                fuse_volumes(a, b, folder / f"fused_{bs}_{k}.nii.gz", device=args.device, batch_size=bs,
                             register=args.register)
                rounds.append((time.perf_counter() - wall, time.process_time() - cpu))
            best = min(rounds)
            results.append({"batch_size": bs, "best_s": round(best[0], 3),
                            "median_s": round(float(np.median([r[0] for r in rounds])), 3),
                            "cpu_s_of_best": round(best[1], 3), "rounds": len(rounds)})
    info = {"shape": list(shape), "resampled": not args.same_grid, "register": args.register,
            "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "load_average": [round(v, 2) for v in os.getloadavg()], "pair_written_s": round(made, 2),
            "results": results}
    if args.json:
        print(json.dumps(info))
        return 0
    print(f"fuse_volumes {'x'.join(map(str, shape))} (B {'on A grid' if args.same_grid else 'resampled'}"
          f"{', registered' if args.register else ''}), shipped model, {args.device}, "
          f"{info['torch_threads']} torch threads, {info['cpu_count']} CPUs, "
          f"load average {info['load_average']}")
    for r in results:
        print(f"  batch {r['batch_size']:>3}: best {r['best_s']:.2f} s, median {r['median_s']:.2f} s of "
              f"{r['rounds']}, CPU time of the best {r['cpu_s_of_best']:.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
