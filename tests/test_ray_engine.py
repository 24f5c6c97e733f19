"""The Ray Data engine against the single-process path: the same PNG bytes and the same metrics.

A local Ray instance with 2 workers (``ray.init(num_cpus=2)``); skipped where Ray is not installed
(it is the optional ``ray`` extra).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.benchmark import run_benchmark
from pipeline.inference import run_inference
from pipeline.io import write_png
from pipeline.resources import shipped_checkpoint

ray = pytest.importorskip("ray")

N_PAIRS = 6
SIZE = 128


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance with 2 worker CPUs for the module (the engine reuses it)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Path:
    """``N_PAIRS`` gray pairs of blobs in ``root/CT`` and ``root/MRI``, and a datalist of them."""
    root = tmp_path_factory.mktemp("pairs")
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    entries = []
    for k in range(N_PAIRS):
        blob = np.exp(-((xx - rng.uniform(.3, .7)) ** 2 + (yy - .5) ** 2) / .02)
        ct = np.clip(blob + rng.normal(0, .02, xx.shape), 0, 1)
        mr = np.clip(0.6 * np.sin(6 * xx + k) ** 2 + rng.normal(0, .05, xx.shape), 0, 1)
        for mod, img in (("CT", ct), ("MRI", mr)):
            write_png(root / mod / f"c{k}_{k:03d}.png", img)
        entries.append({"image_a": f"CT/c{k}_{k:03d}.png", "image_b": f"MRI/c{k}_{k:03d}.png",
                        "modality_a": "CT", "modality_b": "MRI", "pair": "CT-MRI", "case": f"c{k}",
                        "slice": k, "mode_a": "L", "mode_b": "L"})
    (root / "datalist.json").write_text(json.dumps({"training": [], "validation": [], "test": entries}))
    return root


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.png"))}


def test_ray_inference_writes_the_same_pngs(local_ray, pairs: Path, tmp_path: Path) -> None:
    ckpt = shipped_checkpoint()
    local = run_inference(ckpt, tmp_path / "local", input_dir=pairs, subdirs=["CT", "MRI"], device="cpu")
    remote = run_inference(ckpt, tmp_path / "ray", input_dir=pairs, subdirs=["CT", "MRI"], device="cpu",
                           engine="ray", ray_workers=2, batch_size=2)
    assert [p.name for p in remote] == [p.name for p in local]
    assert len(local) == N_PAIRS
    assert _files(tmp_path / "ray") == _files(tmp_path / "local")


def test_ray_benchmark_gives_the_same_rows_and_files(local_ray, pairs: Path, tmp_path: Path) -> None:
    common = {"split": "test", "methods": ["wa", "cnn"], "metrics": ["Q_Y", "FMI_pixel", "SSIM"],
              "device": "cpu", "n_figures": 1, "mlflow_logging": False, "progress": False}
    local = run_benchmark(pairs / "datalist.json", tmp_path / "local", **common)
    remote = run_benchmark(pairs / "datalist.json", tmp_path / "ray", engine="ray",
                           ray_options={"workers": 2, "batch_size": 2}, **common)

    def strip(rows: list[dict]) -> list[dict]:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]

    assert len(local.rows) == 2 * N_PAIRS
    assert strip(remote.rows) == strip(local.rows)  # exact: == on floats
    assert _files(tmp_path / "ray" / "fused") == _files(tmp_path / "local" / "fused")
    assert _files(tmp_path / "ray" / "figures") == _files(tmp_path / "local" / "figures")


def test_ray_inference_refuses_a_bad_pair_before_writing(local_ray, pairs: Path, tmp_path: Path) -> None:
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(pairs, bad)
    (bad / "MRI" / "c3_003.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="c3_003.png"):
        run_inference(shipped_checkpoint(), tmp_path / "out", input_dir=bad, subdirs=["CT", "MRI"],
                      device="cpu", engine="ray")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.png"))


def test_missing_ray_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    from pipeline import ray_engine

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(ImportError, match=r"ssim-fusion\[ray\]"):
        ray_engine.require_ray()
