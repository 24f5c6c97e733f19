"""One MLflow run per training (pipeline/tracking.py, train.yaml): a new training starts a new run,
``--resume True`` continues the checkpoint's, two trainings into one store never share one, and a
crashed run is never adopted; runs and experiments are named for people; the trained model is an
MLflow model with its signature, loadable and registrable.

The in-process tests drive MONAI's ``MLFlowHandler`` on a tiny Ignite engine against a SQLite store;
the slow ones run the bundle as the README does, in subprocesses.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from test_distributed import make_dataset
from test_resume import _finish, _start

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "bundles" / "ssim_fusion" / "configs" / "train.yaml"


def _sqlite(path: Path) -> str:
    from monai.utils import path_to_sqlite_uri

    return path_to_sqlite_uri(str(path))


def _handler(uri: str, **kwargs: Any) -> Any:
    from monai.handlers import MLFlowHandler

    return MLFlowHandler(tracking_uri=uri, experiment_name="ssim_fusion", close_on_complete=True,
                         output_transform=lambda out: out["loss"], **kwargs)


def _engine(fail_at: int | None = None) -> Any:
    from ignite.engine import Engine

    def step(engine: Engine, batch: Any) -> dict:
        if fail_at is not None and engine.state.iteration == fail_at:
            raise RuntimeError("boom")
        return {"loss": torch.tensor(float(engine.state.iteration))}

    return Engine(step)


def _runs(uri: str, experiment: str = "ssim_fusion") -> list[Any]:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    return client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])


# ---------------------------------------------------------------- in process


def test_a_new_training_never_adopts_an_unfinished_run(tmp_path: Path) -> None:
    """MONAI's handler alone adopts a crashed (RUNNING) run; started by start_run, a training gets its own."""
    from pipeline.tracking import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, run_tracked, start_run

    uri = _sqlite(tmp_path / "mlruns.db")
    crashed = _handler(uri)
    engine = _engine(fail_at=2)
    crashed.attach(engine)
    start_run([crashed], "crashed")
    with pytest.raises(RuntimeError, match="boom"):
        run_tracked(engine, None, [0, 1, 2], max_epochs=1)
    (crashed_run,) = _runs(uri)
    assert crashed_run.info.status == "FAILED"  # an exception is recorded, not left RUNNING

    # a SIGKILL leaves it RUNNING, which MONAI's own lookup (run_name None) would adopt
    from mlflow import MlflowClient

    MlflowClient(uri).update_run(crashed_run.info.run_id, status="RUNNING")

    fresh, validator = _handler(uri), _handler(uri, iteration_log=False)
    engine = _engine()
    fresh.attach(engine)
    run = start_run([fresh, validator, object()], "fresh")
    assert run is not None and run.run_id != crashed_run.info.run_id
    assert validator.cur_run.info.run_id == run.run_id  # the validator logs into the same run
    run_tracked(engine, [validator], [0, 1, 2], max_epochs=1)
    runs = {r.info.run_id: r for r in _runs(uri)}
    assert runs[run.run_id].info.status == "FINISHED" and runs[run.run_id].info.run_name == "fresh"
    assert runs[crashed_run.info.run_id].info.status == "RUNNING"
    assert [m.step for m in MlflowClient(uri).get_metric_history(run.run_id, "Loss")] == [1, 2, 3]
    exp = MlflowClient(uri).get_experiment_by_name("ssim_fusion")
    assert exp.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND  # MLflow 3's UI: a model-training experiment


def test_resume_reopens_the_checkpoint_run(tmp_path: Path) -> None:
    from pipeline.checkpoint import TrainingRecord
    from pipeline.tracking import start_run

    uri = _sqlite(tmp_path / "mlruns.db")
    first = _handler(uri)
    record = TrainingRecord({"learning_rate": 0.005})
    assert start_run([first], "first", record=record) is not None
    run_id = record.run_id
    first.close()
    saved = record.state_dict()
    assert saved["mlflow_run_id"] == run_id  # what latest.pt stores

    again = TrainingRecord({"learning_rate": 0.005})
    again.check(saved, "latest.pt", epoch=1)
    handler = _handler(uri)
    run = start_run([handler], "second", record=again, resume=True)
    assert run is not None and run.run_id == run_id and again.run_id == run_id
    (only,) = _runs(uri)
    assert only.info.status == "RUNNING" and only.info.run_name == "first"

    # a checkpoint whose run is not in this store (another --tracking_uri): a new run, said so
    other = TrainingRecord({"learning_rate": 0.005})
    other.check({"config": {}, "mlflow_run_id": "0" * 32}, "latest.pt", epoch=1)
    run = start_run([_handler(_sqlite(tmp_path / "other.db"))], "third", record=other, resume=True)
    assert run is not None and run.run_id != "0" * 32
    assert run.client.get_run(run.run_id).data.tags["resumed_from_run"] == "0" * 32


def test_without_tracking_start_run_does_nothing() -> None:
    from pipeline.tracking import start_run

    assert start_run([object()], "x") is None


def test_run_and_recipe_names() -> None:
    from pipeline.tracking import data_name, recipe_name, run_name

    assert recipe_name() == "thesis-ssim4"
    assert recipe_name(alpha=1) == "thesis-ssim1"
    assert recipe_name(clip_output=True, source_weights="variance",
                       terms={"wmean": 4.0, "gradient": 4.0}) == "ssim4-var-clip+gradient4+wmean4"
    assert recipe_name(beta=2, source_weights=[0.3, 0.7]) == "ssim4.2.1-w0.3-0.7"
    assert data_name(["CT-MRI", "PET-MRI", "CT-MRI"]) == "CT-MRI+PET-MRI"
    assert data_name([]) == "data" and data_name(["a b/c"]) == "a-b-c"
    stamp = time.mktime((2026, 12, 1, 19, 25, 0, 0, 0, -1))
    config = {"alpha": 4.0, "beta": 1.0, "gamma": 1.0, "terms": {}, "source_weights": [0.5, 0.5],
              "clip_output": False}
    assert run_name(None, config, when=stamp) == "thesis-ssim4_data_20261201-1925"
    assert run_name("mine", config) == "mine"


def test_run_name_reads_the_pair_types(tmp_path: Path) -> None:
    from pipeline.tracking import run_name

    datalist = make_dataset(tmp_path / "data", train_cases=1)
    name = run_name(None, {"alpha": 4.0}, datalist)
    assert re.fullmatch(r"thesis-ssim4_CT-MRI\+PET-MRI_\d{8}-\d{4}", name), name
    assert run_name(None, {}, tmp_path / "missing.json").startswith("thesis-ssim4_data_")


def test_model_is_logged_with_its_signature_and_registered(tmp_path: Path) -> None:
    """log_fusion_model: load it back by its URI and by its registered name; same outputs."""
    import mlflow
    from mlflow import MlflowClient

    from pipeline.networks import FusionNet
    from pipeline.tracking import MLflowRun, log_fusion_model

    uri = _sqlite(tmp_path / "mlruns.db")
    client = MlflowClient(uri)
    exp = client.create_experiment("ssim_fusion", artifact_location=(tmp_path / "mlruns").as_uri())
    run = client.create_run(exp, run_name="r")
    torch.manual_seed(0)
    net = FusionNet().eval()
    example = torch.rand(1, 2, 32, 32)
    info = log_fusion_model(MLflowRun(client, run.info.run_id), net, example,
                            registered_model_name="fusion_test")
    assert mlflow.get_tracking_uri() != uri  # the global URI is put back
    assert info.registered_model_version == 1  # first version
    sig = info.signature.to_dict()
    assert "[-1, 2, -1, -1]" in sig["inputs"] and "float32" in sig["inputs"]
    assert "[-1, 1, -1, -1]" in sig["outputs"]
    model = client.get_logged_model(info.model_id)
    assert model.experiment_id == exp and model.source_run_id == run.info.run_id
    x = torch.rand(3, 2, 40, 48)
    with torch.no_grad():
        want = net(x)
        for model_uri in (info.model_uri, "models:/fusion_test/1"):
            mlflow.set_tracking_uri(uri)
            try:
                loaded = mlflow.pytorch.load_model(model_uri)
            finally:
                mlflow.set_tracking_uri("")
            assert type(loaded) is FusionNet
            assert torch.equal(loaded(x), want), model_uri


# ---------------------------------------------------------------- the bundle, as the README runs it


def _run_id_in(out: Path) -> str:
    """The MLflow run id that ``<out>/models/latest.pt`` records."""
    return torch.load(out / "models" / "latest.pt", weights_only=True)["record"]["mlflow_run_id"]


def _cmd(datalist: Path, out: Path, uri: str, *extra: str, epochs: int = 1) -> list[str]:
    return [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", str(TRAIN),
            "--datalist", str(datalist), "--output_dir", str(out), "--epochs", str(epochs),
            "--batch_size", "2", "--patch_size", "32", "--val_metrics", "[]", "--progress_bar", "False",
            "--log_interval", "1", "--num_samples", "1", "--log_model", "False",
            "--tracking", "mlflow", "--tracking_uri", uri, *extra]


@pytest.mark.slow
def test_two_trainings_at_once_get_two_runs(tmp_path: Path) -> None:
    datalist = make_dataset(tmp_path / "data", train_cases=1)
    uri = _sqlite(tmp_path / "store" / "mlruns.db")
    # a shared store given by --tracking_uri exists before its trainings (a team's); the bundle's default
    # store is created under a lock (test_a_new_sqlite_store_is_prepared_once_under_a_lock)
    from pipeline.tracking import prepare_sqlite_store

    prepare_sqlite_store(uri)
    logs = {name: tmp_path / f"{name}.log" for name in ("one", "two")}
    procs = [(_start(_cmd(datalist, tmp_path / name, uri), log), log) for name, log in logs.items()]
    for proc, log in procs:
        _finish(proc, log)
    runs = _runs(uri)
    assert len(runs) == 2 and len({r.info.run_id for r in runs}) == 2
    assert all(r.info.status == "FINISHED" for r in runs)
    from mlflow import MlflowClient

    for r in runs:  # each run holds its own training only: 4 pairs / batch 2 = 2 iterations
        assert [m.step for m in MlflowClient(uri).get_metric_history(r.info.run_id, "train_loss")] == [1, 2]
        assert r.data.params["output_dir"] in (str(tmp_path / "one"), str(tmp_path / "two"))
    assert {r.data.params["output_dir"] for r in runs} == {str(tmp_path / "one"), str(tmp_path / "two")}
    for name in ("one", "two"):
        saved = torch.load(tmp_path / name / "models" / "latest.pt", weights_only=True)
        assert saved["record"]["mlflow_run_id"] in {r.info.run_id for r in runs}


@pytest.mark.slow
def test_killed_run_is_not_adopted_and_resume_continues_it(tmp_path: Path) -> None:
    """SIGKILL in epoch 2 leaves a RUNNING run; a fresh training makes its own; --resume True continues
    the killed one's."""
    from mlflow import MlflowClient

    datalist = make_dataset(tmp_path / "data", train_cases=1)
    (tmp_path / "store").mkdir()
    uri = _sqlite(tmp_path / "store" / "mlruns.db")
    killed_out, log = tmp_path / "killed", tmp_path / "killed.log"
    proc = _start(_cmd(datalist, killed_out, uri, epochs=3), log)
    deadline = time.time() + 300
    while "Epoch 2 iteration 3:" not in log.read_text():
        assert proc.poll() is None, "training ended before it could be killed:\n" + log.read_text()[-3000:]
        assert time.time() < deadline, "epoch 2 never started"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    (killed,) = _runs(uri)
    assert killed.info.status == "RUNNING"
    killed_id = killed.info.run_id
    assert _run_id_in(killed_out) == killed_id
    client = MlflowClient(uri)
    steps_before = [m.step for m in client.get_metric_history(killed_id, "train_loss")]

    fresh = _start(_cmd(datalist, tmp_path / "fresh", uri), tmp_path / "fresh.log")
    _finish(fresh, tmp_path / "fresh.log")
    runs = {r.info.run_id: r for r in _runs(uri)}
    assert len(runs) == 2
    (fresh_id,) = set(runs) - {killed_id}
    assert runs[fresh_id].info.status == "FINISHED" and runs[killed_id].info.status == "RUNNING"
    assert [m.step for m in client.get_metric_history(killed_id, "train_loss")] == steps_before  # untouched
    assert runs[fresh_id].info.run_name != "" and re.fullmatch(
        r"thesis-ssim4_CT-MRI\+PET-MRI_\d{8}-\d{4}", runs[fresh_id].info.run_name)

    resumed = _start(_cmd(datalist, killed_out, uri, "--resume", "True", epochs=3), tmp_path / "resumed.log")
    _finish(resumed, tmp_path / "resumed.log")
    runs = {r.info.run_id: r for r in _runs(uri)}
    assert len(runs) == 2 and runs[killed_id].info.status == "FINISHED"
    assert sorted({m.step for m in client.get_metric_history(killed_id, "train_loss")}) == list(range(1, 7))
    assert _run_id_in(killed_out) == killed_id


def test_a_new_sqlite_store_is_prepared_once_under_a_lock(tmp_path: Path) -> None:
    """Two trainings starting at once into a new SQLite store would both create its tables."""
    from concurrent.futures import ThreadPoolExecutor

    from pipeline.tracking import prepare_sqlite_store

    uri = _sqlite(tmp_path / "new" / "mlruns.db")
    with ThreadPoolExecutor(2) as pool:
        assert list(pool.map(prepare_sqlite_store, [uri, uri])) == [True, True]
    assert (tmp_path / "new" / "mlruns.db").is_file()
    assert not prepare_sqlite_store("http://127.0.0.1:5000") and not prepare_sqlite_store("sqlite://")
