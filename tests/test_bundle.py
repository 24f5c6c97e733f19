"""End to end: the ssim_fusion bundle trained for real on tiny data, tracked in MLflow, then used.

One training run (``python -m monai.bundle run training ... --tracking mlflow``, in a subprocess as
a user would type it) is shared by the tests of this module: its MLflow run is read back with
MlflowClient, its checkpoints are evaluated, exported, resumed, and used to fuse new pairs.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from data_prep.datalist import SlicePair, SplitSpec, write_dataset
from tolerances import float32_network_atol

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "ssim_fusion"
CONFIGS = BUNDLE / "configs"
SIZE = 64


def phantom(seed: int, colour: bool = False) -> np.ndarray:
    """A 64x64 slice of overlapping discs (uint8); colour ones are a pseudo-colour map of it."""
    r = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    img = np.zeros((SIZE, SIZE))
    for _ in range(4):
        cy, cx = r.uniform(16, 48, 2)
        img += r.uniform(0.2, 0.6) * (((yy - cy) ** 2 + (xx - cx) ** 2) < r.uniform(5, 14) ** 2)
    g = (np.clip(img + 0.03 * r.standard_normal(img.shape), 0, 1) * 255).astype(np.uint8)
    if colour:
        return np.stack([g, (g // 2).astype(np.uint8), (255 - g).astype(np.uint8)], -1)
    return g


def make_dataset(out: Path) -> Path:
    """CT-MRI (gray) and PET-MRI (colour PET) pairs of 4 cases: 2 training, 1 validation, 1 test."""
    pairs = []
    for case in ("1", "2", "3", "4"):
        for s in range(2):
            k = int(case) * 10 + s
            pairs.append(SlicePair(phantom(k), phantom(k + 500), "CT", "MRI", case, s))
            pairs.append(SlicePair(phantom(k + 900, True), phantom(k + 1500), "PET", "MRI", case, s))
    write_dataset(pairs, out, SplitSpec(cases={"training": ["1", "2"], "validation": ["3"], "test": ["4"]}))
    return out / "datalist.json"


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def bundle_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "monai.bundle", "run", *args]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Train the bundle for two epochs with MLflow tracking, as a subprocess (the CI check).

    Under pytest-xdist the workers share one run (a file lock in the session's base folder), so
    ``-n auto`` trains once, not once per worker.
    """
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # shared by the workers of this session only
    root = base / "ssim_fusion_trained"
    with FileLock(str(root) + ".lock"):
        if not (root / "result.json").is_file():
            _train(root)
    result = json.loads((root / "result.json").read_text())
    return {"root": root, "datalist": Path(result["datalist"]), "out": Path(result["out"]), "log": result["log"]}


def _train(root: Path) -> None:
    datalist = make_dataset(root / "data")
    out = root / "run"
    cmd = bundle_cmd("training", "--config_file", str(CONFIGS / "train.yaml"), "--datalist", str(datalist),
                     "--output_dir", str(out), "--epochs", "2", "--batch_size", "4", "--patch_size", "32",
                     "--log_interval", "1", "--tracking", "mlflow", "--register_model", "ssim_fusion_test")
    proc = subprocess.run(cmd, cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    (root / "result.json").write_text(json.dumps({"datalist": str(datalist), "out": str(out),
                                                  "log": proc.stdout + proc.stderr}))


def _only_run(tracking_uri: str):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name("ssim_fusion")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    return client, runs[0]


@pytest.mark.slow
def test_training_run_is_tracked_in_mlflow(trained: dict) -> None:
    from monai.utils import path_to_sqlite_uri

    db = trained["out"] / "mlruns.db"
    assert db.is_file()
    client, run = _only_run(path_to_sqlite_uri(str(db)))
    assert run.info.status == "FINISHED"
    p = run.data.params
    for key, value in {"epochs": "2", "batch_size": "4", "patch_size": "32", "alpha": "4.0", "seed": "0",
                       "learning_rate": "0.005", "widths": "16,32,32,16", "device": "cpu",
                       "output_dir": str(trained["out"]), "datalist": str(trained["datalist"]),
                       "device_type": "cpu", "cuda_version": "none", "amp": "False",
                       "terms": "{}", "clip_output": "False", "source_weights": "0.5,0.5"}.items():
        assert p[key] == value, key
    import hashlib

    assert p["datalist_sha256"] == hashlib.sha256(trained["datalist"].read_bytes()).hexdigest()
    assert p["device_name"].startswith("CPU")
    rid = run.info.run_id
    # 8 training pairs, batch 4: 2 iterations per epoch, 4 in all
    losses = client.get_metric_history(rid, "train_loss")
    assert [m.step for m in losses] == [1, 2, 3, 4]
    assert all(0.0 <= m.value <= 2.0 for m in losses)
    val = client.get_metric_history(rid, "val_ssim_alpha")
    assert sorted(m.step for m in val) == [1, 2]
    for name in ("Q_Y", "Q_ABF", "FMI_pixel"):  # reference metrics of pipeline.metrics at each validation
        hist = client.get_metric_history(rid, name)
        assert sorted(m.step for m in hist) == [1, 2] and all(np.isfinite(m.value) for m in hist), name
    for term in ("luminance", "contrast", "structure"):
        for src in ("a", "b"):
            assert len(client.get_metric_history(rid, f"train_{term}_{src}")) == 4
            epochs = client.get_metric_history(rid, f"train_epoch_{term}_{src}")
            assert sorted(m.step for m in epochs) == [1, 2]
    # SSIM-alpha per source = l^4 c s on the map; its mean is within [-1, 1]
    assert all(-1 <= m.value <= 1 for m in client.get_metric_history(rid, "train_ssim_alpha_a"))
    artifacts = {a.path for a in client.list_artifacts(rid)}
    assert {"samples", "checkpoints", "config"} <= artifacts
    samples = {a.path for a in client.list_artifacts(rid, "samples")}
    assert samples == {"samples/val_samples_epoch001.png", "samples/val_samples_epoch002.png"}
    assert [a.path for a in client.list_artifacts(rid, "checkpoints")] == ["checkpoints/model.pt"]
    config = [a.path for a in client.list_artifacts(rid, "config")]
    assert len(config) == 1 and config[0].endswith(".json")
    # console: the SSIM-alpha terms handler and the run info are logged
    assert "mean SSIM-alpha terms" in trained["log"] and "datalist_sha256=" in trained["log"]


@pytest.mark.slow
def test_trained_model_is_an_mlflow_model(trained: dict) -> None:
    """The bundle's experiment and run are named for people; the best model is logged with its
    signature and registered under --register_model; loaded back, it fuses as model.pt does."""
    import re

    import mlflow
    from monai.utils import path_to_sqlite_uri

    from pipeline.baselines.cnn import CNNFuser
    from pipeline.checkpoint import load_fusion_network
    from pipeline.tracking import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG

    uri = path_to_sqlite_uri(str(trained["out"] / "mlruns.db"))
    client, run = _only_run(uri)
    assert re.fullmatch(r"thesis-ssim4_CT-MRI\+PET-MRI_\d{8}-\d{4}", run.info.run_name), run.info.run_name
    assert client.get_experiment(run.info.experiment_id).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    (version,) = client.search_model_versions("name = 'ssim_fusion_test'")
    assert version.run_id == run.info.run_id
    logged = client.get_logged_model(version.source.split("/")[-1])
    assert logged.name == "ssim_fusion" and logged.source_run_id == run.info.run_id
    client.set_registered_model_alias("ssim_fusion_test", "champion", version.version)  # as the README
    mlflow.set_tracking_uri(uri)
    try:
        model = mlflow.pytorch.load_model("models:/ssim_fusion_test@champion")
        info = mlflow.models.get_model_info("models:/ssim_fusion_test@champion")
    finally:
        mlflow.set_tracking_uri("")
    assert info.signature is not None and "[-1, 2, -1, -1]" in info.signature.to_dict()["inputs"]
    best = load_fusion_network(trained["out"] / "models" / "model.pt", device="cpu")
    x = torch.rand(2, 2, 48, 40, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(x), best(x))
    a, b = x[0, 0].numpy(), x[0, 1].numpy()
    assert np.array_equal(CNNFuser(model, device="cpu").fuse(a, b), CNNFuser(best, device="cpu").fuse(a, b))


@pytest.mark.slow
def test_checkpoints_best_and_latest(trained: dict) -> None:
    models = trained["out"] / "models"
    assert sorted(p.name for p in models.iterdir()) == ["latest.pt", "model.pt"]  # no temp files left
    best = torch.load(models / "model.pt", weights_only=True)
    assert "layers.0.weight" in best and tuple(best["layers.0.weight"].shape) == (16, 2, 5, 5)
    latest = torch.load(models / "latest.pt", weights_only=True)
    assert {"model", "optimizer", "trainer"} <= set(latest)
    assert latest["trainer"]["iteration"] == 4 and latest["trainer"]["epoch_length"] == 2  # after epoch 2


@pytest.mark.slow
def test_inference_cli_on_new_pairs(trained: dict, tmp_path: Path) -> None:
    from PIL import Image

    for sub in ("PET", "MRI", "CT"):
        (tmp_path / "petmri" / sub).mkdir(parents=True, exist_ok=True)
    for i in range(3):
        Image.fromarray(phantom(7000 + i, colour=True)).save(tmp_path / "petmri" / "PET" / f"s{i}.png")
        Image.fromarray(phantom(8000 + i)).save(tmp_path / "petmri" / "MRI" / f"s{i}.png")
    (tmp_path / "petmri" / "CT").rmdir()
    out = tmp_path / "fused"
    proc = subprocess.run(
        bundle_cmd("inference", "--config_file", str(CONFIGS / "inference.yaml"), "--input_dir",
                   str(tmp_path / "petmri"), "--output_dir", str(out), "--ckpt_path",
                   str(trained["out"] / "models" / "model.pt"), "--device", "cpu"),
        cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    files = sorted(out.glob("*.png"))
    assert [f.name for f in files] == ["s0.png", "s1.png", "s2.png"]
    for f in files:
        with Image.open(f) as im:
            assert im.mode == "RGB" and im.size == (SIZE, SIZE)
            arr = np.asarray(im)
        assert arr.dtype == np.uint8 and arr.shape == (SIZE, SIZE, 3)


@pytest.mark.slow
def test_evaluate_checkpoint_on_test_split(trained: dict, tmp_path: Path) -> None:
    from monai.bundle import run

    out = tmp_path / "eval"
    run("evaluating", config_file=[str(CONFIGS / "train.yaml"), str(CONFIGS / "evaluate.yaml")],
        datalist=str(trained["datalist"]), output_dir=str(out),
        ckpt_path=str(trained["out"] / "models" / "model.pt"), progress_bar=False)
    rows = dict(line.split(",") for line in (out / "evaluation" / "metrics.csv").read_text().split())
    value = float(rows["test_ssim_alpha"])
    assert {"Q_Y", "Q_ABF", "FMI_pixel"} <= set(rows)
    assert -1.0 <= value <= 1.0
    # the same number from the library: mean over test pairs of 1 - loss on the clipped fused image
    from pipeline.checkpoint import load_fusion_network
    from pipeline.losses import SSIMAlphaLoss
    from pipeline.transforms import fusion_transforms
    from pipeline.training import load_split

    net = load_fusion_network(trained["out"] / "models" / "model.pt", device="cpu")
    tf, loss = fusion_transforms(train=False), SSIMAlphaLoss()
    with torch.no_grad():
        vals = [float(loss.ssim(net(x[None]).clamp(0, 1), x[None])[0])
                for x in (tf(e)["image"] for e in load_split(trained["datalist"], "test"))]
    # the evaluator batches the pairs, this loop does not: float32 round-off of the network
    # (tests/tolerances.py, ~1e-6 on these weights) moves a mean SSIM by less than 1e-5
    assert value == pytest.approx(float(np.mean(vals)), abs=1e-5)
    assert (out / "evaluation" / "test_samples_epoch001.png").is_file()


@pytest.mark.slow
def test_tracked_evaluation_is_a_new_run_of_its_own(trained: dict, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """`evaluating --tracking mlflow` makes its own run (eval-<recipe>_<data>_<start>), not the
    unfinished run MONAI's handler would pick."""
    import re

    from mlflow import MlflowClient
    from monai.bundle import run

    from pipeline.tracking import prepare_sqlite_store

    for key in [k for k in os.environ if k.startswith("MLFLOW_")]:
        monkeypatch.delenv(key)
    out = tmp_path / "eval"
    uri = f"sqlite:///{out / 'mlruns.db'}"
    prepare_sqlite_store(uri)
    client = MlflowClient(uri)
    crashed = client.create_run(client.create_experiment("ssim_fusion"), run_name="crashed")
    run("evaluating", config_file=[str(CONFIGS / "train.yaml"), str(CONFIGS / "evaluate.yaml")],
        datalist=str(trained["datalist"]), output_dir=str(out), val_metrics=[],
        ckpt_path=str(trained["out"] / "models" / "model.pt"), progress_bar=False, tracking="mlflow")
    runs = {r.info.run_name: r for r in client.search_runs([crashed.info.experiment_id])}
    assert set(runs) - {"crashed"} and runs["crashed"].info.status == "RUNNING"
    assert "test_ssim_alpha" not in runs["crashed"].data.metrics
    (name,) = set(runs) - {"crashed"}
    assert re.fullmatch(r"eval-thesis-ssim4_CT-MRI\+PET-MRI_\d{8}-\d{4}", name), name
    assert runs[name].info.status == "FINISHED" and "test_ssim_alpha" in runs[name].data.metrics


@pytest.mark.slow
def test_evaluate_refuses_other_architecture(trained: dict, tmp_path: Path) -> None:
    from monai.bundle import run

    from pipeline.networks import FusionNet

    other = tmp_path / "other.pt"
    torch.save(FusionNet(widths=(8, 8, 8, 8)).state_dict(), other)
    from pipeline.io import CheckpointError

    with pytest.raises(RuntimeError) as err:  # MONAI wraps the error of a config expression
        run("evaluating", config_file=[str(CONFIGS / "train.yaml"), str(CONFIGS / "evaluate.yaml")],
            datalist=str(trained["datalist"]), output_dir=str(tmp_path / "e"), ckpt_path=str(other))
    cause = err.value.__cause__
    assert isinstance(cause, CheckpointError)
    assert "was trained with widths [8, 8, 8, 8]" in str(cause) and str(other) in str(cause)


@pytest.mark.slow
def test_resume_continues_from_latest(trained: dict, tmp_path: Path) -> None:
    import shutil

    from monai.bundle import run

    out = tmp_path / "resumed"
    shutil.copytree(trained["out"] / "models", out / "models")
    run("training", config_file=str(CONFIGS / "train.yaml"), datalist=str(trained["datalist"]),
        output_dir=str(out), epochs=3, batch_size=4, patch_size=32, resume=True, progress_bar=False,
        allow_config_change=True)  # more epochs than the checkpoint was trained for: a change to allow
    latest = torch.load(out / "models" / "latest.pt", weights_only=True)
    assert latest["trainer"]["iteration"] == 6  # 3 epochs of 2 iterations: one more epoch only


@pytest.mark.slow
def test_training_is_deterministic_on_cpu(trained: dict, tmp_path: Path) -> None:
    from monai.bundle import run

    weights = []
    for name in ("x", "y"):
        run("training", config_file=str(CONFIGS / "train.yaml"), datalist=str(trained["datalist"]),
            output_dir=str(tmp_path / name), epochs=1, batch_size=4, patch_size=32, progress_bar=False,
            device="cpu", seed=3)
        weights.append(torch.load(tmp_path / name / "models" / "latest.pt", weights_only=True)["model"])
    for k in weights[0]:
        assert torch.equal(weights[0][k], weights[1][k]), k


@pytest.mark.slow
def test_validation_leaves_the_training_stream_alone(trained: dict, tmp_path: Path) -> None:
    """Validating every epoch or only at the end trains the same weights: the validation loader
    draws no random numbers from the generator that shuffles and crops the training data."""
    from monai.bundle import run

    weights = []
    for name, interval in (("every", 1), ("end", 3)):
        run("training", config_file=str(CONFIGS / "train.yaml"), datalist=str(trained["datalist"]),
            output_dir=str(tmp_path / name), epochs=3, batch_size=4, patch_size=32, progress_bar=False,
            device="cpu", seed=5, val_interval=interval)
        weights.append(torch.load(tmp_path / name / "models" / "latest.pt", weights_only=True)["model"])
    for k in weights[0]:
        assert torch.equal(weights[0][k], weights[1][k]), k


@pytest.mark.slow
def test_export_torchscript_and_verify_net(trained: dict, tmp_path: Path) -> None:
    from monai.bundle import ckpt_export, verify_net_in_out

    meta, cfg = str(CONFIGS / "metadata.json"), str(CONFIGS / "inference.yaml")
    verify_net_in_out("network_def", meta_file=meta, config_file=cfg, device="cpu")
    ts = tmp_path / "model.ts"
    ckpt_export("network_def", filepath=str(ts), ckpt_file=str(trained["out"] / "models" / "model.pt"),
                meta_file=meta, config_file=cfg)
    scripted = torch.jit.load(str(ts))
    from pipeline.checkpoint import load_fusion_network

    net = load_fusion_network(trained["out"] / "models" / "model.pt", device="cpu")
    x = torch.rand(1, 2, 48, 40)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x), atol=float32_network_atol(net, x), rtol=0)
    meta_json = json.loads(Path(meta).read_text())
    assert meta_json["network_data_format"]["inputs"]["image"]["num_channels"] == 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_remote_tracking_server(trained: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A remote tracking URI works the same: a real `mlflow server` on 127.0.0.1."""
    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "server-artifacts")],
        cwd=tmp_path, env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None, "mlflow server exited"
            assert time.time() < deadline, "mlflow server did not start within 120 s"
            time.sleep(0.5)
        from monai.bundle import run as bundle_run

        # in-process (the CLI path is covered by the `trained` fixture); MLFLOW_* must not override the URI
        for key in [k for k in os.environ if k.startswith("MLFLOW_")]:
            monkeypatch.delenv(key)
        bundle_run("training", config_file=str(CONFIGS / "train.yaml"), datalist=str(trained["datalist"]),
                   output_dir=str(tmp_path / "run"), epochs=1, batch_size=4, patch_size=32,
                   progress_bar=False,
                   tracking="mlflow", tracking_uri=uri, experiment_name="remote")
        from mlflow import MlflowClient

        client = MlflowClient(uri)
        runs = client.search_runs([client.get_experiment_by_name("remote").experiment_id])
        assert len(runs) == 1
        run = runs[0]
        assert run.data.params["epochs"] == "1" and "datalist_sha256" in run.data.params
        assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 2
        assert len(client.get_metric_history(run.info.run_id, "val_ssim_alpha")) == 1
        assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"samples", "checkpoints"}
        assert not (tmp_path / "run" / "mlruns.db").exists()  # nothing went to the local default store
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)


@pytest.mark.slow
def test_lr_schedule_and_early_stopping_switches(trained: dict, tmp_path: Path) -> None:
    from monai.bundle import run

    run("training", config_file=str(CONFIGS / "train.yaml"), datalist=str(trained["datalist"]),
        output_dir=str(tmp_path), epochs=2, batch_size=4, patch_size=32, progress_bar=False,
        lr_schedule=True, early_stopping=True, patience=1, val_metrics=[])
    latest = torch.load(tmp_path / "models" / "latest.pt", weights_only=True)
    # cosine annealing over 2 epochs: the learning rate is back to 0 after the second epoch
    assert latest["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.0, abs=1e-12)
    assert latest["trainer"]["iteration"] == 4  # the first validation always improves: no early stop at 1


def test_load_split_and_bundle_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from data_prep.datalist import DataPrepError

    from pipeline.training import default_bundle_root, load_split, prepare_self_target

    datalist = make_dataset(tmp_path / "d")
    assert len(load_split(datalist, "training")) == 8
    (tmp_path / "empty.json").write_text(json.dumps({"training": [], "validation": [], "test": []}))
    with pytest.raises(DataPrepError, match="'validation' split is empty"):
        load_split(tmp_path / "empty.json", "validation")
    for cwd in (tmp_path, REPO, BUNDLE):  # anywhere, the repository root, the bundle itself
        monkeypatch.chdir(cwd)
        assert Path(default_bundle_root()).resolve() == BUNDLE.resolve()
    x = torch.rand(2, 2, 8, 8)
    inputs, target = prepare_self_target({"image": x}, device="cpu")
    assert inputs is target and torch.equal(inputs, x)
