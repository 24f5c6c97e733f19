"""The benchmark's engines without Ray: memory flat in the number of pairs, the ``--engine`` options.

The Ray path itself is tested against the local one in ``test_ray_engine.py`` (skipped without Ray).
"""

from __future__ import annotations

import argparse
import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from pipeline.benchmark import add_arguments, ray_options_from_args, run_benchmark
from pipeline.io import write_png


def _datalist(root: Path, n: int, size: int = 160) -> Path:
    rng = np.random.default_rng(n)
    entries = []
    for k in range(n):
        for mod in ("CT", "MRI"):
            write_png(root / mod / f"c{k}_{k:03d}.png", rng.random((size, size)))
        entries.append({"image_a": f"CT/c{k}_{k:03d}.png", "image_b": f"MRI/c{k}_{k:03d}.png",
                        "modality_a": "CT", "modality_b": "MRI", "pair": "CT-MRI", "case": f"c{k}",
                        "slice": k, "mode_a": "L", "mode_b": "L"})
    path = root / "datalist.json"
    path.write_text(json.dumps({"training": [], "validation": [], "test": entries}))
    return path


def _peak(datalist: Path, out: Path) -> int:
    tracemalloc.start()
    try:
        run_benchmark(datalist, out, methods=["wa"], metrics=["SSIM", "EN"], n_figures=0,
                      mlflow_logging=False, progress=False)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_benchmark_memory_is_flat_in_the_number_of_pairs(tmp_path: Path) -> None:
    few = _datalist(tmp_path / "few", 2)
    many = _datalist(tmp_path / "many", 10)
    _peak(few, tmp_path / "warm")  # imports and caches first
    small, large = _peak(few, tmp_path / "out_few"), _peak(many, tmp_path / "out_many")
    # decoding all 10 pairs first would add their images: 10 x 2 x 160 x 160 float64, about 4 MB
    assert large < small * 1.5 + 256 * 1024, (small, large)


def test_engine_options_reach_ray_options(tmp_path: Path) -> None:
    from pipeline.ray_engine import RayOptions

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--datalist", "d.json", "--out", "o", "--engine", "ray",
                              "--ray-address", "auto", "--ray-workers", "4", "--ray-gpus-per-worker", "0.5",
                              "--ray-threads-per-worker", "1"])
    options = RayOptions(**ray_options_from_args(args))
    got = (options.address, options.workers, options.gpus_per_worker, options.threads())
    assert got == ("auto", 4, 0.5, 1)
    with pytest.raises(ValueError, match="workers"):
        RayOptions(workers=0)
    with pytest.raises(ValueError, match="unknown engine"):
        run_benchmark(_datalist(tmp_path / "d", 1), tmp_path / "out", methods=["wa"], metrics=["EN"],
                      mlflow_logging=False, progress=False, engine="spark")
