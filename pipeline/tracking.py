"""MLflow helpers for the bundle: where a run lives, what it records about the data and the machine.

Tracking is switched on the MONAI way, ``python -m monai.bundle run ... --tracking mlflow``, which
attaches MONAI's ``MLFlowHandler`` to the trainer and the evaluators (tracking URI: a SQLite
database ``sqlite:///<output_dir>/mlruns.db`` unless ``--tracking_uri`` says otherwise). Our own
handlers (:mod:`pipeline.handlers`) add to *that* run: :func:`find_mlflow_run` finds the
``MLFlowHandler`` attached to an engine and hands back its client and run id. Without tracking
they log to the console only, and MLflow is never imported.
"""

from __future__ import annotations

import hashlib
import logging
import os
from typing import Any

import torch

__all__ = ["MLflowRun", "find_mlflow_run", "file_sha256", "device_info", "log_params_once"]

logger = logging.getLogger(__name__)


class MLflowRun:
    """An MLflow client and the id of the run to log into (a thin pair, with the calls we need)."""

    def __init__(self, client: Any, run_id: str, handler: Any = None) -> None:
        self.client, self.run_id, self.handler = client, run_id, handler

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Log scalar metrics at one step in one request."""
        import time

        import mlflow  # imported by MLFlowHandler already; cheap here

        ts = int(time.time() * 1000)
        batch = [mlflow.entities.Metric(k, float(v), ts, int(step)) for k, v in metrics.items()]
        self.client.log_batch(self.run_id, metrics=batch, params=[], tags=[])

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        """Upload one file under ``artifact_path``."""
        self.client.log_artifact(self.run_id, str(path), artifact_path)


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

