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


# ---------------------------------------------------------------- the configuration record


def test_a_changed_configuration_stops_with_every_difference(caplog: pytest.LogCaptureFixture) -> None:
    from pipeline.checkpoint import ConfigChangeError, TrainingRecord

    saved = TrainingRecord({"learning_rate": 0.005, "epochs": 3, "terms": {"gradient": 4.0},
                            "widths": (16, 32, 32, 16), "source_weights": "variance"}).state_dict()
    now = {"learning_rate": 0.001, "epochs": 6, "terms": {"gradient": 4}, "widths": [16, 32, 32, 16],
           "source_weights": "variance", "patience": 10}  # patience: not in that checkpoint, not a change
    with pytest.raises(ConfigChangeError) as err:
        TrainingRecord(now).check(saved, "runs/x/models/latest.pt", epoch=3)
    msg = str(err.value)
    assert msg.startswith("runs/x/models/latest.pt: ")
    assert "learning_rate: 0.005 in the checkpoint, 0.001 now; epochs: 3 in the checkpoint, 6 now." in msg
    assert "terms" not in msg and "widths" not in msg  # equal values, whatever their types
    assert "--allow_config_change True" in msg
    allowed = TrainingRecord(now, allow_config_change=True)
    assert allowed.check(saved, "latest.pt", epoch=3) == {"learning_rate": (0.005, 0.001), "epochs": (3, 6)}
    allowed.load_state_dict(saved)
    assert allowed.state_dict()["history"] == [{"epoch": 3, "changes": {"learning_rate": [0.005, 0.001],
                                                                         "epochs": [3, 6]}}]
    assert TrainingRecord(now).check(None, "old.pt") == {}  # a checkpoint of an older version: not checked
    assert "holds no record of its configuration" in caplog.text


def _cosine(lr: float = 0.01, t_max: int = 4) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=t_max)


def test_an_extended_cosine_schedule_continues_instead_of_warming_up() -> None:
    """4 epochs planned, 2 done, extended to 8: the rate goes on down from where it was, to 0 at epoch 8."""
    import math

    from pipeline.checkpoint import continue_lr_schedule

    opt, sched = _cosine()
    for _ in range(2):
        opt.step()
        sched.step()
    at_two = opt.param_groups[0]["lr"]
    saved = (opt.state_dict(), sched.state_dict())

    def restored() -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
        o, s = _cosine(t_max=8)  # the new configuration builds T_max = 8 ...
        o.load_state_dict(saved[0])
        s.load_state_dict(saved[1])  # ... and the checkpoint puts back T_max = 4
        return o, s

    def epochs_3_to_8(o: torch.optim.Optimizer, s: torch.optim.lr_scheduler.LRScheduler) -> list[float]:
        lrs = []
        for _ in range(6):
            lrs.append(o.param_groups[0]["lr"])
            o.step()
            s.step()
        return lrs + [o.param_groups[0]["lr"]]

    old = epochs_3_to_8(*restored())
    assert max(old[3:]) > old[2], "the plain restore warms the rate back up past T_max"
    o, s = restored()
    assert continue_lr_schedule(o, s, epoch=2, max_epochs=8) == [at_two]
    lrs = epochs_3_to_8(o, s)
    assert lrs[0] == at_two  # no jump
    assert all(b < a for a, b in zip(lrs, lrs[1:]))  # monotone down
    want = [at_two * (1 + math.cos(math.pi * k / 6)) / 2 for k in range(7)]
    assert lrs == pytest.approx(want, abs=1e-12) and lrs[-1] == pytest.approx(0.0, abs=1e-12)

    o, s = restored()  # a new learning rate restarts the descent from it
    continue_lr_schedule(o, s, epoch=2, max_epochs=8, learning_rate=0.001)
    assert epochs_3_to_8(o, s)[:2] == pytest.approx([0.001, 0.001 * (1 + math.cos(math.pi / 6)) / 2])
    o = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.005)
    assert continue_lr_schedule(o, None, 2, 8, learning_rate=0.001, schedule=False) == [0.001]


def test_resume_loader_applies_the_allowed_changes(tmp_path: Path) -> None:
    """ResumeLoader: the restored optimizer takes the new learning rate and the schedule its new length."""
    import math

    from ignite.engine import Engine, Events

    from pipeline.checkpoint import AtomicDiskSaver, ConfigChangeError, ResumeLoader, TrainingRecord

    def build(lr: float, epochs: int, allow: bool = False) -> tuple[Engine, dict, list[float]]:
        net = torch.nn.Linear(2, 1)
        opt, sched = _cosine(lr, epochs)
        engine = Engine(lambda e, b: opt.step())
        seen: list[float] = []
        engine.add_event_handler(Events.EPOCH_STARTED, lambda e: seen.append(opt.param_groups[0]["lr"]))
        engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: sched.step())
        record = TrainingRecord({"learning_rate": lr, "epochs": epochs, "lr_schedule": True},
                                allow_config_change=allow)
        state = {"model": net, "optimizer": opt, "trainer": engine, "lr_scheduler": sched, "record": record}
        return engine, state, seen

    engine, state, seen = build(0.005, 2)
    engine.run([0, 1], max_epochs=2)
    AtomicDiskSaver(tmp_path)({k: v.state_dict() for k, v in state.items()}, "latest.pt")
    path = tmp_path / "latest.pt"

    engine, state, seen = build(0.001, 6)
    with pytest.raises(ConfigChangeError, match="learning_rate: 0.005 in the checkpoint, 0.001 now"):
        ResumeLoader(path, state).check()
    engine, state, seen = build(0.005, 1, allow=True)
    with pytest.raises(ValueError, match="is at epoch 2, past --epochs 1"):
        ResumeLoader(path, state).check(max_epochs=1)  # before any MLflow run is reopened

    engine, state, seen = build(0.001, 6, allow=True)
    ResumeLoader(path, state).attach(engine)
    engine.run([0, 1], max_epochs=6)
    assert engine.state.epoch == 6 and len(seen) == 4
    assert seen == pytest.approx([0.001 * (1 + math.cos(math.pi * k / 4)) / 2 for k in range(4)], abs=1e-12)
    assert state["record"].state_dict()["history"][0]["changes"]["learning_rate"] == [0.005, 0.001]


@pytest.mark.slow
def test_resume_with_another_learning_rate_stops_then_applies_it_when_allowed(tmp_path: Path) -> None:
    """The documented commands: a changed --learning_rate stops the resume with the difference; with
    --allow_config_change True the optimizer really trains at the new rate, in the same MLflow run,
    which records the change."""
    from mlflow import MlflowClient
    from monai.utils import path_to_sqlite_uri

    datalist = make_dataset(tmp_path / "data", train_cases=1)
    out = tmp_path / "run"
    base = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", str(TRAIN),
            "--datalist", str(datalist), "--output_dir", str(out), "--batch_size", "2", "--patch_size", "32",
            "--val_metrics", "[]", "--progress_bar", "False", "--num_samples", "1", "--log_model", "False",
            "--tracking", "mlflow"]
    _finish(_start([*base, "--epochs", "2"], tmp_path / "first.log"), tmp_path / "first.log")
    changed = [*base, "--epochs", "3", "--learning_rate", "0.001", "--resume", "True"]
    refused = subprocess.run(changed, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert refused.returncode != 0
    text = refused.stdout + refused.stderr
    assert "epochs: 2 in the checkpoint, 3 now; learning_rate: 0.005 in the checkpoint, 0.001 now" in text, \
        text[-3000:]
    client = MlflowClient(path_to_sqlite_uri(str(out / "mlruns.db")))
    (exp,) = [e for e in client.search_experiments() if e.name == "ssim_fusion"]
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED"  # the refused resume touched nothing

    log = tmp_path / "allowed.log"
    _finish(_start([*changed, "--allow_config_change", "True"], log), log)
    saved = torch.load(out / "models" / "latest.pt", weights_only=True)
    assert saved["optimizer"]["param_groups"][0]["lr"] == 0.001
    assert saved["record"]["config"]["learning_rate"] == 0.001 and saved["record"]["config"]["epochs"] == 3
    assert saved["record"]["history"] == [{"epoch": 2, "changes": {"learning_rate": [0.005, 0.001],
                                                                   "epochs": [2, 3]}}]
    (again,) = client.search_runs([exp.experiment_id])
    assert again.info.run_id == run.info.run_id and again.info.status == "FINISHED"
    assert again.data.tags["config_change_epoch2"] == "epochs: 2 -> 3; learning_rate: 0.005 -> 0.001"
    lr = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "lr_group_0")}
    assert lr[1] == 0.005 and lr[max(lr)] == 0.001  # 4 pairs / batch 2: iterations 5 and 6 are epoch 3
    assert sorted(lr) == list(range(1, 7)) and lr[5] == lr[6] == 0.001 and lr[4] == 0.005
