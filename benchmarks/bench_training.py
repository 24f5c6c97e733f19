"""Training throughput of FusionNet + SSIM-alpha (pairs/s); the MONAI/Ignite loop's overhead over a bare loop.

Usage::

    python benchmarks/bench_training.py [--device cpu|cuda|all] [--batch-size 16] [--size 256]
        [--iterations 4] [--repeat 2] [--threads 2] [--attribution] [--json]

One training step is forward + SSIM-alpha loss + backward + Adam step, on ``--batch-size``
pairs of ``--size`` x ``--size`` (the network and loss of the bundle, built from
``bundles/ssim_fusion/configs/train.yaml`` so that the hyperparameters are the bundle's). Every
variant is timed as the best of ``--repeat`` rounds of ``--iterations`` steps after one warm-up
round, the variants interleaved round by round (other processes' load hits each alike):

- ``bare_tensors``: a plain PyTorch loop over pre-collated in-memory batches (compute only).
- ``bare_loader``: the same loop over the bundle's own ``DataLoader`` (CacheDataset of the same
  decoded pairs, the bundle's random crop/flip transforms, collation).
- ``trainer_bundle``: the bundle's ``SupervisedTrainer`` exactly as ``train.yaml`` configures it
  (its handlers, ``decollate``, the per-epoch ``latest.pt`` checkpoint), on that ``DataLoader``;
  one epoch per round; validation is left out (``val_interval`` beyond the run) since it is not
  training throughput.
- ``trainer_minimal``: a ``SupervisedTrainer`` on the same objects, no handlers, no decollation.
- ``trainer_bundle_mlflow``: ``trainer_bundle`` with ``--tracking mlflow`` as the bundle CLI adds it
  (MONAI's ``MLFlowHandler``, a SQLite store in the temporary folder) and the bundle's batching of
  the per-iteration metrics (``tracking_flush_every``); with ``--attribution`` also
  ``trainer_bundle_mlflow_unbatched`` (a request per metric call, as before the batching).
- with ``--attribution``: ``trainer_no_decollate`` (the bundle's handlers, ``decollate=False``)
  and ``trainer_no_terms`` (the bundle without the per-iteration SSIM-alpha terms handler), and
  Ignite's ``HandlersTimeProfiler`` on one extra bundle epoch: seconds per handler and event.
- ``bare_channels_last`` (network and input channels-last) and mixed precision: ``bare_amp_bf16``
  on the CPU (bfloat16 autocast), ``bare_amp_fp16`` (with a GradScaler) and ``bare_amp_bf16``
  on a GPU. The loss computes in float32 under autocast either way.

The overhead is ``trainer_bundle / bare_loader - 1`` in time per step (target: at most 10%);
``trainer_bundle / bare_tensors`` adds the data path. Data: real atlas CT-MRI pairs
(``harvard/CT-MRI`` of the shared data, $FUSION_SHARED_DATA or ``../shared/data``) when
``--size`` is 256, else synthetic phantoms; written to a temporary data set by
``data_prep.datalist.write_dataset`` so that the bundle's own loading transforms read them (the
CacheDataset keeps them in memory). Images are float in [0, 1].
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FUSION_SHARED_DATA", REPO.parent / "shared" / "data"))
TRAIN_CONFIG = REPO / "bundles" / "ssim_fusion" / "configs" / "train.yaml"
OVERHEAD_TARGET = 0.10

__all__ = ["main", "write_data", "build_bundle", "BareLoop"]


def write_data(out: Path, count: int, size: int) -> tuple[Path, str]:
    """A data set of ``count`` training pairs (plus one validation and one test pair) under ``out``.

    Returns:
        the datalist path and a description of the images.
    """
    import numpy as np

    from data_prep.datalist import SlicePair, SplitSpec, write_dataset
    from pipeline.io import read_image

    folder = SHARED_DATA / "harvard" / "CT-MRI"
    names = sorted(p.name for p in (folder / "CT").glob("*.png")) if (folder / "CT").is_dir() else []
    images: list[tuple[Any, Any]] = []
    if size == 256 and names:
        for i in range(count + 2):
            n = names[i % len(names)]
            images.append((read_image(folder / "CT" / n, mode="gray"),
                           read_image(folder / "MRI" / n, mode="gray")))
        if images[0][0].shape != (size, size):
            images = []
    description = f"atlas CT-MRI pairs, {size}x{size}"
    if not images:
        rng = np.random.default_rng(0)
        yy, xx = np.mgrid[:size, :size] / max(size - 1, 1)
        head = ((xx - 0.5) ** 2 + (yy - 0.5) ** 2 < 0.16)
        for _ in range(count + 2):
            a = head * (120 + 80 * np.sin(9 * xx + rng.random())) + rng.normal(0, 4, (size, size))
            b = head * (60 + 90 * np.cos(7 * yy + rng.random())) + rng.normal(0, 4, (size, size))
            images.append((np.clip(a, 0, 255).astype(np.uint8), np.clip(b, 0, 255).astype(np.uint8)))
        description = f"synthetic phantoms, {size}x{size}"
    cases = ["train"] * count + ["val", "test"]
    pairs = [SlicePair(a, b, "CT", "MRI", case, i + 1) for i, ((a, b), case) in enumerate(zip(images, cases))]
    split = SplitSpec(cases={"training": ["train"], "validation": ["val"], "test": ["test"]})
    write_dataset(pairs, out, split)
    return out / "datalist.json", description


def build_bundle(datalist: Path, output_dir: Path, args: argparse.Namespace, device: str, amp: bool,
                 mlflow: bool = False) -> Any:
    """The bundle's training config, parsed with the benchmark's overrides (a MONAI ConfigParser);
    ``mlflow``: patched as ``--tracking mlflow`` patches it (store: ``output_dir/mlruns.db``)."""
    from monai.bundle import ConfigParser, ConfigWorkflow
    from monai.bundle.utils import DEFAULT_MLFLOW_SETTINGS

    parser = ConfigParser()
    parser.read_config(str(TRAIN_CONFIG))
    parser.update({
        "datalist": str(datalist), "output_dir": str(output_dir), "epochs": 1,
        "batch_size": args.batch_size, "patch_size": args.size, "device": device, "amp": amp,
        "val_interval": 10 ** 9, "num_workers": 0,
    })
    if mlflow:
        parser.update({"tracking_uri": f"sqlite:///{output_dir}/mlruns.db",
                       "experiment_name": "bench_training"})
        ConfigWorkflow.patch_bundle_tracking(parser, DEFAULT_MLFLOW_SETTINGS)
    return parser


class BareLoop:
    """A plain PyTorch training step: forward, loss, backward, optimiser step.

    Args:
        network: the model (trained in place).
        loss: the loss, called as ``loss(pred, image)``.
        optimizer: its optimiser.
        device: where batches go.
        amp_dtype: autocast dtype, or ``None`` for float32.
        channels_last: feed channels-last inputs (the network should be channels-last too).
    """

    def __init__(self, network: Any, loss: Any, optimizer: Any, device: Any, amp_dtype: Any = None,
                 channels_last: bool = False) -> None:
        import torch

        self.network, self.loss, self.optimizer, self.device = network, loss, optimizer, device
        self.amp_dtype, self.channels_last = amp_dtype, channels_last
        fp16_cuda = amp_dtype is torch.float16 and device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda") if fp16_cuda else None

    def step(self, image: Any) -> float:
        """One step on a ``(N, 2, H, W)`` batch; returns the loss."""
        import torch

        x = image.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        self.network.train()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None):
            pred = self.network(x)
            loss = self.loss(pred, x)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        return loss.detach()


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _quiet() -> contextlib.AbstractContextManager:
    """Swallow the progress bar and console lines the bundle's handlers write during timing."""
    stack = contextlib.ExitStack()
    stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    return stack


def bench_device(device_name: str, args: argparse.Namespace, datalist: Path, tmp: Path) -> dict[str, Any]:
    """Seconds per step of every variant on one device, and the handler profile."""
    import copy

    import torch
    from monai.engines import SupervisedTrainer
    from monai.inferers import SimpleInferer
    from monai.utils import set_determinism

    from pipeline.training import prepare_self_target

    device = torch.device(device_name)
    bundle_amp = device.type == "cuda"  # the bundle's default: AMP on GPU only
    parser = build_bundle(datalist, tmp / f"run_{device.type}", args, device_name, bundle_amp)
    set_determinism(seed=0)
    network = parser.get_parsed_content("network")
    optimizer = parser.get_parsed_content("optimizer")
    loss = parser.get_parsed_content("loss")
    loader = parser.get_parsed_content("train#dataloader")
    trainer = parser.get_parsed_content("train#trainer")
    parser.get_parsed_content("train#checkpoint_latest").attach(trainer)  # as the bundle's `training` does
    batches = [b["image"].as_tensor() if hasattr(b["image"], "as_tensor") else b["image"] for b in loader]
    iterations = len(batches)

    def bare(loop: BareLoop, source: Callable[[], Any]) -> Callable[[], None]:
        def run() -> None:
            last = None
            for image in source():
                last = loop.step(image)
            float(last)  # wait for the device
        return run

    def trainer_run(engine: Any) -> Callable[[], None]:
        def run() -> None:
            with _quiet():
                engine.run()
        return run

    def minimal(decollate: bool, handlers: list) -> Any:
        return SupervisedTrainer(
            device=device, max_epochs=1, train_data_loader=loader, network=network, optimizer=optimizer,
            loss_function=loss, inferer=SimpleInferer(), prepare_batch=prepare_self_target,
            amp=bundle_amp, decollate=decollate, train_handlers=handlers,
        )

    base = BareLoop(network, loss, optimizer, device, torch.float16 if bundle_amp else None)
    jobs: dict[str, Callable[[], None]] = {
        "bare_tensors": bare(base, lambda: batches),
        "bare_loader": bare(base, lambda: (b["image"] for b in loader)),
        "trainer_bundle": trainer_run(trainer),
        "trainer_minimal": trainer_run(minimal(False, [])),
    }
    from pipeline.training import buffer_iteration_metrics

    for name, batched in (("trainer_bundle_mlflow", True), ("trainer_bundle_mlflow_unbatched", False)):
        if batched or args.attribution:
            tracked = build_bundle(datalist, tmp / f"{name}_{device.type}", args, device_name, bundle_amp,
                                   mlflow=True)
            engine = tracked.get_parsed_content("train#trainer")
            tracked.get_parsed_content("train#checkpoint_latest").attach(engine)
            if batched:
                buffer_iteration_metrics(engine, tracked.get_parsed_content("tracking_flush_every"))
            jobs[name] = trainer_run(engine)
    if args.attribution:
        from pipeline.handlers import SSIMAlphaTermsHandler

        handlers = parser.get_parsed_content("train#handlers")
        jobs["trainer_no_decollate"] = trainer_run(minimal(False, handlers))
        jobs["trainer_no_terms"] = trainer_run(minimal(True, [h for h in handlers
                                                              if not isinstance(h, SSIMAlphaTermsHandler)]))
    # precision and layout variants on copies of the network (the shared one keeps its layout)
    cl_net = copy.deepcopy(network).to(memory_format=torch.channels_last)
    cl_opt = torch.optim.Adam(cl_net.parameters(), lr=optimizer.param_groups[0]["lr"])
    jobs["bare_channels_last"] = bare(BareLoop(cl_net, loss, cl_opt, device, None, channels_last=True),
                                      lambda: batches)
    amp_dtypes = {"bf16": torch.bfloat16} if device.type == "cpu" else {"fp32": None, "fp16": torch.float16,
                                                                        "bf16": torch.bfloat16}
    for tag, dtype in amp_dtypes.items():
        if tag == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            continue
        net_copy = copy.deepcopy(network)
        opt_copy = torch.optim.Adam(net_copy.parameters(), lr=optimizer.param_groups[0]["lr"])
        jobs[f"bare_{'amp_' if dtype is not None else ''}{tag}"] = bare(
            BareLoop(net_copy, loss, opt_copy, device, dtype), lambda: batches)

    best = {name: float("inf") for name in jobs}
    for round_ in range(args.repeat + 1):  # round 0 warms up (allocations, oneDNN primitives)
        for name, job in jobs.items():
            _sync(device)
            start = time.perf_counter()
            job()
            _sync(device)
            if round_ > 0:
                best[name] = min(best[name], time.perf_counter() - start)
    per_step = {name: seconds / iterations for name, seconds in best.items()}
    profile = _handler_profile(trainer) if args.attribution else {}
    return {"device": str(device), "bundle_amp": bundle_amp, "iterations": iterations,
            "s_per_step": per_step, "handler_profile": profile}


def _handler_profile(trainer: Any) -> dict[str, float]:
    """Seconds spent per handler and event in one bundle epoch (Ignite's HandlersTimeProfiler)."""
    from ignite.handlers import HandlersTimeProfiler

    profiler = HandlersTimeProfiler()
    profiler.attach(trainer)
    with _quiet():
        trainer.run()
    out: dict[str, float] = {}
    for row in profiler.get_results():
        name, event, total = str(row[0]), str(row[1]), row[2]
        try:
            out[f"{name} [{event}]"] = float(total)
        except (TypeError, ValueError):
            continue
    return out


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(headers, widths)), "  ".join("-" * w for w in widths)]
    return "\n".join(lines + ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="all", help="cpu, cuda[:i], or all (cpu, plus cuda when present)")
    parser.add_argument("--batch-size", type=int, default=16,
                        help="pairs per step (default 16, the bundle's)")
    parser.add_argument("--size", type=int, default=256, help="image and patch side (default 256)")
    parser.add_argument("--iterations", type=int, default=4, help="steps per timed round (default 4)")
    parser.add_argument("--repeat", type=int, default=2, help="timed rounds, best kept (default 2)")
    parser.add_argument("--threads", type=int, default=None, help="intra-op CPU threads (default torch's)")
    parser.add_argument("--attribution", action="store_true",
                        help="also time trainer variants without decollation / the terms handler, and "
                             "profile the bundle's handlers")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.threads is not None:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[var] = str(args.threads)

    import torch

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    logging.getLogger("ignite").setLevel(logging.WARNING)
    devices = [args.device]
    if args.device == "all":
        devices = ["cpu"] + (["cuda:0"] if torch.cuda.is_available() else [])
    load_start = os.getloadavg()
    started = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        datalist, data = write_data(Path(tmp) / "data", args.iterations * args.batch_size, args.size)
        for dev in devices:
            results.append(bench_device(dev, args, datalist, Path(tmp)))
    report = {
        "data": data, "batch_size": args.batch_size, "size": args.size, "repeat": args.repeat,
        "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
        "loadavg_start": load_start, "loadavg_end": os.getloadavg(), "wall_s": time.perf_counter() - started,
        "devices": results,
    }
    for r in results:
        s = r["s_per_step"]
        r["overhead_vs_bare_loader"] = s["trainer_bundle"] / s["bare_loader"] - 1
        r["overhead_vs_bare_tensors"] = s["trainer_bundle"] / s["bare_tensors"] - 1
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        _print(report)
    return 0


def _print(report: dict[str, Any]) -> None:
    print(f"# training benchmark: batch {report['batch_size']} x {report['size']}x{report['size']}, "
          f"{report['threads']} CPU threads of {report['cpu_count']}, torch {report['torch']}")
    print(f"# data: {report['data']}; best of {report['repeat']} interleaved rounds; load average "
          f"{report['loadavg_start'][0]:.2f} at start, {report['loadavg_end'][0]:.2f} at end; "
          f"{report['wall_s']:.0f} s")
    for r in report["devices"]:
        s = r["s_per_step"]
        ref = s["bare_loader"]
        rows = [[name, f"{report['batch_size'] / sec:.2f}", f"{sec * 1000:.0f}", f"{sec / ref:.3f}"]
                for name, sec in s.items()]
        print(f"\n## {r['device']} ({r['iterations']} steps per round; the bundle's AMP: {r['bundle_amp']})")
        print(_table(["variant", "pairs/s", "ms/step", "x bare_loader"], rows))
        flag = "MET" if r["overhead_vs_bare_loader"] <= OVERHEAD_TARGET else "MISSED"
        print(f"MONAI/Ignite overhead: {r['overhead_vs_bare_loader']:+.1%} vs bare_loader "
              f"(target <= {OVERHEAD_TARGET:.0%}: {flag}), "
              f"{r['overhead_vs_bare_tensors']:+.1%} vs bare_tensors")
        mlflow_rows = [n for n in ("trainer_bundle_mlflow", "trainer_bundle_mlflow_unbatched") if n in s]
        if mlflow_rows:
            shares = ", ".join(f"{n} {s[n] / s['trainer_bundle'] - 1:+.1%}" for n in mlflow_rows)
            print(f"MLflow tracking: {shares} vs trainer_bundle")
        if r["handler_profile"]:
            prof = sorted(r["handler_profile"].items(), key=lambda kv: -kv[1])
            print(_table(["handler [event] (one bundle epoch)", "seconds"],
                         [[k, f"{v:.3f}"] for k, v in prof[:12]]))


if __name__ == "__main__":
    sys.exit(main())
