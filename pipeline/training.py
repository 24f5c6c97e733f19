"""Glue between the bundle configs and the library: the input as its own target, the bundle folder,
datalist splits, checkpoint checks, the tracking-server check, the MLflow run of a training (its
name, its start, its end) and the resumable training state with its configuration record."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.data import MetaTensor

__all__ = [
    "prepare_self_target",
    "default_bundle_root",
    "load_split",
    "check_checkpoint",
    "initial_network",
    "check_tracking",
    "buffer_iteration_metrics",
    "training_state",
    "training_record",
    "run_name",
    "sqlite_store",
    "start_run",
    "run_tracked",
]


def prepare_self_target(
    batchdata: Mapping[str, Any],
    device: str | torch.device | None = None,
    non_blocking: bool = False,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``prepare_batch`` for MONAI's SupervisedTrainer/Evaluator: ``(image, image)``.

    The SSIM-alpha loss compares the fused output with the sources, so the "label" is the
    2-channel input (float in [0, 1]); no copy is made.

    Args:
        batchdata: a collated batch with key ``image`` ``(N, 2, H, W)``.
        device: target device.
        non_blocking: as in ``Tensor.to``.
        kwargs: further ``Tensor.to`` arguments (ignored keys are allowed by MONAI's protocol).

    Returns:
        the input batch twice.

    Raises:
        KeyError: the batch has no ``image``.
    """
    if "image" not in batchdata:
        raise KeyError(f"the batch has no 'image' (keys: {sorted(batchdata)}); check the transforms")
    image = batchdata["image"]
    if isinstance(image, MetaTensor):
        image = image.as_tensor()
    image = image.to(device=device, non_blocking=non_blocking)
    return image, image


def default_bundle_root(name: str = "ssim_fusion") -> str:
    """The bundle folder: the current directory when it is the bundle, else ``bundles/<name>`` below it,
    else the installed bundle (:func:`pipeline.resources.bundle_root`).

    ``bundle_root`` in the configs; override it with ``--bundle_root DIR`` for a bundle elsewhere.

    Args:
        name: the bundle's folder name.

    Returns:
        absolute path of the bundle folder.
    """
    from pipeline.resources import bundle_root

    cwd = Path.cwd()
    if cwd.name == name and (cwd / "configs" / "metadata.json").is_file():
        return str(cwd)
    if (cwd / "bundles" / name / "configs" / "metadata.json").is_file():
        return str(cwd / "bundles" / name)
    return str(bundle_root())


def load_split(datalist: str | os.PathLike, split: str) -> list[dict]:
    """The entries of one split of a datalist, paths made absolute; a missing or empty split is an error.

    Args:
        datalist: ``datalist.json`` written by ``python -m data_prep``.
        split: ``training``, ``validation`` or ``test``.

    Returns:
        the entries.

    Raises:
        pipeline.datalist.DatalistError: missing or invalid datalist, unknown or empty split.
    """
    from pipeline.datalist import DatalistError, load_datalist

    entries = load_datalist(datalist, split)
    if not entries:
        raise DatalistError(f"{datalist}: the {split!r} split is empty. Re-create the data set with more "
                            "cases (data_prep splits by case) or pass another --datalist")
    return entries  # type: ignore[return-value]


def check_checkpoint(ckpt_path: str | os.PathLike, widths: Sequence[int]) -> None:
    """Fail early, with a clear message, when ``ckpt_path`` cannot be loaded into FusionNet(widths).

    Raises:
        pipeline.io.CheckpointError: missing file, unreadable, or another architecture.
    """
    from pipeline.checkpoint import load_fusion_network

    load_fusion_network(ckpt_path, device="cpu", widths=widths)


def initial_network(network: torch.nn.Module, init_weights: str | os.PathLike | None,
                    device: str | torch.device) -> torch.nn.Module:
    """The network training starts from: as initialised, or with the weights of ``init_weights``.

    Fine-tuning starts from a trained ``model.pt`` (e.g. one network per pair type from a model
    trained on all of them). ``--resume True`` restores ``latest.pt`` over it, as over any start.

    Args:
        network: the configured FusionNet.
        init_weights: a ``model.pt``/``latest.pt`` of the same widths, or ``None``.
        device: where to train.

    Returns:
        the network on ``device``.

    Raises:
        pipeline.io.CheckpointError: the file is missing, unreadable or of other widths.
    """
    if init_weights is not None:
        from pipeline.weights import load_state_dict
        from pipeline.networks import widths_from_state_dict
        from pipeline.io import CheckpointError

        state = load_state_dict(init_weights)
        expected = tuple(getattr(network, "widths", ()))
        found = tuple(widths_from_state_dict(state))
        if expected and found != expected:
            raise CheckpointError(f"{init_weights}: --init_weights holds a network of widths {list(found)}, "
                                  f"this training builds {list(expected)}; pass --widths \"{list(found)}\"")
        network.load_state_dict(state)
    return network.to(torch.device(device))


def check_tracking(source: Any, timeout: float = 5.0) -> str | None:
    """Fail fast, before training, when the MLflow tracking server of ``--tracking mlflow`` is unreachable.

    See :func:`pipeline.tracking.check_tracking` (a no-op without MLflow tracking).

    Raises:
        pipeline.tracking.TrackingServerError: the server does not answer within ``timeout`` seconds.
    """
    from pipeline.tracking import check_tracking as _check

    return _check(source, timeout=timeout)


def buffer_iteration_metrics(engine: Any, every: int = 50) -> int:
    """One MLflow request per ``every`` training iterations:
    :func:`pipeline.tracking.buffer_iteration_metrics`."""
    from pipeline.tracking import buffer_iteration_metrics as _buffer

    return _buffer(engine, every)


def training_state(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """What ``latest.pt`` saves and ``--resume True`` restores: :func:`pipeline.checkpoint.training_state`."""
    from pipeline.checkpoint import training_state as _state

    return _state(*args, **kwargs)


def training_record(config: Mapping[str, Any], datalist: str | os.PathLike | None = None,
                    allow_config_change: bool = False) -> Any:
    """The record ``latest.pt`` keeps of its hyperparameters and MLflow run
    (:class:`pipeline.checkpoint.TrainingRecord`), with the datalist's SHA-256 among the values.

    Args:
        config: hyperparameter id -> value (``train#record_config`` in ``train.yaml``).
        datalist: the datalist file, fingerprinted as ``datalist_sha256`` (its path is not
            recorded: a moved data set is the same data).
        allow_config_change: let ``--resume True`` go on with other values.

    Returns:
        the record.
    """
    from pipeline.checkpoint import TrainingRecord
    from pipeline.tracking import file_sha256

    values = dict(config)
    if datalist is not None and os.path.isfile(datalist):
        values["datalist_sha256"] = file_sha256(datalist)
    return TrainingRecord(values, allow_config_change=allow_config_change)


def run_name(name: str | None, config: Mapping[str, Any], datalist: str | os.PathLike | None = None,
             split: str = "training", prefix: str = "") -> str:
    """The MLflow run name, ``--run_name`` or ``<recipe>_<data>_<start time>``:
    :func:`pipeline.tracking.run_name`."""
    from pipeline.tracking import run_name as _name

    return _name(name, config, datalist, split=split, prefix=prefix)


def sqlite_store(path: str | os.PathLike) -> str:
    """The URI of a local SQLite MLflow store at ``path``, its tables created (once, under a file lock).

    The bundle's default ``tracking_uri``: MONAI's ``MLFlowHandler`` opens the store when it is
    built, and two trainings building theirs at once into a new store would both create its
    tables (:func:`pipeline.tracking.prepare_sqlite_store`).

    Args:
        path: the database file (``<output_dir>/mlruns.db``).

    Returns:
        ``sqlite:///...``, as ``monai.utils.path_to_sqlite_uri`` writes it.
    """
    from monai.utils import path_to_sqlite_uri

    from pipeline.tracking import prepare_sqlite_store

    uri = path_to_sqlite_uri(str(path))
    prepare_sqlite_store(uri)
    return uri


def start_run(handlers: Sequence[Any], name: str, record: Any = None, resume: bool = False) -> Any:
    """Create this training's MLflow run (or reopen the checkpoint's when resuming) for every
    ``MLFlowHandler`` in ``handlers``: :func:`pipeline.tracking.start_run` (a no-op without tracking)."""
    from pipeline.tracking import start_run as _start

    return _start(handlers, name, record=record, resume=resume)


def run_tracked(engine: Any, handlers: Sequence[Any] | None = None) -> Any:
    """``engine.run()``, its MLflow run marked ``FAILED`` when it raises:
    :func:`pipeline.tracking.run_tracked`."""
    from pipeline.tracking import run_tracked as _run

    return _run(engine, handlers)
