"""Multi-process training glue for the bundle's ``configs/multi_gpu_train.yaml`` (PyTorch DDP).

Launched the model-zoo way, one process per GPU (or per CPU process group member)::

    torchrun --nproc_per_node=N -m monai.bundle run training --config_file \\
        "['bundles/ssim_fusion/configs/train.yaml','bundles/ssim_fusion/configs/multi_gpu_train.yaml']"

- :func:`local_device` is ``cuda:LOCAL_RANK`` when CUDA is available, else ``cpu``;
  :func:`backend_for` picks NCCL for CUDA and gloo for the CPU.
- :func:`wrap_ddp` wraps the network in ``DistributedDataParallel`` after turning its batch norms
  into synchronised ones (:func:`convert_batch_norm`): torch's ``SyncBatchNorm`` on GPUs, and
  :class:`DistributedBatchNorm2d` on the CPU, where ``SyncBatchNorm`` does not run. With
  synchronised statistics, N processes with batch ``B`` each compute the same gradient as one
  process with batch ``N * B`` of the same samples.
- :func:`handlers_for_rank` keeps on ranks other than 0 only the handlers that take part in
  collective work (learning-rate schedule, validation); console, figure, checkpoint and MLflow
  handlers run on rank 0 only.

Images are float in [0, 1]; nothing here looks at them.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "is_distributed",
    "get_rank",
    "get_world_size",
    "is_main_process",
    "local_device",
    "backend_for",
    "init_process_group",
    "destroy_process_group",
    "DistributedBatchNorm2d",
    "convert_batch_norm",
    "wrap_ddp",
    "unwrap",
    "handlers_for_rank",
    "rank0_only",
    "quiet_other_ranks",
]

logger = logging.getLogger(__name__)


def is_distributed() -> bool:
    """Whether a default process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """This process's rank in the default group (0 without one)."""
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    """Number of processes in the default group (1 without one)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """True on rank 0 and in a run without a process group: the process that writes files and logs."""
    return get_rank() == 0


def local_device() -> str:
    """``cuda:LOCAL_RANK`` when CUDA is available (``LOCAL_RANK`` set by torchrun, default 0), else ``cpu``."""
    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    return "cpu"


def backend_for(device: str | torch.device) -> str:
    """The process group backend for a device: ``nccl`` for CUDA, ``gloo`` otherwise."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def init_process_group(device: str | torch.device, timeout_s: float = 600.0) -> bool:
    """Join the default process group that torchrun describes (``env://``), once.

    Sets the CUDA device first on GPUs, so that NCCL binds each rank to its own card.

    Args:
        device: this rank's device (:func:`local_device`).
        timeout_s: how long a collective may wait for the other ranks before failing.

    Returns:
        True when this call created the group, False when one existed.

    Raises:
        RuntimeError: the process was not started by torchrun (no ``RANK``/``WORLD_SIZE``).
    """
    if is_distributed():
        return False
    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(
            f"multi_gpu_train.yaml needs a distributed launcher, but {', '.join(missing)} is not set. "
            "Start it with: torchrun --nproc_per_node=N -m monai.bundle run training --config_file "
            "\"['.../train.yaml','.../multi_gpu_train.yaml']\" (or use train.yaml alone for one process)")
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group(backend=backend_for(dev), timeout=datetime.timedelta(seconds=timeout_s))
    logger.info(f"rank {get_rank()} of {get_world_size()} on {dev} ({backend_for(dev)})")
    return True


def destroy_process_group() -> None:
    """Leave the default process group, if there is one (the ``finalize`` step).

    All ranks wait for each other first: rank 0 finishes later (checkpoint, MLflow), and a gloo
    rank that tears its group down and exits while a peer is still connected can abort
    (``terminate called without an active exception``, seen on a 2-core CI-like machine).
    """
    if is_distributed():
        dist.barrier()
        dist.destroy_process_group()


class DistributedBatchNorm2d(nn.BatchNorm2d):
    """A ``BatchNorm2d`` whose training statistics are taken over the batches of all ranks, on any device.

    torch's ``SyncBatchNorm`` runs on GPUs only; this is the CPU (gloo) equivalent, built on the
    differentiable ``torch.distributed.nn.functional.all_reduce``. Mean and variance are computed
    in two passes (sum, then sum of squared deviations) as the native kernel does, so the result
    equals one process with the concatenated batch up to float32 summation order. Without a
    process group, with one process, or in eval mode it is plain ``BatchNorm2d``. Parameter and
    buffer names are those of ``BatchNorm2d``: checkpoints are interchangeable.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 (torch's name)
        if not (self.training and is_distributed() and get_world_size() > 1):
            return super().forward(input)
        from torch.distributed.nn.functional import all_reduce

        self._check_input_dim(input)
        dims = (0, 2, 3)
        count = torch.tensor([input.numel() / input.shape[1]], dtype=input.dtype, device=input.device)
        packed = all_reduce(torch.cat([input.sum(dims), count]))
        n = packed[-1].detach()
        mean = packed[:-1] / n
        centred = input - mean[None, :, None, None]
        var = all_reduce((centred * centred).sum(dims)) / n
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * (n / (n - 1).clamp_min(1.0))
                self.running_mean.mul_(1 - momentum).add_(momentum * mean.detach())
                self.running_var.mul_(1 - momentum).add_(momentum * unbiased.detach())
        out = centred * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            out = out * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return out


def convert_batch_norm(module: nn.Module, device: str | torch.device) -> nn.Module:
    """Replace every ``BatchNorm2d`` with a synchronised one for ``device``, weights and buffers kept.

    Args:
        module: the network (modified in place where possible).
        device: ``cuda`` devices get ``torch.nn.SyncBatchNorm``, others :class:`DistributedBatchNorm2d`.

    Returns:
        the converted module.
    """
    if torch.device(device).type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, DistributedBatchNorm2d):
        new = DistributedBatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                                     module.track_running_stats)
        new.load_state_dict(module.state_dict())
        new.train(module.training)
        return new.to(next(iter(module.state_dict().values())).device)
    for name, child in module.named_children():
        setattr(module, name, convert_batch_norm(child, device))
    return module


def wrap_ddp(network: nn.Module, device: str | torch.device, sync_batch_norm: bool = True) -> nn.Module:
    """The network on ``device``, wrapped in ``DistributedDataParallel`` when a group of > 1 exists.

    Args:
        network: the bare network (``network_def``).
        device: this rank's device.
        sync_batch_norm: synchronise batch-norm statistics over the ranks (:func:`convert_batch_norm`).

    Returns:
        ``DistributedDataParallel`` (parameters broadcast from rank 0), or the network itself
        without a process group.
    """
    dev = torch.device(device)
    network = network.to(dev)
    if not is_distributed():
        return network
    if sync_batch_norm:
        network = convert_batch_norm(network, dev)
    ids = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(network, device_ids=ids)


def unwrap(network: nn.Module) -> nn.Module:
    """The module inside ``DataParallel``/``DistributedDataParallel`` (the network itself otherwise)."""
    if isinstance(network, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        return network.module
    return network


def _every_rank_types() -> tuple[type, ...]:
    from monai.handlers import EarlyStopHandler, LrScheduleHandler, ValidationHandler

    return (LrScheduleHandler, ValidationHandler, EarlyStopHandler)


def handlers_for_rank(handlers: Sequence[Any] | None, every_rank: tuple[type, ...] | None = None) -> list[Any]:
    """Trainer handlers for this rank: all on rank 0; elsewhere only those collective work needs.

    The learning-rate schedule must step on every rank, and validation must run on every rank
    (its metrics are all-reduced); logging, figures, checkpoints and MLflow are rank 0's job.

    Args:
        handlers: the handler list of ``train#handlers``.
        every_rank: handler types kept on every rank (default: LR schedule, validation, early stop).

    Returns:
        the handlers to attach on this rank.
    """
    handlers = list(handlers or [])
    if is_main_process():
        return handlers
    keep = every_rank if every_rank is not None else _every_rank_types()
    return [h for h in handlers if isinstance(h, keep)]


def rank0_only(handlers: Sequence[Any] | None) -> list[Any] | None:
    """``handlers`` on rank 0, ``None`` on the others (the evaluator's console/checkpoint/figure handlers)."""
    return list(handlers or []) if is_main_process() else None


def quiet_other_ranks(*engines: Any, level: int = logging.WARNING) -> None:
    """Lower the console output of ranks other than 0 to ``level`` (one log, not N copies).

    Sets the root logger (which loggers without a level of their own follow) and the given engines'.
    """
    if is_main_process():
        return
    logging.getLogger().setLevel(level)
    for engine in engines:
        engine.logger.setLevel(level)
