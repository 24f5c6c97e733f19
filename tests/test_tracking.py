"""Tracking-server checks (pipeline/tracking.py): an unreachable MLflow server fails fast, never hangs."""

from __future__ import annotations

import http.server
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline import tracking
from pipeline.tracking import TrackingServerError, bound_mlflow_requests, check_tracking, check_tracking_server

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bundles" / "ssim_fusion" / "configs"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed on exit: connections are refused


@pytest.fixture
def silent_server() -> Iterator[str]:
    """Accepts TCP connections and never answers (a hung server or a black-holing proxy)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    yield f"http://127.0.0.1:{s.getsockname()[1]}"
    s.close()


@pytest.fixture
def http_server() -> Iterator[tuple[str, list[int]]]:
    """A tiny HTTP server whose /health answers with the status in ``status[0]``."""
    status = [200]

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            self.send_response(status[0] if self.path == "/health" else 404)
            self.end_headers()
            self.wfile.write(b"OK")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", status
    server.shutdown()
    server.server_close()


def test_refused_connection_fails_fast_with_the_fix() -> None:
    uri = f"http://127.0.0.1:{_closed_port()}"
    t0 = time.monotonic()
    with pytest.raises(TrackingServerError) as err:
        check_tracking_server(uri, timeout=5)
    assert time.monotonic() - t0 < 3
    msg = str(err.value)
    assert uri in msg and "not reachable" in msg and "Training has not started" in msg
    assert "leave out --tracking_uri" in msg


def test_silent_server_times_out_instead_of_hanging(silent_server: str) -> None:
    t0 = time.monotonic()
    with pytest.raises(TrackingServerError, match="waited at most 1 s"):
        check_tracking_server(silent_server, timeout=1)
    assert time.monotonic() - t0 < 4


def test_health_answers(http_server: tuple[str, list[int]], caplog: pytest.LogCaptureFixture) -> None:
    uri, status = http_server
    check_tracking_server(uri + "/")  # 200: fine (trailing slash tolerated)
    status[0] = 401
    check_tracking_server(uri)  # there, asking for credentials: MLflow reports that itself
    assert "answered HTTP 401" in caplog.text
    status[0] = 503
    with pytest.raises(TrackingServerError, match="HTTP 503"):
        check_tracking_server(uri)


def test_local_stores_are_not_probed(tmp_path: Path) -> None:
    check_tracking_server(f"sqlite:///{tmp_path}/mlruns.db")
    check_tracking_server("databricks")


def test_request_limits_respect_the_user(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in tracking.MLFLOW_REQUEST_LIMITS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")
    effective = bound_mlflow_requests()
    assert effective == {"MLFLOW_HTTP_REQUEST_TIMEOUT": "60", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
                         "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}


def test_check_tracking_finds_the_mlflow_handler(monkeypatch: pytest.MonkeyPatch) -> None:
    from monai.handlers import MLFlowHandler, StatsHandler

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for key, value in tracking.MLFLOW_REQUEST_LIMITS.items():
        monkeypatch.setenv(key, value)  # restored afterwards: check_tracking sets them when unset
    assert check_tracking([StatsHandler()]) is None  # no tracking: nothing to check
    uri = f"http://127.0.0.1:{_closed_port()}"
    handler = MLFlowHandler(tracking_uri=uri)  # constructing the client does not contact the server
    with pytest.raises(TrackingServerError, match=uri):
        check_tracking([StatsHandler(), handler], timeout=2)


@pytest.mark.slow
def test_bundle_with_unreachable_server_stops_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--tracking mlflow --tracking_uri <down>`: a clear error within seconds, before any epoch."""
    from monai.bundle import run

    from test_distributed import make_dataset

    for key in [k for k in os.environ if k.startswith("MLFLOW_")]:
        monkeypatch.delenv(key)
    for key, value in tracking.MLFLOW_REQUEST_LIMITS.items():
        monkeypatch.setenv(key, value)
    datalist = make_dataset(tmp_path / "data", train_cases=1)
    uri = f"http://127.0.0.1:{_closed_port()}"
    t0 = time.monotonic()
    with pytest.raises(RuntimeError) as err:  # MONAI wraps the error of a config expression
        run("training", config_file=str(CONFIGS / "train.yaml"), datalist=str(datalist),
            output_dir=str(tmp_path / "run"), epochs=1, batch_size=2, patch_size=32, progress_bar=False,
            tracking="mlflow", tracking_uri=uri)
    elapsed = time.monotonic() - t0
    cause = err.value.__cause__
    assert isinstance(cause, TrackingServerError) and uri in str(cause), repr(err.value)
    assert elapsed < 30, f"took {elapsed:.1f} s"
    assert not (tmp_path / "run" / "models" / "latest.pt").exists()  # no training happened


def test_iteration_metrics_are_batched_and_none_is_lost(tmp_path: Path) -> None:
    """Buffered, every per-iteration value of MONAI's loss log and of our terms handler reaches MLflow
    with its own step, in a few requests instead of two per iteration; the last epoch is flushed
    before the run closes."""
    import torch
    from ignite.engine import Engine
    from monai.handlers import MLFlowHandler
    from monai.utils import path_to_sqlite_uri

    from pipeline.handlers import SSIMAlphaTermsHandler
    from pipeline.losses import SSIMAlphaLoss
    from pipeline.tracking import IterationMetricBuffer, buffer_iteration_metrics, find_mlflow_run

    batches = [torch.rand(2, 2, 16, 16, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    losses = iter(range(1, 100))

    def step(engine: Engine, batch: torch.Tensor) -> dict:
        loss = torch.tensor(float(next(losses)))
        return {"image": batch, "label": batch, "pred": batch[:, :1], "loss": loss}

    engine = Engine(step)
    SSIMAlphaTermsHandler(SSIMAlphaLoss(win_size=7), log_interval=100).attach(engine)
    handler = MLFlowHandler(tracking_uri=path_to_sqlite_uri(str(tmp_path / "mlruns.db")), experiment_name="t",
                            output_transform=lambda out: out["loss"], close_on_complete=True)
    handler.attach(engine)
    assert buffer_iteration_metrics(engine, every=2) == 1
    assert buffer_iteration_metrics(engine, every=2) == 0  # once only
    assert isinstance(handler.iteration_buffer, IterationMetricBuffer)
    requests = []
    real = handler.client.log_batch
    handler.client.log_batch = lambda *a, **k: (requests.append(len(k.get("metrics", []))), real(*a, **k))[1]
    engine.run(batches, max_epochs=3)  # 9 iterations; close_on_complete ends the run
    assert handler.cur_run is None and not handler.iteration_buffer.pending
    client = handler.client
    run_id = client.search_runs([client.get_experiment_by_name("t").experiment_id])[0].info.run_id
    loss = {m.step: m.value for m in client.get_metric_history(run_id, "Loss")}
    assert loss == {i: float(i) for i in range(1, 10)}
    for name in ("train_luminance_a", "train_ssim_alpha_b"):
        assert sorted(m.step for m in client.get_metric_history(run_id, name)) == list(range(1, 10))
    # per epoch: iterations 1-2 together (2 x (loss + 8 terms)), the 8 term means, iteration 3 at the
    # epoch's end: 9 requests with metrics instead of 21
    assert [n for n in requests if n] == [18, 8, 9] * 3
    assert find_mlflow_run(engine) is None  # closed


def test_iteration_metric_buffer_rejects_a_bad_interval() -> None:
    from pipeline.tracking import IterationMetricBuffer

    with pytest.raises(ValueError, match="every must be >= 1"):
        IterationMetricBuffer(object(), every=0)
