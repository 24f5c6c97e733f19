"""Handlers: SSIM-alpha terms, sample figures, run info (console and MLflow), atomic checkpoints,
the validation metric."""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from ignite.exceptions import NotComputableError

from pipeline.checkpoint import AtomicCheckpointSaver
from pipeline.handlers import RunInfoHandler, SampleFigureHandler, SSIMAlphaTermsHandler
from pipeline.losses import SSIMAlphaLoss
from pipeline.tracking import find_mlflow_run
from pipeline.validation import SSIMAlphaMetric, pred_and_sources

BATCHES = [torch.rand(2, 2, 24, 24, generator=torch.Generator().manual_seed(i)) for i in range(3)]


def _engine(decollate: bool = False) -> Engine:
    """A stand-in for MONAI's trainer: output = {image, label, pred, loss} like SupervisedTrainer's."""

    def step(engine: Engine, batch: torch.Tensor):
        pred = 0.6 * batch[:, :1] + 0.4 * batch[:, 1:]
        out = {"image": batch, "label": batch, "pred": pred, "loss": torch.tensor(0.5)}
        if decollate:
            return [{k: (v[i] if v.ndim else v) for k, v in out.items()} for i in range(len(batch))]
        return out

    return Engine(step)


@pytest.fixture
def mlflow_handler(tmp_path: Path):
    from monai.handlers import MLFlowHandler
    from monai.utils import path_to_sqlite_uri

    h = MLFlowHandler(tracking_uri=path_to_sqlite_uri(str(tmp_path / "mlruns.db")), experiment_name="t",
                      iteration_log=False, epoch_log=False)
    yield h
    h.close()


def test_terms_handler_console_and_mlflow(mlflow_handler, caplog: pytest.LogCaptureFixture) -> None:
    loss = SSIMAlphaLoss()
    engine = _engine(decollate=True)
    handler = SSIMAlphaTermsHandler(loss, log_interval=2)
    handler.attach(engine)
    mlflow_handler.attach(engine)  # attached last, as `--tracking mlflow` does
    with caplog.at_level(logging.INFO, logger="SSIMAlphaTerms"):
        engine.run(BATCHES, max_epochs=2)
    run = find_mlflow_run(engine)
    assert run is not None
    client, rid = run.client, run.run_id
    for name in ("luminance", "contrast", "structure", "ssim_alpha"):
        for src in "ab":
            hist = client.get_metric_history(rid, f"train_{name}_{src}")
            assert sorted(m.step for m in hist) == list(range(1, 7))
            epochs = client.get_metric_history(rid, f"train_epoch_{name}_{src}")
            assert sorted(m.step for m in epochs) == [1, 2]
    # the values are the loss's own terms of the last batch, and the epoch value is the mean of its iterations
    batch = BATCHES[-1]
    terms = loss.ssim_terms(0.6 * batch[:, :1] + 0.4 * batch[:, 1:], batch)
    last = {m.step: m.value for m in client.get_metric_history(rid, "train_luminance_b")}
    assert last[6] == pytest.approx(float(terms["luminance"][1]), abs=1e-6)
    per_iter = {m.step: m.value for m in client.get_metric_history(rid, "train_structure_a")}
    epoch2 = {m.step: m.value for m in client.get_metric_history(rid, "train_epoch_structure_a")}[2]
    assert epoch2 == pytest.approx(np.mean([per_iter[4], per_iter[5], per_iter[6]]), abs=1e-6)
    # only this handler's records: an earlier bundle run in the same process may leave engine loggers at INFO
    lines = [r.getMessage() for r in caplog.records if r.name == "SSIMAlphaTerms"]
    assert sum("iteration" in m for m in lines) == 3  # iterations 2, 4, 6
    assert sum("mean SSIM-alpha terms" in m for m in lines) == 2
    assert "a: l=" in lines[-1] and " c=" in lines[-1] and " s=" in lines[-1]


def test_terms_handler_without_mlflow_logs_to_console(caplog: pytest.LogCaptureFixture) -> None:
    engine = _engine()
    handler = SSIMAlphaTermsHandler(SSIMAlphaLoss(alpha=1))
    handler.attach(engine)
    with caplog.at_level(logging.INFO, logger="SSIMAlphaTerms"):
        engine.run(BATCHES[:1], max_epochs=1)
    assert find_mlflow_run(engine) is None
    terms = ("luminance", "contrast", "structure", "ssim_alpha")
    assert set(handler.last_epoch) == {f"{t}_{s}" for t in terms for s in "ab"}
    assert len([r for r in caplog.records if r.name == "SSIMAlphaTerms"]) == 2


def test_sample_figure_handler(tmp_path: Path, mlflow_handler) -> None:
    from PIL import Image

    engine = _engine()
    fig = SampleFigureHandler(tmp_path / "samples", num_samples=3)
    fig.attach(engine)
    mlflow_handler.attach(engine)
    engine.run(BATCHES, max_epochs=1)
    path = tmp_path / "samples" / "val_samples_epoch001.png"
    assert fig.last_path == path and path.is_file()
    with Image.open(path) as im:
        w, h = im.size
    assert (w, h) == (660, 660)  # 3 rows x (source A, source B, fused), 2.2 inches at 100 dpi each
    assert not list((tmp_path / "samples").glob(".*"))  # no temporary file left
    run = find_mlflow_run(engine)
    logged = [a.path for a in run.client.list_artifacts(run.run_id, "samples")]
    assert logged == ["samples/val_samples_epoch001.png"]


def test_run_info_handler(tmp_path: Path, mlflow_handler) -> None:
    datalist = tmp_path / "datalist.json"
    datalist.write_text('{"training": []}\n')
    (tmp_path / "config_20250101_000000.json").write_text("{}")
    best = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(1)}, best)
    engine = _engine()
    info = RunInfoHandler({"epochs": 2, "widths": [16, 32, 32, 16], "alpha": 4.0}, datalist=datalist,
                          device="cpu", amp=False, output_dir=tmp_path, best_checkpoint=best)
    info.attach(engine)
    mlflow_handler.attach(engine)
    engine.run(BATCHES[:1], max_epochs=2)
    run = find_mlflow_run(engine)
    params = run.client.get_run(run.run_id).data.params
    assert params["widths"] == "16,32,32,16" and params["epochs"] == "2" and params["alpha"] == "4.0"
    assert params["datalist_sha256"] == hashlib.sha256(datalist.read_bytes()).hexdigest()
    assert params["device_type"] == "cpu" and params["cuda_version"] == "none" and params["amp"] == "False"
    assert params["device_name"].startswith("CPU")
    arts = {a.path for a in run.client.list_artifacts(run.run_id)}
    assert arts == {"config", "checkpoints"}
    assert [a.path for a in run.client.list_artifacts(run.run_id, "checkpoints")] == ["checkpoints/model.pt"]


def test_atomic_checkpoint_saver(tmp_path: Path) -> None:
    net = torch.nn.Linear(2, 1)
    engine = _engine()
    saver = AtomicCheckpointSaver(save_dir=str(tmp_path), save_dict={"model": net}, save_interval=1,
                                  n_saved=1, interval_filename="latest.pt")
    saver.attach(engine)
    engine.run(BATCHES[:1], max_epochs=3)
    assert [p.name for p in tmp_path.iterdir()] == ["latest.pt"]
    mode = stat.S_IMODE(os.stat(tmp_path / "latest.pt").st_mode)
    assert mode & 0o044  # readable by group/others unless the umask forbids it (MONAI's atomic saver is 0600)
    state = torch.load(tmp_path / "latest.pt", weights_only=True)
    assert torch.equal(state["weight"], net.weight)


def test_atomic_saver_leaves_nothing_on_failure(tmp_path: Path) -> None:
    from pipeline.checkpoint import AtomicDiskSaver

    saver = AtomicDiskSaver(tmp_path, filename="model.pt")
    saver({"a": torch.zeros(1)}, "ignored.pt")
    with pytest.raises(Exception):
        saver({"a": lambda: 0}, "ignored.pt")  # not picklable
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]
    assert torch.equal(torch.load(tmp_path / "model.pt", weights_only=True)["a"], torch.zeros(1))


def test_ssim_alpha_metric() -> None:
    loss = SSIMAlphaLoss()
    metric = SSIMAlphaMetric(loss)
    metric.reset()
    expected = []
    for batch in BATCHES:
        pred = 1.4 * batch[:, :1] - 0.2  # partly outside [0, 1]: the metric clips like inference
        metric.update({"pred": pred, "label": batch})
        expected += (loss.ssim(pred.clamp(0, 1), batch)).tolist()
    assert metric.compute() == pytest.approx(float(np.mean(expected)), abs=1e-6)
    with pytest.raises(ValueError, match="cannot find pred"):
        pred_and_sources(42)
    metric.reset()
    with pytest.raises(NotComputableError, match="no images were seen"):  # an empty validation split
        metric.compute()


def test_terms_handler_reads_the_loss_pass_of_the_iteration_instead_of_recomputing() -> None:
    """After a training step the handler reports the terms the loss computed in that very pass."""
    import torch
    from ignite.engine import Engine

    from pipeline.handlers import SSIMAlphaTermsHandler
    from pipeline.losses import SSIMAlphaLoss

    torch.manual_seed(0)
    loss = SSIMAlphaLoss()
    sources = torch.rand(2, 2, 32, 32)
    fused = torch.rand(2, 1, 32, 32, requires_grad=True)
    handler = SSIMAlphaTermsHandler(loss, iteration_log=False)
    engine = Engine(lambda e, b: None)
    engine.state.output = {"pred": fused, "label": sources}
    loss(fused, sources)
    calls = []
    original = loss._maps
    loss._maps = lambda *a: calls.append(1) or original(*a)  # count any second pass
    handler.iteration_completed(engine)
    assert calls == []
    expected = SSIMAlphaLoss().ssim_terms(fused.detach(), sources)
    for i, s in enumerate(("a", "b")):
        for t in ("luminance", "contrast", "structure", "ssim_alpha"):
            assert abs(handler.last[f"{t}_{s}"] - float(expected[t][i])) < 1e-6
    # no new forward pass since: the handler computes the terms itself
    handler.iteration_completed(engine)
    assert calls == [1]


def test_terms_handler_reports_each_added_term_of_the_loss_pass() -> None:
    from ignite.engine import Engine

    loss = SSIMAlphaLoss(weights="variance", terms={"gradient": 4.0, "wmean": 4.0}, clip=True)
    handler = SSIMAlphaTermsHandler(loss, iteration_log=False)
    engine = Engine(lambda e, b: None)
    g = torch.Generator().manual_seed(2)
    sources = torch.rand(2, 2, 32, 32, generator=g)
    fused = torch.rand(2, 1, 32, 32, generator=g)
    engine.state.output = {"pred": fused, "label": sources}
    handler.reset()
    for _ in range(2):
        loss(fused, sources)
        handler.iteration_completed(engine)
    expected = loss.term_values(fused, sources)
    for name in ("gradient", "wmean"):
        assert handler.last[f"term_{name}"] == pytest.approx(float(expected[name].mean()), rel=1e-6)
    handler.epoch_completed(engine)
    assert handler.last_epoch["term_gradient"] == pytest.approx(handler.last["term_gradient"])
    assert "terms: gradient=" in _format_line(handler)


def _format_line(handler: SSIMAlphaTermsHandler) -> str:
    from pipeline.handlers import _format

    return _format(handler.last, handler.source_names)
