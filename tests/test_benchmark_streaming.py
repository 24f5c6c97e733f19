"""The benchmark streams: its memory does not grow with the number of pairs (one pair decoded at a time)."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import numpy as np

from pipeline.benchmark import run_benchmark
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
