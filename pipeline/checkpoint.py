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
    return state


# ---------------------------------------------------------------- loading


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The network weights in a checkpoint: a plain state dict (``model.pt``) or ``{"model": ...}``
    (the resumable ``latest.pt``).

    Args:
        path: the checkpoint file.

    Returns:
        parameter name -> tensor, on the CPU.

    Raises:
        CheckpointError: missing, unreadable, or holding no network weights.
    """
    obj = load_checkpoint(path, "cpu", missing=(
        "no such checkpoint. Train the bundle (python -m monai.bundle run training --config_file "
        "bundles/ssim_fusion/configs/train.yaml) and copy its best models/model.pt there, "
        "or pass --ckpt_path"))
    if "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    if not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: holds no network state dict. "
                              "Use the bundle's models/model.pt or a latest.pt from training")
    return obj


def load_fusion_network(
    checkpoint: str | os.PathLike,
    device: str | torch.device | None = None,
    widths: Sequence[int] | None = None,
    **net_kwargs: Any,
) -> FusionNet:
    """A FusionNet with the checkpoint's weights, in eval mode, on ``device``.

    Args:
        checkpoint: ``model.pt`` (state dict) or a training checkpoint with a ``model`` entry.
        device: target device; default CUDA when available, else CPU.
        widths: the widths the checkpoint must have; ``None`` reads them from the checkpoint.
        net_kwargs: further :class:`FusionNet` arguments.

    Returns:
        the network.

    Raises:
        CheckpointError: missing or unreadable file, or weights of another architecture (the
            message says what differs and how to fix it).
    """
    state = load_state_dict(checkpoint)
    try:
        found = widths_from_state_dict(state)
    except ValueError as err:
        raise CheckpointError(f"{checkpoint}: is a checkpoint of another architecture, {err}. "
                              "Use a checkpoint trained by the ssim_fusion bundle") from err
    if widths is not None and tuple(int(w) for w in widths) != found:
        raise CheckpointError(f"{checkpoint}: was trained with widths {list(found)} but widths "
                              f"{list(widths)} were asked for. Pass --widths \"{list(found)}\" "
                              "(or leave widths unset)")
    net = FusionNet(widths=found, **net_kwargs)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{checkpoint}: does not fit FusionNet(widths={list(found)}): {err}. "
                              "Use a checkpoint trained by the ssim_fusion bundle") from err
    dev = torch.device(device) if device is not None else default_device()
    return net.to(dev).eval()


def default_device() -> torch.device:
    return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")



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
    ``--epochs``.

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

    def attach(self, engine: Engine) -> None:
        """Run at ``Events.STARTED`` of ``engine`` (the trainer)."""
        engine.add_event_handler(Events.STARTED, self)

    def check(self) -> dict[str, Any]:
        """Load the file and check it against ``load_dict``, changing nothing.

        Returns:
            the checkpoint.

        Raises:
            CheckpointError: see the class.
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
        return ckpt

    def __call__(self, engine: Engine) -> None:
        ckpt = self.check()
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
            raise ValueError(f"{self.load_path} is at epoch {engine.state.epoch}, past --epochs "
                             f"{prior_max_epochs}; pass a larger --epochs to train further")
        engine.state.max_epochs = prior_max_epochs
        self.logger.info(f"resumed from {self.load_path} at epoch {engine.state.epoch}, iteration "
                         f"{engine.state.iteration}")
