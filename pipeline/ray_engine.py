"""The Ray Data engine: batch inference and the benchmark over whole archives, on many workers.

``--engine ray`` (``python -m pipeline benchmark``, the bundle's ``inference`` with ``--engine
ray``) runs the same per-pair work as the single-process path, on a Ray Data pipeline:
``ray.data.from_items`` of the pairs' *paths* (small rows: nothing is decoded on the driver), then
``map_batches`` with an actor class that holds the network (loaded once per actor) and decodes,
fuses, writes and scores its batch. ``workers`` actors run at once (the concurrency: an
``ActorPoolStrategy`` of that size, what ``concurrency=`` asked for before Ray 2.51), each with
``cpus_per_worker`` CPUs and ``gpus_per_worker`` GPUs reserved (Ray sets the visible devices). The
output order is the input order (``preserve_order``), and the results are those of the
single-process path: the same PNG bytes and the same metric values (only the measured
``seconds`` differ). For that, each actor runs torch with the driver's thread count
(``torch.get_num_threads()``) unless ``threads_per_worker`` says otherwise: oneDNN's CPU
convolutions round the last bit of a float differently at different thread counts, which turns
an 8-bit output value by one in a few pixels per 256x256 image. ``threads_per_worker=1`` with
one CPU per actor is the faster choice on a busy machine, identical to a single process run
with ``torch.set_num_threads(1)``. Memory stays flat in the number of pairs on the driver
and on each worker: rows stream through in batches.

Ray is an optional extra (``pip install "ssim-fusion[ray]"``, i.e. ``ray[data]>=2.9``): it is
imported only here, only when the engine is chosen, and :func:`require_ray` says how to install
it when it is missing. Without ``address`` a local Ray instance is started on this machine (and
stopped afterwards); with one (``--ray-address ray://host:10001`` or ``auto``) the work goes to
that cluster. A cluster's workers must see the image files, the checkpoint and the output folder
at the same paths (a shared filesystem) and have ``ssim-fusion`` installed. A Ray instance that
is already running in the process (``ray.init`` called by the caller) is used as it is.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

__all__ = [
    "ENGINES",
    "INSTALL_HINT",
    "RayOptions",
    "require_ray",
    "ray_session",
    "ray_inference",
    "ray_benchmark_rows",
]

#: The engines ``--engine`` accepts.
ENGINES = ("local", "ray")

#: What to run when Ray is missing.
INSTALL_HINT = 'pip install "ssim-fusion[ray]" (or: pip install "ray[data]>=2.9")'


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide the Ray engine runs.

    Attributes:
        address: a Ray cluster's address (``ray://host:10001``, ``auto``); ``None`` starts a local
            instance.
        workers: actors running at once (the size of ``map_batches``' actor pool).
        cpus_per_worker: CPUs reserved per actor (``num_cpus``; also its torch thread count).
        gpus_per_worker: GPUs reserved per actor (``num_gpus``; 0 runs on the CPU).
        batch_size: pairs per ``map_batches`` batch.
        threads_per_worker: torch threads per actor; ``None``: the driver's ``torch.get_num_threads()``
            (the single-process path's, so that the fused values are bit-identical to it).
    """

    address: str | None = None
    workers: int = 2
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    batch_size: int = 8
    threads_per_worker: int | None = None

    def threads(self) -> int:
        """The torch thread count each actor sets.

        Returns:
            ``threads_per_worker``, or the driver's ``torch.get_num_threads()`` when it is ``None``.
        """
        if self.threads_per_worker is not None:
            return max(1, int(self.threads_per_worker))
        import torch

        return torch.get_num_threads()

    def __post_init__(self) -> None:
        if int(self.workers) < 1 or int(self.batch_size) < 1:
            raise ValueError(f"Ray engine: workers and batch_size must be >= 1, got {self.workers} and "
                             f"{self.batch_size}")
        if self.cpus_per_worker < 0 or self.gpus_per_worker < 0:
            raise ValueError("Ray engine: cpus_per_worker and gpus_per_worker must be >= 0")


def require_ray() -> ModuleType:
    """Import Ray (with Ray Data), or say how to install it.

    Returns:
        the ``ray`` module, with ``ray.data`` imported.

    Raises:
        ImportError: Ray or Ray Data is not installed; the message gives :data:`INSTALL_HINT`.
    """
    try:
        import ray
        import ray.data  # noqa: F401  (the engine needs Ray Data, not only Ray core)
    except ImportError as err:
        raise ImportError(f"the Ray engine needs Ray Data, which is not installed ({err}). "
                          f"Install it: {INSTALL_HINT}; or use --engine local") from err
    return ray


def _code_root() -> str:
    """The folder this ``pipeline`` package is imported from, for local workers' ``PYTHONPATH``."""
    return str(Path(__file__).resolve().parents[1])


@contextlib.contextmanager
def ray_session(options: RayOptions) -> Iterator[ModuleType]:
    """Connect to Ray for one run: the running instance, the cluster at ``address``, or a new local one.

    A local instance gets this checkout's ``pipeline`` on its workers' ``PYTHONPATH`` (so they run
    the same code as the driver) and is shut down at the end; an instance this call did not start
    is left running.

    Args:
        options: the engine options (``address``).

    Yields:
        the ``ray`` module, initialised, with ordered Ray Data execution.

    Raises:
        ImportError: Ray is not installed (see :func:`require_ray`).
    """
    ray = require_ray()
    started = False
    if not ray.is_initialized():
        if options.address:
            ray.init(address=options.address, log_to_driver=False)
        else:
            path = os.pathsep.join(p for p in (_code_root(), os.environ.get("PYTHONPATH", "")) if p)
            ray.init(include_dashboard=False, log_to_driver=False,
                     runtime_env={"env_vars": {"PYTHONPATH": path}})
        started = True
    context = ray.data.DataContext.get_current()
    saved = context.execution_options.preserve_order, context.enable_progress_bars
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False
    try:
        yield ray
    finally:
        context.execution_options.preserve_order, context.enable_progress_bars = saved
        if started:
            ray.shutdown()


def _map_kwargs(ray: ModuleType, options: RayOptions) -> dict[str, Any]:
    """``map_batches`` arguments of an actor pool: its size (the concurrency) and each actor's resources."""
    return {"batch_size": int(options.batch_size),
            "compute": ray.data.ActorPoolStrategy(size=int(options.workers)),
            "num_cpus": float(options.cpus_per_worker), "num_gpus": float(options.gpus_per_worker)}


def _check_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Decode each pair of a batch (and drop the pixels): the message of the first failure, or ''."""
    from pipeline.io import read_pair

    errors = []
    for pa, pb in zip(batch["image_a"], batch["image_b"]):
        try:
            read_pair(str(pa), str(pb))
            errors.append("")
        except ValueError as err:
            errors.append(f"{type(err).__name__}\t{err}")
    return {"index": batch["index"], "error": np.array(errors, dtype=object)}


class _InferenceActor:
    """A Ray actor holding one :class:`pipeline.baselines.cnn.CNNFuser`: decode, fuse, write a batch."""

    def __init__(self, ckpt_path: str, output_dir: str, device: str | None, widths: Sequence[int] | None,
                 amp: bool, batch_size: int | None, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)

        from pipeline.baselines.cnn import CNNFuser
        from pipeline.checkpoint import load_fusion_network

        if device is None:
            device = "cuda:0" if torch.cuda.is_available() else "cpu"
        self.fuser = CNNFuser(load_fusion_network(ckpt_path, device=device, widths=widths), amp=amp,
                              batch_size=batch_size)
        self.output_dir = Path(output_dir)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from pipeline.io import read_pair, write_png

        decoded = [read_pair(str(pa), str(pb)) for pa, pb in zip(batch["image_a"], batch["image_b"])]
        fused = self.fuser.fuse_many([(a.astype(np.float64) / 255.0, b.astype(np.float64) / 255.0)
                                      for a, b in decoded])
        written = []
        for name, image in zip(batch["name"], fused):
            target = self.output_dir / f"{name}.png"
            write_png(target, image)
            written.append(str(target))
        return {"index": batch["index"], "written": np.array(written, dtype=object)}


def _raise_first_error(ray: ModuleType, ds: Any, options: RayOptions) -> None:
    """Decode every pair on the workers first; raise the first failure (in pair order) as locally.

    Args:
        ray: the initialised ``ray`` module.
        ds: the dataset of pair rows.
        options: the engine options (the CPUs each check task takes).

    Raises:
        pipeline.io.ImageReadError: the first pair that cannot be decoded.
    """
    from pipeline.io import ImageReadError

    checked = ds.map_batches(_check_batch, batch_size=max(16, int(options.batch_size)),
                             num_cpus=float(options.cpus_per_worker) or 1.0)
    for row in checked.iter_rows():
        if row["error"]:
            kind, _, message = str(row["error"]).partition("\t")
            raise (ImageReadError if kind == "ImageReadError" else ValueError)(message)


def ray_inference(
    pairs: Sequence[tuple[str, Path, Path]],
    ckpt_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    device: str | None = None,
    widths: Sequence[int] | None = None,
    amp: bool = False,
    batch_size: int | None = None,
    options: RayOptions | None = None,
) -> list[Path]:
    """Fuse named pairs on Ray Data into ``output_dir/<name>.png``, as ``run_inference`` does.

    Every pair is decoded (on the workers) and checked before any PNG is written, as on the
    single-process path.

    Args:
        pairs: ``(name, image_a, image_b)`` as :func:`pipeline.pairing.find_pairs` gives them.
        ckpt_path: the trained weights (checked on the driver first).
        output_dir: where the PNGs go.
        device: torch device of each actor (default CUDA when it has a GPU).
        widths: expected network widths.
        amp: float16 autocast on CUDA.
        batch_size: pairs per forward pass inside an actor (as ``CNNFuser``).
        options: the engine options (default :class:`RayOptions`).

    Returns:
        the written files, in pair order.

    Raises:
        pipeline.io.ImageReadError: a pair that cannot be decoded (nothing written).
        pipeline.io.CheckpointError: unusable weights.
        ImportError: Ray is not installed.
    """
    from pipeline.checkpoint import load_fusion_network

    options = options or RayOptions()
    load_fusion_network(ckpt_path, device="cpu", widths=widths)  # a bad checkpoint fails here, once
    items = [{"index": i, "name": name, "image_a": str(Path(pa).resolve()),
              "image_b": str(Path(pb).resolve())} for i, (name, pa, pb) in enumerate(pairs)]
    with ray_session(options) as ray:
        ds = ray.data.from_items(items)
        _raise_first_error(ray, ds, options)
        fused = ds.map_batches(
            _InferenceActor, fn_constructor_kwargs={
                "ckpt_path": str(Path(ckpt_path).resolve()), "output_dir": str(Path(output_dir).resolve()),
                "device": device, "widths": widths, "amp": amp, "batch_size": batch_size,
                "threads": options.threads()},
            **_map_kwargs(ray, options))
        written = [Path(output_dir) / f"{items[int(row['index'])]['name']}.png" for row in fused.iter_rows()]
    return written


class _BenchmarkActor:
    """A Ray actor that fuses, writes and scores its batch of datalist entries with every method."""

    def __init__(self, task: dict[str, Any], threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        self.task = task

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from pipeline.scoring import score_entry

        rows = []
        for blob in batch["entry"]:
            entry = json.loads(str(blob))
            found, _ = score_entry(entry, **self.task)
            rows.append(json.dumps(found))
        return {"index": batch["index"], "rows": np.array(rows, dtype=object)}


def ray_benchmark_rows(entries: Sequence[dict[str, Any]], task: dict[str, Any],
                       options: RayOptions | None = None) -> Iterator[tuple[int, list[dict[str, Any]]]]:
    """Score datalist entries on Ray Data, yielding each entry's result rows in entry order.

    Args:
        entries: datalist entries (absolute image paths, as :func:`pipeline.datalist.load_datalist` gives).
        task: the keyword arguments of :func:`pipeline.scoring.score_entry` other than the entry
            (methods, their parameters, output folder, metrics...); JSON-serialisable values.
        options: the engine options.

    Yields:
        ``(index, rows)``: the entry's position and its rows, one per method, as the local path makes them.

    Raises:
        ImportError: Ray is not installed.
    """
    options = options or RayOptions()
    items = [{"index": i, "entry": json.dumps(e)} for i, e in enumerate(entries)]
    with ray_session(options) as ray:
        ds = ray.data.from_items(items).map_batches(
            _BenchmarkActor, fn_constructor_kwargs={"task": task, "threads": options.threads()},
            **_map_kwargs(ray, options))
        for row in ds.iter_rows():
            yield int(row["index"]), json.loads(str(row["rows"]))
