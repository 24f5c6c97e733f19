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

Run identity: MONAI's ``MLFlowHandler`` with no run name adopts any unfinished run of its
experiment (a crashed training's, or another training's running at the same time), and with a
name it adopts an unfinished run of that name. :func:`start_run` therefore creates the run itself,
before the engines start, and hands it to every ``MLFlowHandler`` of the training (trainer and
validator), so that each training is exactly one run: a new one for a new training, the
checkpoint's own (its id is in ``latest.pt``) for ``--resume True``. :func:`run_tracked` marks a
run that ends in an exception ``FAILED`` (``KILLED`` on Ctrl-C); a run killed outright stays
``RUNNING`` and is never adopted, since no training looks runs up by status or name. Runs are
named after what they are (:func:`run_name`: recipe, data, start time) in an experiment named
after the bundle, marked as a model-training experiment so that MLflow 3's UI opens it on its
runs (:data:`EXPERIMENT_KIND_TAG`). :func:`log_fusion_model` logs the trained network as an MLflow
model with its signature and an input example, optionally registered.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
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
    "prepare_sqlite_store",
    "IterationMetricBuffer",
    "buffer_iteration_metrics",
    "EXPERIMENT_KIND_TAG",
    "EXPERIMENT_KIND",
    "recipe_name",
    "data_name",
    "run_name",
    "start_run",
    "run_tracked",
    "fusion_model_signature",
    "log_fusion_model",
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
            prepare_sqlite_store(str(uri))
    return str(uri) if uri else None


def prepare_sqlite_store(uri: str, timeout: float = 120.0) -> bool:
    """Create a new SQLite tracking store's tables under a file lock (``<database>.lock``).

    MLflow creates and migrates a SQLite store's schema when a client first opens it; two trainings
    that start at once into a new store both migrate, and one fails on the other's half-made schema.
    Here the first one holds the lock while it creates the tables; the others wait, then find them.

    Args:
        uri: the tracking URI (only ``sqlite:`` URIs of a file are prepared).
        timeout: seconds to wait for another process's preparation.

    Returns:
        whether the URI was a SQLite file store (now prepared).
    """
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme != "sqlite" or not parsed.path or parsed.path in ("/", "/:memory:"):
        return False
    from filelock import FileLock
    from mlflow.tracking import MlflowClient

    db = urllib.parse.unquote(parsed.path[1:])  # sqlite:////abs/x.db or sqlite:///relative.db
    os.makedirs(os.path.dirname(db) or ".", exist_ok=True)
    with FileLock(db + ".lock", timeout=timeout):
        MlflowClient(uri).search_experiments(max_results=1)  # creates and migrates the schema
    return True


# ---------------------------------------------------------------- run identity and names

#: Experiment tag that MLflow 3's UI reads to choose an experiment's page: a GenAI experiment opens
#: on its traces, a model-development one on its runs. Set on the bundle's experiments unless present.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
#: The value for a model-training experiment (MLflow 3's ``custom_model_development``).
EXPERIMENT_KIND = "custom_model_development"

_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


def _safe(text: str, max_len: int) -> str:
    """``text`` with every run of characters other than letters, digits and ``._+-`` made one
    ``-``, cut to ``max_len`` characters (names stay valid in URLs, file names and shells)."""
    return _UNSAFE.sub("-", str(text)).strip("-")[:max_len] or "run"


def _num(value: Any) -> str:
    """A number as short as it reads: ``4``, ``0.5``, ``1e-05``."""
    return f"{float(value):g}"


def recipe_name(
    alpha: float = 4.0,
    beta: float = 1.0,
    gamma: float = 1.0,
    terms: Mapping[str, float] | None = None,
    source_weights: Any = (0.5, 0.5),
    clip_output: bool = False,
) -> str:
    """A short name of the loss recipe: ``thesis-ssim4`` for the thesis's loss as written (SSIM-alpha
    with alpha 4, equal source weights, the raw output, no added term), else the parts that differ,
    e.g. ``ssim4-var-clip+gradient4+wmean4`` (the shipped model's).

    Args:
        alpha: luminance exponent (``ssim4``); beta and gamma appear only when not 1 (``ssim4.2.1``).
        beta: contrast exponent.
        gamma: structure exponent.
        terms: added loss terms, name -> weight (``+name<weight>``, sorted by name).
        source_weights: ``[w_a, w_b]`` (``w0.3-0.7`` unless equal) or ``variance`` (``var``).
        clip_output: the loss scores the clipped output (``clip``).

    Returns:
        the recipe name (letters, digits and ``.+-``).
    """
    ssim = f"ssim{_num(alpha)}" + ("" if float(beta) == 1 and float(gamma) == 1
                                   else f".{_num(beta)}.{_num(gamma)}")
    parts = [ssim]
    if isinstance(source_weights, str):
        parts.append("var" if source_weights == "variance" else source_weights)
    elif source_weights is not None:
        w = [float(v) for v in source_weights]
        if len(set(w)) > 1:
            parts.append("w" + "-".join(_num(v) for v in w))
    if clip_output:
        parts.append("clip")
    added = "".join(f"+{k}{_num(v)}" for k, v in sorted(dict(terms or {}).items()))
    thesis = len(parts) == 1 and not added
    return _safe(("thesis-" if thesis else "") + "-".join(parts) + added, 60)


def data_name(pairs: Iterable[str]) -> str:
    """The data of a run by its pair types: ``CT-MRI``, or ``CT-MRI+PET-MRI+SPECT-MRI`` (sorted, distinct).

    Args:
        pairs: the ``pair`` field of the training entries.

    Returns:
        the name; ``data`` when no entry names its pair type.
    """
    kinds = sorted({str(p) for p in pairs if p})
    return _safe("+".join(kinds), 40) if kinds else "data"


def run_name(
    name: str | None,
    config: Mapping[str, Any],
    datalist: str | os.PathLike | None = None,
    split: str = "training",
    prefix: str = "",
    when: float | None = None,
) -> str:
    """The MLflow run name: ``name`` when the user gave one, else ``<recipe>_<data>_<YYYYmmdd-HHMM>``.

    E.g. ``thesis-ssim4_CT-MRI_20261201-1925``: the recipe by :func:`recipe_name` (from ``config``'s
    loss ids), the data by :func:`data_name` (the pair types of the datalist's ``split``), the start
    time (local time, to the minute). Names need not be unique (runs are told apart by their ids,
    :func:`start_run`); they say what a run is in the run list.

    Args:
        name: the user's name (``--run_name``), or ``None``.
        config: hyperparameters with ``alpha``, ``beta``, ``gamma``, ``terms``, ``source_weights``,
            ``clip_output`` (missing ones take the thesis's values).
        datalist: the datalist whose pair types name the data, or ``None``.
        split: the split that names the data.
        prefix: put before the derived name (``eval-`` for an evaluation).
        when: start time (seconds since the epoch); default now.

    Returns:
        the run name.
    """
    if name:
        return str(name)
    recipe = recipe_name(**{k: config[k] for k in ("alpha", "beta", "gamma", "terms", "source_weights",
                                                   "clip_output") if k in config})
    pairs: list[str] = []
    if datalist is not None:
        try:
            from pipeline.datalist import load_datalist

            entries = load_datalist(datalist, split)
            pairs = [str(e.get("pair", "")) for e in entries]  # type: ignore[union-attr]
        except Exception as err:  # noqa: BLE001 (a name is never worth failing a training for)
            logger.warning("run name: cannot read the pair types of %s (%s)", datalist, err)
    stamp = time.strftime("%Y%m%d-%H%M", time.localtime(time.time() if when is None else when))
    return f"{prefix}{recipe}_{data_name(pairs)}_{stamp}"


def _mark_experiment(client: Any, experiment: Any) -> None:
    """Tag ``experiment`` as a model-training one (:data:`EXPERIMENT_KIND_TAG`) unless it has a kind."""
    tags = dict(getattr(experiment, "tags", None) or {})
    if EXPERIMENT_KIND_TAG not in tags:
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)


def _experiment_of(handler: Any) -> Any:
    """The experiment of an ``MLFlowHandler``, created (with its artifact location) if needed."""
    if getattr(handler, "experiment", None) is None:
        handler._set_experiment()  # MONAI's own lookup/creation, race-safe between two trainings
    return handler.experiment


def start_run(
    handlers: Iterable[Any],
    name: str,
    record: Any = None,
    resume: bool = False,
    tags: Mapping[str, str] | None = None,
) -> MLflowRun | None:
    """Create (or, resuming, reopen) this training's MLflow run and give it to every ``MLFlowHandler``.

    MONAI's handler looks a run up when its engine starts (any unfinished run of the experiment, or
    one of its name); a run set here first is the one it uses, so a new training never logs into a
    crashed run or into another training's run, and a resumed one continues its own.

    Args:
        handlers: the handlers of the training's engines (trainer first); those that are not
            ``MLFlowHandler`` are skipped, and without any this is a no-op.
        name: the run name (:func:`run_name`).
        record: the checkpoint record (:class:`pipeline.checkpoint.TrainingRecord`) or ``None``:
            its resumed run id is reopened when ``resume``; the run's id is stored into it (so
            ``latest.pt`` names its run); allowed configuration changes are tagged on the run.
        resume: continue the run named by the checkpoint (``--resume True``).
        tags: further run tags.

    Returns:
        the run, or ``None`` without MLflow tracking.
    """
    found = _mlflow_handlers(list(handlers))
    if not found:
        return None
    first = found[0]
    client = first.client
    experiment = _experiment_of(first)
    _mark_experiment(client, experiment)
    run = None
    previous = getattr(record, "resumed_run_id", None) if resume else None
    if previous:
        try:
            run = client.get_run(previous)
        except Exception as err:  # noqa: BLE001 (MlflowException: not in this store)
            logger.warning("the checkpoint's MLflow run %s is not in %s (%s); starting a new run",
                           previous, client.tracking_uri, err)
        if run is not None and run.info.lifecycle_stage != "active":
            logger.warning("the checkpoint's MLflow run %s was deleted; starting a new run", previous)
            run = None
        if run is not None:
            client.update_run(run.info.run_id, status="RUNNING")
            logger.info("resuming MLflow run %s (%s)", run.info.run_id, run.info.run_name)
    if run is None:
        all_tags = {"bundle": "ssim_fusion", **dict(tags or {})}
        if previous:
            all_tags["resumed_from_run"] = str(previous)
        run = client.create_run(experiment.experiment_id, run_name=name, tags=all_tags)
        logger.info("MLflow run %s (%s) in experiment %s", run.info.run_id, name, experiment.name)
    run = client.get_run(run.info.run_id)
    for handler in found:
        if getattr(handler, "experiment", None) is None:
            _experiment_of(handler)
        handler.cur_run = run
        handler.run_name = run.info.run_name
    result = MLflowRun(client, run.info.run_id, first)
    if record is not None:
        record.run_id = run.info.run_id
        changes = getattr(record, "changes", None) or {}
        if changes:
            epoch = getattr(record, "resumed_epoch", None)
            text = "; ".join(f"{k}: {_show(old)} -> {_show(new)}" for k, (old, new) in changes.items())
            client.set_tag(run.info.run_id, f"config_change_epoch{epoch}", text[:5000])
    return result


def _show(value: Any) -> str:
    """A value as the run tags print it: strings bare, the rest as Python literals."""
    return value if isinstance(value, str) else repr(value)


def run_tracked(engine: Any, handlers: Iterable[Any] | None = None, *args: Any, **kwargs: Any) -> Any:
    """``engine.run(...)``; a run it ends with an exception is marked ``FAILED`` (``KILLED`` on Ctrl-C).

    MONAI's handler closes its run only when the engine completes, so a training that raised left
    its run ``RUNNING``, indistinguishable from one still training. (A process killed outright
    still leaves ``RUNNING``: :func:`start_run` never adopts a run by status, so that is only a
    label.)

    Args:
        engine: the trainer or evaluator.
        handlers: where to look for ``MLFlowHandler`` besides the engine's own (the validator's).
        args: passed to ``engine.run`` (a bundle's engines have their data already).
        kwargs: passed to ``engine.run``.

    Returns:
        what ``engine.run()`` returns.
    """
    try:
        return engine.run(*args, **kwargs)
    except BaseException as err:
        status = "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED"
        done: set[str] = set()
        for handler in _mlflow_handlers(engine) + _mlflow_handlers(list(handlers or [])):
            run = getattr(handler, "cur_run", None)
            if run is None or run.info.run_id in done:
                continue
            done.add(run.info.run_id)
            try:
                handler.client.set_terminated(run.info.run_id, status)
            except Exception as mark_err:  # noqa: BLE001 (the training's own error matters more)
                logger.warning("could not mark MLflow run %s %s: %s", run.info.run_id, status, mark_err)
            handler.cur_run = None
        raise


def fusion_model_signature(in_channels: int = 2, out_channels: int = 1) -> Any:
    """The MLflow signature of the fusion network: float32 ``(N, 2, H, W)`` in, ``(N, 1, H, W)`` out.

    Any batch size, height and width (``-1``); inputs are the two sources in [0, 1], the output is
    the ``tanh`` map whose clipping to [0, 1] is the fused image.

    Args:
        in_channels: source channels.
        out_channels: output channels.

    Returns:
        an ``mlflow.models.ModelSignature``.
    """
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    return ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, in_channels, -1, -1))]),
                          outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, out_channels, -1, -1))]))


@contextlib.contextmanager
def _tracking_uri(uri: str) -> Iterator[None]:
    """MLflow's global tracking (and registry) URI set to ``uri`` for the block, then put back."""
    import mlflow

    old = mlflow.get_tracking_uri()
    old_env = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(old)
        if old_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old_env


def _requirements() -> list[str]:
    """What a model server needs: torch and this project (whose FusionNet the pickled model is).

    Returns:
        pip requirement lines.
    """
    from importlib import metadata

    reqs = [f"torch=={torch.__version__.split('+')[0]}"]
    try:
        reqs.append(f"ssim-fusion=={metadata.version('ssim-fusion')}")
    except metadata.PackageNotFoundError:
        reqs.append("ssim-fusion")
    return reqs


def log_fusion_model(
    run: MLflowRun,
    model: torch.nn.Module,
    input_example: Any,
    name: str = "ssim_fusion",
    registered_model_name: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> Any:
    """Log a fusion network as an MLflow PyTorch model of ``run``, with signature and input example.

    The model is the eval-mode network on the CPU, saved pickled (``serialization_format="pickle"``)
    so that ``mlflow.pytorch.load_model(uri)`` gives back the :class:`pipeline.networks.FusionNet`
    itself, which the project's fuser (:class:`pipeline.baselines.cnn.CNNFuser`) folds and runs;
    MLflow's other format, a ``torch.export`` graph, loads without this project but as a graph
    that the fuser cannot fold or put in eval mode. Loading a pickled model runs code from the
    store: load models from a registry you trust, as you would a bundle. It needs this project
    installed. The pip requirements are given (torch, ssim-fusion) rather than inferred, which
    would load the model in a fresh interpreter.

    Args:
        run: the training's run.
        model: the network.
        input_example: one float32 ``(1, 2, H, W)`` input in [0, 1] (array or tensor).
        name: the logged model's name (MLflow 3's ``name=``).
        registered_model_name: also register it under this name (a new version), or ``None``.
        tags: tags of the logged model.

    Returns:
        MLflow's ``ModelInfo`` (``model_uri``, ``registered_model_version``, ...).
    """
    import mlflow.pytorch
    import numpy as np

    example = input_example.detach().cpu().numpy() if isinstance(input_example, torch.Tensor) \
        else np.asarray(input_example)
    example = example.astype(np.float32)
    model = model.to("cpu").eval()
    signature = fusion_model_signature(example.shape[1])
    uri = str(getattr(run.client, "tracking_uri", "") or mlflow.get_tracking_uri())
    with _tracking_uri(uri):
        # created here in the run's experiment: given a run id alone, MLflow files the model under the
        # process's active experiment (the Default one), away from its run
        source = run.client.get_run(run.run_id)
        logged = mlflow.initialize_logged_model(name=name, source_run_id=run.run_id, tags=dict(tags or {}),
                                                params=dict(source.data.params),
                                                experiment_id=source.info.experiment_id)
        import inspect

        fmt = {"serialization_format": "pickle"} \
            if "serialization_format" in inspect.signature(mlflow.pytorch.log_model).parameters else {}
        info = mlflow.pytorch.log_model(model, name=name, signature=signature, input_example=example,
                                        model_id=logged.model_id, registered_model_name=registered_model_name,
                                        run_id=run.run_id, pip_requirements=_requirements(), **fmt)
    logger.info("model logged to MLflow run %s as %s%s", run.run_id, info.model_uri,
                f", registered as {registered_model_name} version {info.registered_model_version}"
                if registered_model_name else "")
    return info
