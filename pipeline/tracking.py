"""MLflow helpers for the bundle: where a run lives, what it records about the data and the machine.

Tracking is switched on the MONAI way, ``python -m monai.bundle run ... --tracking mlflow``, which
attaches MONAI's ``MLFlowHandler`` to the trainer and the evaluators (tracking URI: a SQLite
database ``sqlite:///<output_dir>/mlruns.db`` unless ``--tracking_uri`` says otherwise). Our own
handlers (:mod:`pipeline.handlers`) add to *that* run: :func:`find_mlflow_run` finds the
``MLFlowHandler`` attached to an engine and hands back its client and run id. Without tracking
they log to the console only, and MLflow is never imported.

An unreachable tracking server is an error at start, never a hang: :func:`check_tracking`
asks a remote server for ``/health`` with a short timeout before training begins and raises
:class:`TrackingServerError` naming the address and the fixes; :func:`bound_mlflow_requests`
caps MLflow's own request timeout and retries (unless the user set them), so a server lost in
mid-run stops the run within about half a minute instead of MLflow's default of many minutes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from typing import Any

import torch

__all__ = [
    "MLflowRun",
    "find_mlflow_run",
    "file_sha256",
    "device_info",
    "log_params_once",
    "TrackingServerError",
    "MLFLOW_REQUEST_LIMITS",
    "bound_mlflow_requests",
    "check_tracking_server",
    "check_tracking",
    "IterationMetricBuffer",
    "buffer_iteration_metrics",
]

logger = logging.getLogger(__name__)


class MLflowRun:
    """An MLflow client and the id of the run to log into (a thin pair, with the calls we need)."""

    def __init__(self, client: Any, run_id: str, handler: Any = None) -> None:
        self.client, self.run_id, self.handler = client, run_id, handler

    def log_metrics(self, metrics: dict[str, float], step: int, per_iteration: bool = False) -> None:
        """Log scalar metrics at one step in one request.

        Args:
            metrics: name -> value.
            step: MLflow step (iteration or epoch).
            per_iteration: metrics of one training iteration: when the run's ``MLFlowHandler`` has an
                :class:`IterationMetricBuffer` (:func:`buffer_iteration_metrics`) they join its next
                request instead of costing one of their own.
        """
        buffer = getattr(self.handler, "iteration_buffer", None)
        if per_iteration and isinstance(buffer, IterationMetricBuffer):
            buffer.add(metrics, step)
            return
        self.client.log_batch(self.run_id, metrics=_metric_entities(metrics, step), params=[], tags=[])

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        """Upload one file under ``artifact_path``."""
        self.client.log_artifact(self.run_id, str(path), artifact_path)


def _metric_entities(metrics: dict[str, float], step: int) -> list[Any]:
    import time

    import mlflow  # imported by MLFlowHandler already; cheap here

    ts = int(time.time() * 1000)
    return [mlflow.entities.Metric(k, float(v), ts, int(step)) for k, v in metrics.items()]


class IterationMetricBuffer:
    """The per-iteration metrics of one MLflow run, written in one request every ``every`` iterations.

    MONAI's ``MLFlowHandler`` writes the training loss, and then the learning rate, in a request of
    their own at every iteration, and our SSIM-alpha terms add a third; against a SQLite store each
    request is a committed transaction, dear on a local disk and dearer on a networked or virtual
    one, enough to slow a small training iteration on the CPU noticeably (``benchmarks/bench_training.py
    --attribution`` measures it; the README's performance table quotes it). Buffered, every value
    keeps its own step and timestamp; only the number of requests falls.

    Args:
        handler: the ``MLFlowHandler`` whose run receives the metrics.
        every: iterations per request (at most; :meth:`flush` also runs at each epoch's end).
    """

    #: MLflow accepts at most 1000 metrics per ``log_batch`` request.
    MAX_PER_REQUEST = 1000

    def __init__(self, handler: Any, every: int = 50) -> None:
        if every < 1:
            raise ValueError(f"IterationMetricBuffer: every must be >= 1, got {every}")
        self.handler, self.every = handler, int(every)
        self.pending: list[Any] = []
        self._steps: set[int] = set()

    def add(self, metrics: dict[str, float], step: int) -> None:
        """Queue ``metrics`` at ``step``; a step beyond the ``every`` queued ones sends the queue first
        (so one iteration's metrics, from several handlers, go out together)."""
        step = int(step)
        if step not in self._steps and len(self._steps) >= self.every:
            self.flush()
        self.pending.extend(_metric_entities(metrics, step))
        self._steps.add(step)

    def flush(self, *_: Any) -> None:
        """Send everything queued (nothing to do when the queue is empty or the run has ended)."""
        run = getattr(self.handler, "cur_run", None)
        if not self.pending or run is None:
            return
        pending, self.pending, self._steps = self.pending, [], set()
        for i in range(0, len(pending), self.MAX_PER_REQUEST):
            self.handler.client.log_batch(run.info.run_id, metrics=pending[i:i + self.MAX_PER_REQUEST],
                                          params=[], tags=[])

    def log_iteration(self, engine: Any) -> None:
        """``MLFlowHandler.iteration_logger``: what MONAI's default iteration log writes (the loss under
        the handler's ``tag_name``, and each of its optimizer parameters per group), queued."""
        step = engine.state.iteration
        loss = self.handler.output_transform(engine.state.output)
        if loss is None:
            return
        if not isinstance(loss, dict):
            loss = {self.handler.tag_name: loss.item() if isinstance(loss, torch.Tensor) else loss}
        values = {k: float(v.item() if isinstance(v, torch.Tensor) else v) for k, v in loss.items()}
        optimizer = getattr(engine, "optimizer", None)
        if optimizer is not None:
            for name in self.handler.optimizer_param_names:
                values.update({f"{name}_group_{i}": float(group[name])
                               for i, group in enumerate(optimizer.param_groups)})
        self.add(values, step)


def buffer_iteration_metrics(engine: Any, every: int = 50) -> int:
    """Batch the per-iteration MLflow metrics of ``engine``'s ``MLFlowHandler`` (see
    :class:`IterationMetricBuffer`): its own loss/learning-rate log and our handlers' per-iteration
    metrics share one request per ``every`` iterations, and the queue is flushed at every epoch end (a
    crash loses at most the iteration metrics of its epoch; the epoch metrics are written as before).

    Args:
        engine: the trainer, after its handlers were attached (a no-op without MLflow tracking).
        every: iterations per request.

    Returns:
        the number of MLFlowHandlers buffered.
    """
    from ignite.engine import Events

    count = 0
    for handler in _mlflow_handlers(engine):
        if not handler.iteration_log or handler.iteration_logger is not None \
                or isinstance(getattr(handler, "iteration_buffer", None), IterationMetricBuffer):
            continue  # nothing per iteration, a user's own logger, or buffered already
        buffer = IterationMetricBuffer(handler, every)
        handler.iteration_buffer = buffer
        handler.iteration_logger = buffer.log_iteration
        # at each epoch end, so before the last epoch's COMPLETED closes the run. (No EXCEPTION_RAISED
        # handler: Ignite stops re-raising an engine's exceptions once one is registered.)
        engine.add_event_handler(Events.EPOCH_COMPLETED, buffer.flush)
        count += 1
    return count


def find_mlflow_run(engine: Any) -> MLflowRun | None:
    """The run of the MONAI ``MLFlowHandler`` attached to ``engine``, if there is one with a run.

    Args:
        engine: an Ignite engine (trainer or evaluator).

    Returns:
        client and run id, or ``None`` when no MLFlowHandler is attached or its run has not started.
    """
    try:
        from monai.handlers import MLFlowHandler
    except ImportError:  # mlflow not installed: nothing to find
        return None
    from ignite.engine import Events

    for handler, *_ in getattr(engine, "_event_handlers", {}).get(Events.STARTED, []):
        owner = getattr(handler, "__self__", None)
        if isinstance(owner, MLFlowHandler) and getattr(owner, "cur_run", None) is not None:
            return MLflowRun(owner.client, owner.cur_run.info.run_id, owner)
    return None


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 hex digest of a file's bytes (the fingerprint of a datalist).

    Raises:
        FileNotFoundError: the file does not exist.
    """
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def device_info(device: torch.device | str, amp: bool) -> dict[str, str]:
    """What a run ran on: ``device_type``, ``device_name`` (CPU or the GPU's name), ``cuda_version``, ``amp``.

    Args:
        device: the training device.
        amp: whether mixed precision is on.

    Returns:
        string values, ready to be MLflow parameters.
    """
    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.is_available():
        name = torch.cuda.get_device_name(dev)
    else:
        import platform

        name = f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} logical cores)"
    return {
        "device_type": dev.type,
        "device_name": name,
        "cuda_version": str(torch.version.cuda) if dev.type == "cuda" else "none",
        "amp": str(bool(amp)),
        "torch_version": torch.__version__,
    }


def log_params_once(run: MLflowRun, params: dict[str, Any]) -> dict[str, str]:
    """Log parameters, skipping those the run already holds (MLflow refuses to change a parameter).

    A parameter present with a different value (a resumed run with a changed config) is left as
    it was and reported with a warning.

    Args:
        run: where to log.
        params: name -> value (converted with ``str``; values over MLflow's 6000-char limit cut).

    Returns:
        the parameters that were logged.
    """
    import mlflow

    existing = run.client.get_run(run.run_id).data.params
    new: dict[str, str] = {}
    for k, v in params.items():
        sv = str(v)[:6000]
        if k in existing:
            if existing[k] != sv:
                logger.warning("MLflow run %s already has %s=%r; not changing it to %r",
                               run.run_id, k, existing[k], sv)
            continue
        new[k] = sv
    if new:
        batch = [mlflow.entities.Param(k, v) for k, v in new.items()]
        run.client.log_batch(run.run_id, metrics=[], params=batch, tags=[])
    return new


class TrackingServerError(RuntimeError):
    """The MLflow tracking server cannot be reached; the message names the address and the fixes."""


#: MLflow's HTTP limits set for a run unless the environment already sets them (MLflow's own
#: defaults, 120 s timeout and 7 retries with backoff factor 2, can block one logging call for
#: over ten minutes). Worst case per call here: 3 tries of 10 s plus 1 + 2 s of backoff.
MLFLOW_REQUEST_LIMITS = {
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
}


def bound_mlflow_requests(limits: dict[str, str] | None = None) -> dict[str, str]:
    """Set MLflow's HTTP timeout and retry limits in ``os.environ`` where the user has not.

    Args:
        limits: variable -> value; default :data:`MLFLOW_REQUEST_LIMITS`.

    Returns:
        the effective values of those variables.
    """
    limits = MLFLOW_REQUEST_LIMITS if limits is None else limits
    return {k: os.environ.setdefault(k, v) for k, v in limits.items()}


def check_tracking_server(uri: str, timeout: float = 5.0) -> None:
    """Fail fast when a remote tracking server does not answer; local stores are not checked.

    An ``http(s)://`` URI must answer ``GET <uri>/health`` within ``timeout`` seconds (any HTTP
    answer below 500 counts as reachable: a 401/403 means it is there and asks for credentials,
    which MLflow reports itself). ``sqlite:`` and other database URIs are opened by MLflow directly.

    Args:
        uri: the tracking URI.
        timeout: seconds to wait for the connection and for the answer.

    Raises:
        TrackingServerError: no connection, no answer within ``timeout``, a server error, or a
            bad address.
    """
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme not in ("http", "https"):
        return
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (http(s) only)
            response.read(64)
    except urllib.error.HTTPError as err:
        if err.code >= 500:
            raise TrackingServerError(_unreachable(uri, timeout, f"it answered HTTP {err.code}")) from err
        logger.warning(f"MLflow tracking server {uri} answered HTTP {err.code} to /health; going on")
    except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        raise TrackingServerError(_unreachable(uri, timeout, f"{type(reason).__name__}: {reason}")) from err


def _unreachable(uri: str, timeout: float, reason: str) -> str:
    return (f"MLflow tracking server {uri} is not reachable ({reason}; waited at most {timeout:g} s). "
            "Training has not started. Start the server (bundle README, section 'Multi-GPU, resuming and "
            "remote tracking'), check the address, port, proxy and firewall, or track locally: leave out "
            "--tracking_uri (SQLite in <output_dir>/mlruns.db; MLFLOW_TRACKING_URI must be unset too) or "
            "leave out --tracking mlflow")


def _mlflow_handlers(source: Any) -> list[Any]:
    try:
        from monai.handlers import MLFlowHandler
    except ImportError:
        return []
    if isinstance(source, Iterable) and not isinstance(source, (str, bytes)):
        return [h for h in source if isinstance(h, MLFlowHandler)]
    found: list[Any] = []
    for handlers in getattr(source, "_event_handlers", {}).values():
        for handler, *_ in handlers:
            owner = getattr(handler, "__self__", None)
            if isinstance(owner, MLFlowHandler) and all(owner is not f for f in found):
                found.append(owner)
    return found


def check_tracking(source: Any, timeout: float = 5.0) -> str | None:
    """Before training: bound MLflow's requests and check the server of each MLFlowHandler in ``source``.

    Args:
        source: an engine with handlers attached, or a list of handlers (``train#handlers``).
        timeout: seconds for the reachability check.

    Returns:
        the tracking URI checked, or ``None`` without MLflow tracking (and on ranks other than 0,
        whose MLflow handlers are disabled).

    Raises:
        TrackingServerError: as :func:`check_tracking_server`.
    """
    handlers = _mlflow_handlers(source)
    if not handlers:
        return None
    bound_mlflow_requests()
    uri = None
    for handler in handlers:
        client = getattr(handler, "client", None)
        uri = getattr(client, "tracking_uri", None) or os.environ.get("MLFLOW_TRACKING_URI")
        if uri:
            check_tracking_server(str(uri), timeout=timeout)
    return str(uri) if uri else None
