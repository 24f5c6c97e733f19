"""Checkpoints (pipeline/checkpoint.py): atomic writes, safe loading, clear errors on resume."""

from __future__ import annotations

import ast
import inspect
import os
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine

from pipeline import checkpoint as ck
from pipeline.checkpoint import AtomicDiskSaver, CheckpointError, ResumeLoader, load_checkpoint, training_state
from pipeline.networks import FusionNet

REPO = Path(__file__).resolve().parents[1]


def _objects(widths: tuple[int, ...] = (16, 32, 32, 16)) -> tuple[FusionNet, torch.optim.Optimizer, Engine, dict]:
    torch.manual_seed(0)
    net = FusionNet(widths=widths)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    engine = Engine(lambda e, b: None)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=4)
    return net, opt, engine, training_state(net, opt, engine, lr_scheduler=sched)


def _save_latest(path: Path, state: dict, epoch: int = 2, epoch_length: int = 3) -> None:
    engine = state["trainer"]
    engine.state.epoch, engine.state.iteration = epoch, epoch * epoch_length
    engine.state.epoch_length, engine.state.max_epochs = epoch_length, 5
    torch.save({k: v.state_dict() for k, v in state.items()}, path)


def test_atomic_saver_keeps_the_old_file_when_a_save_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    saver = AtomicDiskSaver(tmp_path, filename="latest.pt")
    saver({"x": torch.ones(3)}, "ignored.pt")
    target = tmp_path / "latest.pt"
    assert oct(target.stat().st_mode & 0o777) == oct(0o644 & ~_umask())  # readable by the group, as MONAI's

    def crash(obj, fh, *a, **k):  # a crash half-way through writing
        fh.write(b"PK\x03\x04 partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        saver({"x": torch.zeros(3)}, "ignored.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["latest.pt"]  # no temporary file left
    assert torch.equal(torch.load(target, weights_only=True)["x"], torch.ones(3))  # the old one, whole
    saver.remove("latest.pt")  # a fixed name is replaced, never deleted first
    assert target.is_file()


def test_to_cpu_keeps_the_structure_of_a_checkpoint() -> None:
    from collections import OrderedDict

    state = {"model": OrderedDict(w=torch.ones(2), b=torch.zeros(1)), "epoch": 3,
             "rng": (torch.arange(3), [torch.full((1,), 2.0), "name"]), "none": None}
    out = ck.to_cpu(state)
    assert type(out["model"]) is OrderedDict and list(out["model"]) == ["w", "b"]
    assert isinstance(out["rng"], tuple) and isinstance(out["rng"][1], list) and out["rng"][1][1] == "name"
    assert out["epoch"] == 3 and out["none"] is None
    assert torch.equal(out["rng"][0], torch.arange(3)) and torch.equal(out["model"]["w"], torch.ones(2))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (a GPU-trained checkpoint)")
def test_a_checkpoint_saved_from_the_gpu_loads_on_the_cpu(tmp_path: Path) -> None:
    net = FusionNet().cuda()
    AtomicDiskSaver(tmp_path, filename="model.pt")({"model": net.state_dict()}, "ignored.pt")
    saved = torch.load(tmp_path / "model.pt", weights_only=True)  # no map_location needed
    assert {v.device.type for v in saved["model"].values()} == {"cpu"}


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_only_rank_zero_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ck, "is_main_process", lambda: False)
    AtomicDiskSaver(tmp_path / "models", filename="latest.pt")({"x": torch.ones(1)}, "a.pt")
    assert not (tmp_path / "models").exists()


def test_resume_restores_everything(tmp_path: Path) -> None:
    net, opt, engine, state = _objects()
    net(torch.rand(2, 2, 16, 16)).mean().backward()
    opt.step()
    state["lr_scheduler"].step()
    _save_latest(tmp_path / "latest.pt", state)
    saved = {k: v.clone() for k, v in net.state_dict().items()}

    net2, opt2, engine2, state2 = _objects()
    engine2.state.max_epochs = 7  # the configured --epochs wins: a finished run can be extended
    ResumeLoader(tmp_path / "latest.pt", state2)(engine2)
    assert all(torch.equal(saved[k], v) for k, v in net2.state_dict().items())
    assert opt2.state_dict()["state"][0]["step"] == 1
    assert state2["lr_scheduler"].last_epoch == 1
    assert (engine2.state.epoch, engine2.state.iteration, engine2.state.max_epochs) == (2, 6, 7)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_resume_refuses_a_corrupt_file(tmp_path: Path, damage: str) -> None:
    _, _, _, state = _objects()
    path = tmp_path / "latest.pt"
    _save_latest(path, state)
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"\x00not a checkpoint" * 50,
                      "empty": b""}[damage])
    _, _, engine, state2 = _objects()
    with pytest.raises(CheckpointError, match="truncated or corrupt") as err:
        ResumeLoader(path, state2)(engine)
    assert str(path) in str(err.value) and "without --resume True" in str(err.value)


def test_resume_refuses_another_architecture(tmp_path: Path) -> None:
    _, _, _, small = _objects(widths=(8, 8, 8, 8))
    path = tmp_path / "latest.pt"
    _save_latest(path, small)
    net, _, engine, state = _objects()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"widths \[8, 8, 8, 8\] but this run builds widths \[16, 32, 32, 16\]"):
        ResumeLoader(path, state)(engine)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # nothing half-loaded
    # not a FusionNet at all
    torch.save({"model": torch.nn.Linear(2, 2).state_dict(), "optimizer": {}, "trainer": {}}, path)
    with pytest.raises(CheckpointError, match="another architecture"):
        ResumeLoader(path, state)(engine)


def test_resume_refuses_weights_only_model_and_missing_file(tmp_path: Path) -> None:
    net, _, engine, state = _objects()
    torch.save(net.state_dict(), tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match="not a resumable training checkpoint.*not from the weights-only"):
        ResumeLoader(tmp_path / "model.pt", state)(engine)
    with pytest.raises(CheckpointError, match="no checkpoint to resume from"):
        ResumeLoader(tmp_path / "nothing.pt", state)(engine)


class _Payload:
    """Unpickling this would run code; weights_only loading must refuse it."""

    def __reduce__(self):
        return (os.system, ("echo should-not-run",))


def test_load_refuses_arbitrary_objects(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    with path.open("wb") as fh:
        torch.save({"model": _Payload()}, fh)
    with pytest.raises(CheckpointError, match="refused: it holds objects other than tensors"):
        load_checkpoint(path)


def test_every_torch_load_is_weights_only() -> None:
    """Our code never unpickles arbitrary objects; MONAI's CheckpointLoader (evaluate.yaml) neither."""
    offenders = []
    for path in sorted((REPO / "pipeline").rglob("*.py")) + sorted((REPO / "data_prep").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "load" and \
                    getattr(getattr(node.func, "value", None), "id", None) == "torch":
                ok = any(k.arg == "weights_only" and getattr(k.value, "value", None) is True for k in node.keywords)
                if not ok:
                    offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not offenders, offenders
    from monai.handlers import CheckpointLoader

    assert "weights_only=True" in inspect.getsource(CheckpointLoader.__call__)
    train = (REPO / "bundles" / "ssim_fusion" / "configs" / "train.yaml").read_text()
    assert "_target_: pipeline.checkpoint.ResumeLoader" in train and "_target_: CheckpointLoader" not in train
