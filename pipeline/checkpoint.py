"""Checkpoints: written atomically, resumed exactly, loaded safely.

- :class:`AtomicCheckpointSaver`: MONAI's :class:`monai.handlers.CheckpointSaver` whose files are
  written to a temporary file in the same folder and renamed over the target (``os.replace``),
  never with NaN/Inf network weights (:class:`NonFiniteWeightsError` stops the training instead),
  with ordinary read permissions (0644 less the umask). MONAI's own saver writes in place
  (``atomic=False``), so a crash while saving could leave a truncated ``model.pt``; here a fixed
  file name (``key_metric_filename``, ``interval_filename``) is replaced in one step, never
  deleted first. In a distributed run only rank 0 writes.
- :func:`training_state`: everything ``latest.pt`` holds so that a resumed run repeats the
  unbroken one: network, optimizer, learning-rate scheduler, trainer (epoch, iteration), the
  best-model tracker, the AMP grad scaler and :class:`RandomStates` (torch, CUDA, NumPy, Python
  and every random MONAI transform of the training pipeline).
- :func:`load_fusion_network`: a FusionNet from ``model.pt`` (or a ``latest.pt``) for inference, its
  architecture read from the weights and checked against the widths asked for.
- :class:`ResumeLoader`: the ``--resume True`` handler. It reads ``latest.pt`` with
  ``torch.load(weights_only=True)`` (no arbitrary code runs from a checkpoint file) and stops with
  a :class:`CheckpointError` naming the file and the fix when it is missing, truncated or
  corrupt, or holds a network of another architecture.
- :class:`TrainingRecord`: what produced a ``latest.pt``, saved in it: the hyperparameters (the
  ids at the top of ``train.yaml``, the datalist's fingerprint) and the id of the training's MLflow
  run. Resuming with other hyperparameters stops with a :class:`ConfigChangeError` listing every
  difference, unless the user allows it (``--allow_config_change True``); allowed, the new values
  are applied, also where a restored object would keep the old one (the optimizer's learning rate,
  the cosine schedule: :func:`continue_lr_schedule`).
"""

from __future__ import annotations

import logging
import os
import random
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.handlers.checkpoint import BaseSaveHandler
from monai.handlers import CheckpointSaver

from pipeline.distributed import get_rank, get_world_size, is_distributed, is_main_process, unwrap
from pipeline.io import CheckpointError, load_checkpoint
from pipeline.networks import FusionNet, widths_from_state_dict
# the loading of weights lives apart (no Ignite, no MONAI: `fuse --method cnn` starts fast); kept here
from pipeline.weights import default_device, load_fusion_network, load_state_dict

__all__ = [
    "AtomicCheckpointSaver",
    "AtomicDiskSaver",
    "to_cpu",
    "RandomStates",
    "GradScalerState",
    "training_state",
    "load_checkpoint",
    "load_state_dict",
    "load_fusion_network",
    "default_device",
    "ResumeLoader",
    "CheckpointError",
    "REQUIRED_RESUME_KEYS",
    "ConfigChangeError",
    "TrainingRecord",
    "continue_lr_schedule",
    "NonFiniteWeightsError",
]

logger = logging.getLogger(__name__)

#: Entries a resumable checkpoint must hold; the others of :func:`training_state` are optional
#: (a ``latest.pt`` of an older version lacks them: resuming then warns that the continuation is
#: not exact).
REQUIRED_RESUME_KEYS = ("model", "optimizer", "trainer")


def to_cpu(obj: Any) -> Any:
    """``obj`` with every tensor inside (dicts, lists, tuples) moved to the CPU, the rest as is."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):  # OrderedDict (state dicts) stays an OrderedDict
        return type(obj)((k, to_cpu(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


class NonFiniteWeightsError(RuntimeError):
    """The network's weights hold NaN or Inf: they are not saved, and the training stops."""


def _non_finite_weights(checkpoint: Mapping) -> list[str]:
    """Names of the network tensors holding NaN/Inf (``checkpoint`` is a state dict or ``{"model": ...}``)."""
    weights = checkpoint.get("model", checkpoint)
    if not isinstance(weights, Mapping):
        return []
    return [k for k, v in weights.items()
            if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())]


class AtomicDiskSaver(BaseSaveHandler):
    """Ignite save handler: ``torch.save`` to a temp file beside the target, then ``os.replace``.

    Only the main process (rank 0, or a run without a process group) writes. Tensors are saved on
    the CPU, so that a checkpoint written on a GPU loads anywhere (``torch.load`` without
    ``map_location``, MONAI's ``ckpt_export`` on a CPU-only machine).

    Args:
        dirname: folder of the checkpoints (created).
        filename: fixed file name for every save, or ``None`` for Ignite's generated names.
    """

    def __init__(self, dirname: str | os.PathLike, filename: str | None = None) -> None:
        self.dirname = Path(dirname)
        self.filename = filename
        if is_main_process():
            self.dirname.mkdir(parents=True, exist_ok=True)

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        if not is_main_process():
            return
        target = self.dirname / (self.filename or filename)
        bad = _non_finite_weights(checkpoint)
        if bad:  # NaN weights never become model.pt (the best) nor latest.pt (the resume point)
            raise NonFiniteWeightsError(f"the network's weights hold NaN or Inf ({', '.join(bad[:3])}); "
                                        f"they were not saved as {target}, and the training stops. Lower "
                                        "--learning_rate (or turn on --lr_schedule), then resume from the last "
                                        "latest.pt or train again")
        self.dirname.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=self.dirname)
        try:
            with os.fdopen(fd, "wb") as fh:
                torch.save(to_cpu(checkpoint), fh)
                fh.flush()
                os.fsync(fh.fileno())
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o644 & ~umask)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def remove(self, filename: str) -> None:
        if self.filename is not None or not is_main_process():
            return  # the next save replaces the fixed name atomically; deleting first would open a gap
        (self.dirname / filename).unlink(missing_ok=True)


class AtomicCheckpointSaver(CheckpointSaver):
    """:class:`monai.handlers.CheckpointSaver` whose files are written atomically (rank 0 only).

    Args:
        interval_filename: fixed name for the every-``save_interval`` checkpoint (e.g.
            ``"latest.pt"``, the one to resume from); ``None`` keeps MONAI's numbered names.
        kwargs: everything :class:`monai.handlers.CheckpointSaver` takes.
    """

    def __init__(self, *args: Any, interval_filename: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for cp in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if cp is None:
                continue
            fixed = getattr(cp.save_handler, "filename", None)
            if cp is self._interval_checkpoint and interval_filename is not None:
                fixed = interval_filename
            cp.save_handler = AtomicDiskSaver(self.save_dir, filename=fixed)


# ---------------------------------------------------------------- configuration record


class ConfigChangeError(CheckpointError):
    """Resuming with other hyperparameters than the checkpoint's; the message lists each difference."""


def _plain(value: Any) -> Any:
    """``value`` as plain JSON-like data (tuples as lists, mappings as dicts with string keys), so a
    record compares by value and loads with ``torch.load(weights_only=True)``.

    Args:
        value: a configuration value.

    Returns:
        the plain value (anything else as its ``str``).
    """
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, torch.Tensor):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _show(value: Any) -> str:
    """A value as the messages print it: strings bare, the rest as Python literals."""
    return value if isinstance(value, str) else repr(value)


class TrainingRecord:
    """What produced a training checkpoint: its hyperparameters and its MLflow run (a ``latest.pt`` entry).

    ``state_dict()`` is ``{"config": {...}, "mlflow_run_id": "...", "history": [...]}``: the
    configuration of this run (plain values), the id of the MLflow run the training logs into
    (empty without tracking) and the configuration changes allowed at earlier resumes. Resuming,
    :meth:`compare` lists what differs (keys recorded on both sides only: a key that a later
    version added is not a change); :meth:`check` stops on a difference unless
    ``allow_config_change``.

    Args:
        config: hyperparameter id -> value, as the run is configured now.
        allow_config_change: resuming with other values goes on (they are applied and logged)
            instead of stopping.
    """

    def __init__(self, config: Mapping[str, Any], allow_config_change: bool = False) -> None:
        self.config: dict[str, Any] = _plain(dict(config))
        self.allow_config_change = bool(allow_config_change)
        self.run_id: str | None = None  #: the MLflow run of this training (set by the tracking)
        self.resumed: dict[str, Any] | None = None  #: the checkpoint's record, when resuming
        self.resumed_epoch: int | None = None  #: the checkpoint's epoch, when resuming
        self.changes: dict[str, tuple[Any, Any]] = {}  #: allowed changes: id -> (checkpoint's, now)
        self.history: list[dict[str, Any]] = []

    @property
    def resumed_run_id(self) -> str | None:
        """The MLflow run id the checkpoint names (``None``: none, or not resuming)."""
        return (self.resumed or {}).get("mlflow_run_id") or None

    def state_dict(self) -> dict[str, Any]:
        """What ``latest.pt`` stores (plain values only: it loads with ``weights_only=True``).

        Returns:
            ``{"config", "mlflow_run_id", "history"}``.
        """
        return {"config": dict(self.config), "mlflow_run_id": self.run_id or "",
                "history": list(self.history)}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Take over the checkpoint's run (unless the tracking chose one) and its change history,
        adding this resume's allowed changes to it; the configuration stays this run's.

        Args:
            state_dict: the checkpoint's ``record`` entry.
        """
        state = dict(state_dict)
        self.resumed = state
        if self.run_id is None:
            self.run_id = state.get("mlflow_run_id") or None
        self.history = list(state.get("history", []))
        if self.changes:
            self.history.append({"epoch": self.resumed_epoch,
                                 "changes": {k: [old, new] for k, (old, new) in self.changes.items()}})

    def compare(self, saved: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
        """The differences between the checkpoint's configuration and this one.

        Args:
            saved: the checkpoint's ``config``.

        Returns:
            id -> (checkpoint's value, this run's value), in this run's order.
        """
        saved = _plain(dict(saved))
        return {k: (saved[k], v) for k, v in self.config.items() if k in saved and saved[k] != v}

    def check(
        self,
        saved_state: Mapping[str, Any] | None,
        path: str | os.PathLike,
        epoch: int | None = None,
    ) -> dict[str, tuple[Any, Any]]:
        """Compare with the checkpoint's record; stop on a difference unless it is allowed.

        Args:
            saved_state: the checkpoint's ``record`` entry (``None``: a checkpoint of a version
                without one, not checked).
            path: the checkpoint (for the message).
            epoch: the checkpoint's epoch (for the history and the MLflow tag).

        Returns:
            the allowed differences (also in :attr:`changes`).

        Raises:
            ConfigChangeError: a difference without ``allow_config_change``.
        """
        self.resumed_epoch = epoch
        if saved_state is None:
            logger.warning(f"{path} holds no record of its configuration (written by an older version): "
                           "resuming without checking that the hyperparameters are the same")
            self.resumed = {}
            return {}
        self.resumed = dict(saved_state)
        diffs = self.compare(saved_state.get("config", {}))
        if diffs and not self.allow_config_change:
            listed = "; ".join(f"{k}: {_show(old)} in the checkpoint, {_show(new)} now"
                               for k, (old, new) in diffs.items())
            raise ConfigChangeError(
                f"{path}: this run's configuration differs from the one the checkpoint was trained with: "
                f"{listed}. Resume with the checkpoint's values, or pass --allow_config_change True to "
                "go on with the new ones (applied from the next epoch and tagged on the MLflow run), "
                "or train into another --output_dir")
        if diffs:
            logger.warning("resuming with a changed configuration (--allow_config_change True): " + "; ".join(
                f"{k}: {_show(old)} -> {_show(new)}" for k, (old, new) in diffs.items()))
        self.changes = diffs
        return diffs


def continue_lr_schedule(
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    epoch: int,
    max_epochs: int,
    learning_rate: float | None = None,
    schedule: bool = True,
) -> list[float]:
    """Apply a changed learning rate or length to a restored optimizer and cosine schedule.

    A restored optimizer keeps the learning rate it was saved with and a restored
    ``CosineAnnealingLR`` keeps its ``T_max``: past ``T_max`` its cosine climbs again, so a run
    extended with a larger ``--epochs`` would warm its rate back up. Here the schedule goes on from
    the current rate (or from ``learning_rate`` when given: the new value) down to its minimum over
    the epochs that remain, with no jump: a cosine over ``max_epochs - epoch`` epochs, starting at
    the current position. Without a schedule the rate is ``learning_rate`` (when given).

    Args:
        optimizer: the restored optimizer.
        scheduler: the restored scheduler (a ``CosineAnnealingLR`` is re-planned; others are left).
        epoch: epochs done (the checkpoint's).
        max_epochs: epochs of the run now.
        learning_rate: the new learning rate, or ``None`` to continue from the current one.
        schedule: whether the cosine schedule is in use (``--lr_schedule``).

    Returns:
        the learning rate of each parameter group for the next epoch.
    """
    if learning_rate is not None:
        for group in optimizer.param_groups:
            group["lr"] = float(learning_rate)
            group["initial_lr"] = float(learning_rate)
    current = [float(g["lr"]) for g in optimizer.param_groups]
    cosine = isinstance(scheduler, torch.optim.lr_scheduler.CosineAnnealingLR)
    if schedule and cosine:
        # the recursive form that step() uses follows the closed form with base_lrs = current from
        # last_epoch 0: the descent continues from the current rate, reaching eta_min at max_epochs
        scheduler.base_lrs = list(current)
        scheduler.T_max = max(1, int(max_epochs) - int(epoch))
        scheduler.last_epoch = 0
        scheduler._last_lr = list(current)
    return current


# ---------------------------------------------------------------- random states


def _numpy_state(rs: np.random.RandomState) -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = rs.get_state()
    return {"name": str(name), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}


def _set_numpy_state(rs: np.random.RandomState, state: Mapping[str, Any]) -> None:
    keys = state["keys"].numpy().astype(np.uint32)
    rs.set_state((state["name"], keys, int(state["pos"]), int(state["has_gauss"]), float(state["cached_gaussian"])))


def _transform_generators(obj: Any, seen: set[int] | None = None) -> Iterator[np.random.RandomState]:
    """Every NumPy generator of a (nested) MONAI transform, in a fixed order (attribute names sorted)."""
    from monai.transforms import Randomizable, Transform

    seen = set() if seen is None else seen
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, np.random.RandomState):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _transform_generators(item, seen)
    elif isinstance(obj, (Randomizable, Transform)):
        for key in sorted(vars(obj)):
            yield from _transform_generators(vars(obj)[key], seen)


class RandomStates:
    """The random number generators a training epoch draws from, as a checkpoint entry.

    ``state_dict()`` holds the torch CPU generator (data loader shuffling, network init), the CUDA
    generators, NumPy's and Python's global generators and the generator (``R``) of every random
    MONAI transform in ``transforms`` (crops, flips). Saved at the end of an epoch and restored
    when a resumed run starts, the next epoch draws exactly what the unbroken run drew. In a
    distributed run every rank's states are gathered (a collective: the saver runs on all
    ranks) and each rank gets its own back. Only tensors and plain values are stored, so the
    checkpoint loads with ``torch.load(weights_only=True)``.

    Args:
        transforms: the training transforms (a MONAI ``Compose`` or a list), or ``None``.
    """

    def __init__(self, transforms: Any = None) -> None:
        self.transforms = transforms

    def _generators(self) -> list[np.random.RandomState]:
        return list(_transform_generators(self.transforms)) if self.transforms is not None else []

    def capture(self) -> dict[str, Any]:
        """This process's generator states."""
        version, internal, gauss_next = random.getstate()
        state: dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
            "numpy": _numpy_state(np.random.mtrand._rand),
            "python": {"version": int(version), "state": torch.tensor(internal, dtype=torch.int64),
                       "gauss_next": gauss_next},
            "transforms": [_numpy_state(g) for g in self._generators()],
        }
        return state

    def restore(self, state: Mapping[str, Any]) -> None:
        """Set this process's generators from :meth:`capture`'s output.

        A different number of random transforms (the config changed) leaves the transforms as
        seeded and warns: the run continues, but not as the unbroken one would have.
        """
        torch.set_rng_state(state["torch"].cpu())
        if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
        _set_numpy_state(np.random.mtrand._rand, state["numpy"])
        py = state["python"]
        random.setstate((int(py["version"]), tuple(int(v) for v in py["state"].tolist()), py["gauss_next"]))
        gens = self._generators()
        saved = list(state.get("transforms", []))
        if len(saved) != len(gens):
            warnings.warn(f"the checkpoint holds {len(saved)} random transform states but the training "
                          f"pipeline has {len(gens)}; the transforms keep their fresh seeds, so the resumed "
                          "run will not repeat the unbroken one exactly", stacklevel=2)
            return
        for g, s in zip(gens, saved):
            _set_numpy_state(g, s)

    def state_dict(self) -> dict[str, Any]:
        """``{"ranks": [state of rank 0, rank 1, ...]}`` (one entry without a process group)."""
        local = self.capture()
        if not (is_distributed() and get_world_size() > 1):
            return {"ranks": [local]}
        import torch.distributed as dist

        gathered: list[Any] = [None] * get_world_size()
        dist.all_gather_object(gathered, local)
        return {"ranks": gathered}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore this rank's states (rank 0's when the checkpoint has another number of ranks)."""
        ranks = list(state_dict["ranks"])
        rank = get_rank()
        if len(ranks) != get_world_size():
            warnings.warn(f"the checkpoint was written by {len(ranks)} process(es), this run has "
                          f"{get_world_size()}: every rank takes rank 0's random states", stacklevel=2)
            rank = 0
        self.restore(ranks[rank])


class GradScalerState:
    """The AMP grad scaler of a MONAI trainer as a checkpoint entry (empty when AMP is off).

    MONAI creates ``trainer.scaler`` when ``run()`` starts, so it is looked up at save/load time.
    """

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer

    def state_dict(self) -> dict[str, Any]:
        scaler = getattr(self.trainer, "scaler", None)
        return dict(scaler.state_dict()) if scaler is not None else {}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        scaler = getattr(self.trainer, "scaler", None)
        if scaler is not None and state_dict:
            scaler.load_state_dict(dict(state_dict))


def training_state(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    trainer: Engine,
    lr_scheduler: Any = None,
    transforms: Any = None,
    best_saver: CheckpointSaver | None = None,
    record: TrainingRecord | None = None,
) -> dict[str, Any]:
    """The objects ``latest.pt`` saves and ``--resume True`` restores (``save_dict``/``load_dict``).

    Args:
        model: the network (a ``DistributedDataParallel`` wrapper is unwrapped: plain keys).
        optimizer: its optimizer.
        trainer: the training engine (epoch, iteration; its AMP scaler).
        lr_scheduler: the learning-rate scheduler, saved even when no handler steps it.
        transforms: the random training transforms (:class:`RandomStates`).
        best_saver: the validation's best-model saver: its record of the best score, so a resumed
            run does not overwrite ``model.pt`` with a worse model.
        record: the hyperparameters and MLflow run of the training (:class:`TrainingRecord`),
            checked when resuming.

    Returns:
        name -> object with ``state_dict``/``load_state_dict``.
    """
    state: dict[str, Any] = {"model": unwrap(model), "optimizer": optimizer, "trainer": trainer}
    if lr_scheduler is not None:
        state["lr_scheduler"] = lr_scheduler
    state["grad_scaler"] = GradScalerState(trainer)
    if best_saver is not None and getattr(best_saver, "_key_metric_checkpoint", None) is not None:
        state["best_model"] = best_saver._key_metric_checkpoint
    state["rng"] = RandomStates(transforms)
    if record is not None:
        state["record"] = record
    return state


# ---------------------------------------------------------------- loading


_RESUME_MISSING = ("no checkpoint to resume from. Check --output_dir (latest.pt is written to "
                   "<output_dir>/models after each epoch), or start a new training without --resume True")


def _architecture_error(path: Path, saved: Mapping[str, torch.Tensor], model: torch.nn.Module) -> str | None:
    """Why ``saved`` does not fit ``model`` (``None`` when it does)."""
    current = model.state_dict()
    if set(saved) == set(current) and all(tuple(saved[k].shape) == tuple(current[k].shape) for k in current):
        return None
    try:
        found = list(widths_from_state_dict(dict(saved)))
        wanted = list(widths_from_state_dict(current))
        return (f"{path}: holds a network with widths {found} but this run builds widths {wanted}. "
                f"Resume with --widths \"{found}\", or train into another --output_dir")
    except ValueError as err:
        missing = sorted(set(current) - set(saved))[:3]
        unexpected = sorted(set(saved) - set(current))[:3]
        shapes = [k for k in set(saved) & set(current) if tuple(saved[k].shape) != tuple(current[k].shape)][:3]
        return (f"{path}: holds a network of another architecture ({err}; missing {missing}, unexpected "
                f"{unexpected}, other shapes {shapes}). Resume only from a latest.pt of this bundle")


class ResumeLoader:
    """Restore a training run from ``latest.pt`` when the trainer starts (``--resume True``).

    Safe and explicit where MONAI's ``CheckpointLoader`` is generic: the file is read with
    ``torch.load(weights_only=True)``, the network must match (same keys and shapes, or the error
    names the widths to pass), ``model``/``optimizer``/``trainer`` must be present, and missing
    optional entries (scheduler, random states of an older checkpoint) are reported. The
    configured ``max_epochs`` is kept, so a finished run can be extended with a larger
    ``--epochs``. With a :class:`TrainingRecord` under ``record`` the hyperparameters are compared
    (:meth:`TrainingRecord.check`); allowed changes of ``learning_rate``, ``epochs`` and
    ``lr_schedule`` are applied to the restored optimizer and schedule
    (:func:`continue_lr_schedule`); the others (loss, patches, batch size) are in force anyway,
    since the loss and the data pipeline are built from the configuration.

    Args:
        load_path: the checkpoint, usually ``<ckpt_dir>/latest.pt``.
        load_dict: name -> object, as :func:`training_state` returns.
        map_location: as in ``torch.load`` (default: CPU, then moved by ``load_state_dict``).
        name: logger name.

    Raises:
        CheckpointError: (when the trainer starts) as :func:`load_checkpoint`, another
            architecture, or required entries missing.
        ValueError: the checkpoint is past the configured ``max_epochs``.
    """

    def __init__(
        self,
        load_path: str | os.PathLike,
        load_dict: Mapping[str, Any],
        map_location: Any = "cpu",
        name: str | None = "ResumeLoader",
    ) -> None:
        self.load_path = Path(load_path)
        self.load_dict = dict(load_dict)
        self.map_location = map_location
        self.logger = logging.getLogger(name)
        self._checked: dict[str, Any] | None = None

    def attach(self, engine: Engine) -> None:
        """Run at ``Events.STARTED`` of ``engine`` (the trainer)."""
        engine.add_event_handler(Events.STARTED, self)

    def check(self, max_epochs: int | None = None) -> dict[str, Any]:
        """Load the file and check it against ``load_dict``, changing nothing.

        The bundle calls it before the MLflow run starts (``training`` in ``train.yaml``), so a
        changed configuration, or a checkpoint past the configured epochs, stops before anything
        is logged; the checkpoint read is kept for the restore when the trainer starts.

        Args:
            max_epochs: the epochs of this run (``--epochs``), or ``None`` to leave that check to
                the restore.

        Returns:
            the checkpoint.

        Raises:
            CheckpointError: see the class; :class:`ConfigChangeError` when the hyperparameters
                differ from the checkpoint's :class:`TrainingRecord` and that is not allowed.
        """
        ckpt = load_checkpoint(self.load_path, self.map_location, missing=_RESUME_MISSING)
        missing = [k for k in REQUIRED_RESUME_KEYS if k in self.load_dict and k not in ckpt]
        if missing:
            raise CheckpointError(f"{self.load_path}: is not a resumable training checkpoint (no {missing}; "
                                  f"it holds {sorted(ckpt)[:6]}). Resume from <output_dir>/models/latest.pt, "
                                  "not from the weights-only model.pt")
        model = self.load_dict.get("model")
        if model is not None:
            why = _architecture_error(self.load_path, ckpt["model"], unwrap(model))
            if why is not None:
                raise CheckpointError(why)
        epoch = _epoch_of(ckpt.get("trainer", {}))
        record = self.load_dict.get("record")
        if isinstance(record, TrainingRecord):
            record.check(ckpt.get("record"), self.load_path, epoch=epoch)
        if max_epochs is not None and epoch is not None and epoch > int(max_epochs):
            raise ValueError(_past_epochs(self.load_path, epoch, int(max_epochs)))
        self._checked = ckpt
        return ckpt

    def __call__(self, engine: Engine) -> None:
        ckpt = self._checked if self._checked is not None else self.check()
        self._checked = None
        prior_max_epochs = engine.state.max_epochs
        absent = [k for k in self.load_dict if k not in ckpt]
        if absent:
            self.logger.warning(f"{self.load_path} has no {absent}: those start fresh, so the resumed run "
                                "will not repeat the unbroken one exactly")
        for key, obj in self.load_dict.items():
            if key in ckpt and key != "rng":
                obj.load_state_dict(ckpt[key])
        if "rng" in ckpt and "rng" in self.load_dict:
            self.load_dict["rng"].load_state_dict(ckpt["rng"])  # last: nothing above may draw after it
        if prior_max_epochs is not None and engine.state.epoch > prior_max_epochs:
            raise ValueError(_past_epochs(self.load_path, engine.state.epoch, prior_max_epochs))
        engine.state.max_epochs = prior_max_epochs
        self._apply_changes(engine)
        self.logger.info(f"resumed from {self.load_path} at epoch {engine.state.epoch}, iteration "
                         f"{engine.state.iteration}")

    def _apply_changes(self, engine: Engine) -> None:
        """Put allowed changes of the learning rate and the schedule into the restored objects.

        Args:
            engine: the trainer, restored (its epoch) and with this run's ``max_epochs``.
        """
        record = self.load_dict.get("record")
        optimizer = self.load_dict.get("optimizer")
        if not isinstance(record, TrainingRecord) or optimizer is None:
            return
        changed = set(record.changes) & {"learning_rate", "epochs", "lr_schedule"}
        if not changed:
            return
        schedule = bool(record.config.get("lr_schedule", False))
        new_lr = record.config.get("learning_rate")
        renew = "learning_rate" in changed or ("lr_schedule" in changed and not schedule)
        lrs = continue_lr_schedule(optimizer, self.load_dict.get("lr_scheduler"), engine.state.epoch,
                                   engine.state.max_epochs, learning_rate=new_lr if renew else None,
                                   schedule=schedule)
        self.logger.info(f"changed {sorted(changed)} applied: learning rate {lrs} at epoch "
                         f"{engine.state.epoch + 1}" + (f", cosine to 0 by epoch {engine.state.max_epochs}"
                                                        if schedule else ""))


def _past_epochs(path: Path, epoch: int, max_epochs: int) -> str:
    """The message for a checkpoint that has trained more epochs than this run is configured for."""
    return (f"{path} is at epoch {epoch}, past --epochs {max_epochs}; pass a larger --epochs (with "
            "--allow_config_change True) to train further")


def _epoch_of(trainer_state: Mapping[str, Any]) -> int | None:
    """The epoch of an Ignite trainer state dict (it holds ``epoch`` or ``iteration``).

    Args:
        trainer_state: ``engine.state_dict()`` as saved.

    Returns:
        the epoch, or ``None`` when the state says neither.
    """
    if trainer_state.get("epoch") is not None:
        return int(trainer_state["epoch"])
    if trainer_state.get("iteration") is not None and trainer_state.get("epoch_length"):
        return int(trainer_state["iteration"]) // int(trainer_state["epoch_length"])
    return None
