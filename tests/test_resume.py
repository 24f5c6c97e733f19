"""Resume after a crash: a training process killed with SIGKILL in mid-epoch, resumed with
``--resume True``, ends where the unbroken run ends.

Tolerance: exact. On the CPU with one thread every operation is deterministic, and latest.pt
restores everything the rest of the run draws from (network, optimizer, scheduler, trainer
counters, best-model record and the torch/NumPy/Python/transform random states, saved after the
epoch's validation), so the resumed run repeats the unbroken one bit for bit (measured: max
difference 0.0). On GPUs, non-deterministic kernels make it a tolerance instead.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from test_distributed import make_dataset, subprocess_env

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "bundles" / "ssim_fusion" / "configs" / "train.yaml"
EPOCHS, BATCH = 3, 2
EPOCH_LENGTH = 8  # 16 training pairs / batch 2


def _cmd(datalist: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", str(TRAIN),
            "--datalist", str(datalist), "--output_dir", str(out), "--epochs", str(EPOCHS),
            "--batch_size", str(BATCH), "--patch_size", "48", "--val_metrics", "[]", "--progress_bar", "False",
            "--log_interval", "1", "--lr_schedule", "True", *extra]


def _start(cmd: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(), stdout=log.open("w"), stderr=subprocess.STDOUT)


def _finish(proc: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"training did not finish in {timeout} s:\n{log.read_text()[-3000:]}") from None
    assert proc.returncode == 0, log.read_text()[-4000:]


def _assert_same(a: dict, b: dict, where: str = "") -> None:
    """Equal nested checkpoint entries (tensors bit for bit)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_unbroken_run(tmp_path: Path) -> None:
    datalist = make_dataset(tmp_path / "data")
    unbroken_out, broken_out = tmp_path / "unbroken", tmp_path / "broken"
    unbroken = _start(_cmd(datalist, unbroken_out), tmp_path / "unbroken.log")
    log = tmp_path / "broken.log"
    broken = _start(_cmd(datalist, broken_out), log)
    # kill in epoch 2, after its 2nd iteration: latest.pt holds epoch 1, epoch 2 is half done
    marker = f"Epoch 2 iteration {EPOCH_LENGTH + 2}:"
    deadline = time.time() + 240
    while marker not in log.read_text():
        assert broken.poll() is None, "training ended before it could be killed:\n" + log.read_text()[-3000:]
        assert time.time() < deadline, "epoch 2 never started"
        time.sleep(0.005)
    os.kill(broken.pid, signal.SIGKILL)
    broken.wait(timeout=60)
    assert broken.returncode == -signal.SIGKILL
    models = broken_out / "models"
    assert sorted(p.name for p in models.iterdir()) == ["latest.pt", "model.pt"]  # no partial files
    killed_at = torch.load(models / "latest.pt", weights_only=True)
    assert killed_at["trainer"]["iteration"] == EPOCH_LENGTH, "not killed in mid-epoch 2"
    assert "Epoch 3 iteration" not in log.read_text()

    # the documented command: the same one with --resume True
    resumed = _start(_cmd(datalist, broken_out, "--resume", "True"), tmp_path / "resumed.log")
    _finish(resumed, tmp_path / "resumed.log")
    _finish(unbroken, tmp_path / "unbroken.log")
    text = (tmp_path / "resumed.log").read_text()
    assert f"resumed from {models / 'latest.pt'} at epoch 1, iteration {EPOCH_LENGTH}" in text
    assert "will not repeat the unbroken one" not in text

    a = torch.load(models / "latest.pt", weights_only=True)
    b = torch.load(unbroken_out / "models" / "latest.pt", weights_only=True)
    assert a["trainer"]["iteration"] == EPOCHS * EPOCH_LENGTH
    for key in ("model", "optimizer", "lr_scheduler", "trainer", "best_model", "rng"):
        _assert_same(a[key], b[key], key)
    assert a["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.0, abs=1e-12)  # cosine over 3 epochs
    best_a = torch.load(models / "model.pt", weights_only=True)
    best_b = torch.load(unbroken_out / "models" / "model.pt", weights_only=True)
    _assert_same(best_a, best_b, "model.pt")


def test_random_states_round_trip() -> None:
    """RandomStates puts back torch, NumPy, Python and every random transform's generator."""
    import random

    from monai.transforms import Compose, RandFlipd, RandSpatialCropd

    from pipeline.checkpoint import RandomStates

    tf = Compose([RandSpatialCropd("image", roi_size=8, random_size=False), RandFlipd("image", prob=0.5)])
    tf.set_random_state(3)
    states = RandomStates(tf)
    saved = states.state_dict()
    assert len(saved["ranks"]) == 1 and len(saved["ranks"][0]["transforms"]) >= 3  # Compose, crop (+ cropper), flip

    def draw() -> tuple:
        x = {"image": torch.arange(2 * 16 * 16.0).reshape(2, 16, 16)}
        return (tf(x)["image"].clone(), torch.rand(3), np.random.rand(3), random.random())

    first = draw()
    draw()
    # through a file loaded with weights_only=True, as latest.pt is
    import io

    buf = io.BytesIO()
    torch.save(saved, buf)
    buf.seek(0)
    states.load_state_dict(torch.load(buf, weights_only=True))
    again = draw()
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert np.array_equal(first[2], again[2]) and first[3] == again[3]
