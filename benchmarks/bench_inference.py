"""Inference speed of the fusion network (variants, batch 1 and 32) against a matmul peak and the baselines.

Usage::

    python benchmarks/bench_inference.py [--device cpu] [--threads 1,2] [--repeat 3]
        [--widths 16,32,32,16 16 32] [--batch-sizes 1,32] [--size 256] [--checkpoint model.pt]
        [--no-compile] [--no-baselines] [--json] [--check]

What one run measures, all interleaved (round-robin, so a burst of load from other processes
hits every variant alike) and kept as the best of ``--repeat`` timed rounds after a warm-up:

- pairs/s of the network at ``--size`` x ``--size`` for each batch size and inference variant:
  ``eager`` (``net.eval()`` called with autograd on, as a script that forgets ``no_grad`` runs
  it), ``inference_mode``, ``channels_last`` (weights and input channels-last), ``folded``
  (batch norm folded into the convolutions), ``folded_cl`` (both: the production form,
  :func:`pipeline.networks.inference_network`), ``jit_freeze`` / ``jit_freeze_cl``
  (``torch.jit.trace`` + ``torch.jit.freeze`` of the folded net), ``onednn_graph`` (the same with
  oneDNN Graph fusion, CPU only), ``compile`` (``torch.compile`` of ``folded_cl``; its compile
  time is reported, ``--no-compile`` skips it) and ``cnn_fuser[bs=k]`` (the production
  :class:`pipeline.baselines.cnn.CNNFuser`, numpy in and out, ``k`` pairs per forward pass). Each
  variant's largest difference from ``eager`` is printed: they must agree to float rounding.
- the network's achieved GFLOP/s (convolution FLOPs, ``2 Cin Cout k k H W`` per layer,
  :func:`pipeline.networks.conv_flops`) against a 2048x2048 fp32 matrix product timed in the
  same rounds (the machine's practical peak).
- seconds per pair of every baseline (``wa``, ``gff``, ``lpcnn``, ``dwt``, ``lp``) and of ``cnn``
  (:func:`pipeline.baselines.cnn.fuse`, one pair per call, the same interface), interleaved.
  ``lpcnn`` needs ``lpcnn/cnnmodel.mat`` of the shared data and is skipped with a note without it.

The input is real atlas CT-MRI pairs (``harvard/CT-MRI``) when the shared data is found
($FUSION_SHARED_DATA, or ``../shared/data`` beside the checkout) and ``--size`` is 256, else
synthetic phantoms. Without ``--checkpoint`` an untrained FusionNet is used (speed does not
depend on the weights), re-initialised with PyTorch's default convolution initialisation and
non-trivial batch-norm statistics so that the outputs, and the agreement check, are not ~0.
``--widths`` takes one spec per network: four comma-separated widths, or one number ``N`` for
``N`` channels in all four layers. The full variant grid runs for the first spec; the others
run ``eager``, ``inference_mode`` and ``folded_cl``. ``--threads`` takes a list: the network grid
is run at each thread count in turn, and the methods are timed at each, interleaved. On a
machine shared with other busy processes, one thread can beat two by far: every parallel region
of a multi-threaded forward pass waits for both threads to be scheduled.

Targets (issue 7): at batch 32 the production form reaches half of the matrix-product GFLOP/s;
``cnn`` is faster per pair than ``gff`` and at least 10x faster than ``lpcnn``. ``--check`` exits
with status 1 when one is missed. Images are float in [0, 1] throughout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FUSION_SHARED_DATA", REPO.parent / "shared" / "data"))
BASELINES = ("wa", "gff", "lpcnn", "dwt", "lp")
MATMUL_SIZE = 2048
PEAK_FRACTION_TARGET = 0.5
LPCNN_SPEEDUP_TARGET = 10.0

__all__ = ["main", "parse_widths", "load_pairs", "Timer"]


def parse_widths(spec: str) -> tuple[int, int, int, int]:
    """``"16,32,32,16"`` -> that; ``"32"`` -> ``(32, 32, 32, 32)``.

    Raises:
        argparse.ArgumentTypeError: not one or four positive integers.
    """
    try:
        values = tuple(int(v) for v in spec.split(","))
    except ValueError:
        values = ()
    if len(values) == 1:
        values = values * 4
    if len(values) != 4 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"--widths: {spec!r} is neither N nor four comma-separated widths")
    return values  # type: ignore[return-value]


def load_pairs(count: int, size: int) -> tuple[Any, Any, str]:
    """``count`` gray pairs ``(N, size, size)`` float32 in [0, 1] and a description of their origin."""
    import numpy as np

    from pipeline.io import read_image

    folder = SHARED_DATA / "harvard" / "CT-MRI"
    names = sorted(p.name for p in (folder / "CT").glob("*.png")) if (folder / "CT").is_dir() else []
    if size == 256 and names:
        names = [names[i % len(names)] for i in range(count)]
        a = np.stack([read_image(folder / "CT" / n, mode="gray") for n in names]).astype(np.float32) / 255
        b = np.stack([read_image(folder / "MRI" / n, mode="gray") for n in names]).astype(np.float32) / 255
        if a.shape[1:] == (size, size):
            return a, b, f"atlas CT-MRI pairs ({len(set(names))} distinct), 256x256"
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size] / max(size - 1, 1)
    head = ((xx - 0.5) ** 2 + (yy - 0.5) ** 2 < 0.16).astype(np.float32)
    a = np.clip(head * (0.5 + 0.3 * np.sin(9 * xx)) + 0.02 * rng.standard_normal((count, size, size)), 0, 1)
    b = np.clip(head * (0.3 + 0.4 * np.cos(7 * yy)) + 0.02 * rng.standard_normal((count, size, size)), 0, 1)
    description = f"synthetic phantoms {size}x{size} (no shared data used)"
    return a.astype(np.float32), b.astype(np.float32), description


class Timer:
    """Round-robin best-of-N wall-clock timing of named callables.

    Args:
        sync: called after each run before the clock stops (CUDA synchronisation), or ``None``.
    """

    def __init__(self, sync: Callable[[], None] | None = None) -> None:
        self.sync = sync
        self.jobs: dict[str, Callable[[], Any]] = {}
        self.best: dict[str, float] = {}

    def add(self, name: str, job: Callable[[], Any], warmup: int = 1) -> None:
        """Register ``job`` under ``name`` after ``warmup`` untimed runs."""
        for _ in range(warmup):
            job()
        self.jobs[name] = job
        self.best[name] = float("inf")

    def run(self, repeat: int) -> dict[str, float]:
        """Time every job ``repeat`` times, interleaved; returns the best seconds per name."""
        for _ in range(repeat):
            for name, job in self.jobs.items():
                start = time.perf_counter()
                job()
                if self.sync is not None:
                    self.sync()
                self.best[name] = min(self.best[name], time.perf_counter() - start)
        return dict(self.best)


def _realistic(net: Any) -> Any:
    """Give an untrained FusionNet trained-like weights: PyTorch's default conv init, non-trivial BN."""
    import torch
    from torch import nn

    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                bound = 1 / (m.weight[0].numel() ** 0.5)
                m.weight.uniform_(-bound, bound, generator=gen)
                m.bias.uniform_(-bound, bound, generator=gen)
            elif isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1, generator=gen)
                m.running_var.uniform_(0.5, 2.0, generator=gen)
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.uniform_(-0.1, 0.1, generator=gen)
    return net.eval()


@contextlib.contextmanager
def _onednn_fusion(enabled: bool) -> Iterator[None]:
    import torch

    before = torch.jit.onednn_fusion_enabled()
    torch.jit.enable_onednn_fusion(enabled)
    try:
        yield
    finally:
        torch.jit.enable_onednn_fusion(before)


def _variants(net: Any, x: Any, full: bool, compile_: bool, device: Any,
              notes: list[str]) -> dict[str, tuple[Callable[[], Any], float]]:
    """``{name: (call, setup seconds)}``: each call runs one forward pass on ``x``."""
    import torch

    from pipeline.networks import fold_batch_norm, inference_network

    cl = torch.channels_last
    x_cl = x.contiguous(memory_format=cl)
    out: dict[str, tuple[Callable[[], Any], float]] = {}

    def inference(module: Any, inp: Any) -> Callable[[], Any]:
        def call() -> Any:
            with torch.inference_mode():
                return module(inp)
        return call

    def eager() -> Any:
        return net(x)

    out["eager"] = (eager, 0.0)
    out["inference_mode"] = (inference(net, x), 0.0)
    if full:
        import copy

        out["channels_last"] = (inference(copy.deepcopy(net).to(memory_format=cl), x_cl), 0.0)
        out["folded"] = (inference(fold_batch_norm(net), x), 0.0)
    out["folded_cl"] = (inference(inference_network(net), x), 0.0)
    if not full:
        return out

    def traced(inp: Any, onednn: bool) -> tuple[Callable[[], Any], float]:
        start = time.perf_counter()
        module = fold_batch_norm(net).to(memory_format=cl) if inp is x_cl else fold_batch_norm(net)
        with _onednn_fusion(onednn), torch.inference_mode():
            frozen = torch.jit.freeze(torch.jit.trace(module, inp))
            for _ in range(3):  # the profiling executor optimises (and fuses) on the first calls
                frozen(inp)
        call = inference(frozen, inp)
        return call, time.perf_counter() - start

    out["jit_freeze"] = traced(x, False)
    out["jit_freeze_cl"] = traced(x_cl, False)
    if device.type == "cpu":
        try:
            out["onednn_graph"] = traced(x_cl, True)
        except Exception as err:  # deprecated feature: report, don't fail the benchmark
            notes.append(f"onednn_graph skipped: {type(err).__name__}: {str(err)[:120]}")
    if compile_:
        try:
            start = time.perf_counter()
            compiled = torch.compile(inference_network(net))
            with torch.inference_mode():
                compiled(x)
            out["compile"] = (inference(compiled, x), time.perf_counter() - start)
        except Exception as err:  # no compiler, unsupported platform...
            notes.append(f"compile skipped: {type(err).__name__}: {str(err)[:120]}")
    return out


def _max_diff(call: Callable[[], Any], reference: Any) -> float:
    import torch

    with torch.inference_mode():
        y = call()
    return float((y.detach().float() - reference).abs().max())


def bench_network(widths: tuple[int, ...], args: argparse.Namespace, full: bool, state: dict | None,
                  notes: list[str]) -> list[dict[str, Any]]:
    """Rows ``{widths, batch, variant, pairs_per_s, gflops, max_diff, setup_s}`` for one network."""
    import numpy as np
    import torch

    from pipeline.baselines.cnn import CNNFuser
    from pipeline.networks import FusionNet, conv_flops

    device = torch.device(args.device)
    net = FusionNet(widths=widths)
    if state is not None:
        net.load_state_dict(state)
        net.eval()
    else:
        _realistic(net)
    net = net.to(device)
    flops = conv_flops(widths, args.size, args.size)
    rows = []
    for batch in args.batch_sizes:
        a, b, _ = load_pairs(batch, args.size)
        x = torch.from_numpy(np.stack([a, b], axis=1)).to(device)
        with torch.no_grad():
            reference = net(x).float()
        timer = Timer(_sync(device))
        setup: dict[str, float] = {}
        for name, (call, setup_s) in _variants(net, x, full, args.compile, device, notes).items():
            timer.add(name, call)
            setup[name] = setup_s
        fusers = [batch] if not full else sorted({1, 4, 8, batch} & set(range(1, batch + 1)))
        for k in fusers:
            fuser = CNNFuser(net, device=device, batch_size=k)
            timer.add(f"cnn_fuser[bs={k}]", lambda f=fuser: f.fuse_gray_batch(a, b))
        timer.add("matmul_2048", _matmul_job(device))
        best = timer.run(args.repeat)
        peak = 2 * MATMUL_SIZE ** 3 / best.pop("matmul_2048") / 1e9
        expected = reference.clamp(0, 1)[:, 0].cpu().numpy()
        for name, seconds in best.items():
            if name.startswith("cnn_fuser"):
                fuser_k = int(name.split("=")[1].rstrip("]"))
                got = CNNFuser(net, device=device, batch_size=fuser_k).fuse_gray_batch(a, b)
                diff = float(np.abs(got - expected).max())
            else:
                diff = _max_diff(timer.jobs[name], reference)
            rows.append({
                "widths": ",".join(map(str, widths)), "batch": batch, "variant": name,
                "pairs_per_s": batch / seconds, "gflops": flops * batch / seconds / 1e9,
                "peak_fraction": flops * batch / seconds / 1e9 / peak, "matmul_gflops": peak,
                "max_diff": diff, "setup_s": setup.get(name, 0.0),
            })
    return rows


def _sync(device: Any) -> Callable[[], None] | None:
    import torch

    return torch.cuda.synchronize if device.type == "cuda" else None


def _matmul_job(device: Any) -> Callable[[], Any]:
    import torch

    gen = torch.Generator().manual_seed(1)
    m1 = torch.rand(MATMUL_SIZE, MATMUL_SIZE, generator=gen).to(device)
    m2 = torch.rand(MATMUL_SIZE, MATMUL_SIZE, generator=gen).to(device)
    return lambda: torch.mm(m1, m2)


def bench_methods(args: argparse.Namespace, checkpoint: Path, notes: list[str],
                  threads: list[int]) -> dict[str, float]:
    """Best seconds per pair of each baseline and of ``cnn`` (one pair per call) at each torch thread
    count, all interleaved; keys ``"<method>[threads=<n>]"``."""
    import torch

    from pipeline.baselines import get_method

    a, b, _ = load_pairs(1, args.size)
    a, b = a[0].astype("float64"), b[0].astype("float64")
    timer = Timer()
    names = list(BASELINES) + ["cnn"]
    if not (SHARED_DATA / "lpcnn" / "cnnmodel.mat").is_file():
        notes.append(f"lpcnn skipped: no {SHARED_DATA / 'lpcnn' / 'cnnmodel.mat'}")
        names.remove("lpcnn")
    for n_threads in threads:
        for name in names:
            fuse = get_method(name)
            kwargs = {"checkpoint": checkpoint, "device": args.device} if name == "cnn" else {}

            def job(f: Callable = fuse, n: int = n_threads, kw: dict = kwargs) -> Any:
                torch.set_num_threads(n)  # torch-based methods (lpcnn, cnn) follow it
                return f(a, b, **kw)

            timer.add(f"{name}[threads={n_threads}]", job)
    return timer.run(args.repeat)


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.rjust(w) for h, w in zip(headers, widths))
    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line, sep] + ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows])


def _checkpoint_state(path: Path | None) -> dict | None:
    if path is None:
        return None
    from pipeline.checkpoint import load_state_dict

    return load_state_dict(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:i]")
    parser.add_argument("--threads", default=None,
                        help="comma-separated intra-op thread counts to compare (default: 1 and torch's)")
    parser.add_argument("--widths", nargs="+", type=parse_widths, default=None,
                        help="network widths, one spec each (default: the checkpoint's or 16,32,32,16; "
                             "then 16 and 32)")
    parser.add_argument("--batch-sizes", default="1,32", help="comma-separated (default 1,32)")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    parser.add_argument("--repeat", type=int, default=3, help="timed rounds, best kept (default 3)")
    parser.add_argument("--checkpoint", type=Path, default=None, help="FusionNet weights (model.pt)")
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="skip torch.compile")
    parser.add_argument("--no-baselines", dest="baselines", action="store_false", help="skip the methods")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    args.batch_sizes = [int(v) for v in args.batch_sizes.split(",")]
    for var in ("MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):  # numpy's BLAS: one thread, as the baselines run
        os.environ.setdefault(var, "1")

    import torch

    from pipeline.networks import DEFAULT_WIDTHS, FusionNet, widths_from_state_dict

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    default_threads = torch.get_num_threads()
    threads = [int(v) for v in args.threads.split(",")] if args.threads else sorted({1, cores})
    state = _checkpoint_state(args.checkpoint)
    primary = widths_from_state_dict(state) if state is not None else tuple(DEFAULT_WIDTHS)
    specs = args.widths or [primary, (16,) * 4, (32,) * 4]
    load_start = os.getloadavg()
    started = time.perf_counter()
    notes: list[str] = []
    _, _, data = load_pairs(1, args.size)
    rows: list[dict[str, Any]] = []
    for n_threads in threads:
        torch.set_num_threads(n_threads)
        for i, widths in enumerate(dict.fromkeys(specs)):
            use_state = state if state is not None and tuple(widths) == primary else None
            for row in bench_network(tuple(widths), args, full=(i == 0), state=use_state, notes=notes):
                rows.append({"threads": n_threads, **row})
    methods: dict[str, float] = {}
    if args.baselines:
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = args.checkpoint
            if ckpt is None:
                ckpt = Path(tmp) / "model.pt"
                torch.save(_realistic(FusionNet(widths=primary)).state_dict(), ckpt)
            methods = bench_methods(args, ckpt, notes, threads)
    torch.set_num_threads(default_threads)
    load_end = os.getloadavg()
    result = {
        "device": str(args.device), "threads": threads, "size": args.size,
        "repeat": args.repeat, "data": data, "checkpoint": str(args.checkpoint) if args.checkpoint else None,
        "loadavg_start": load_start, "loadavg_end": load_end, "cpu_count": os.cpu_count(),
        "torch": torch.__version__, "wall_s": time.perf_counter() - started,
        "network": rows, "methods_s_per_pair": methods, "notes": notes,
    }
    result["targets"] = _targets(rows, methods, primary, max(args.batch_sizes))
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        _print(result)
    return 1 if args.check and not all(t["met"] for t in result["targets"]) else 0


def _targets(rows: list[dict], methods: dict[str, float], primary: tuple[int, ...], batch: int) -> list[dict]:
    """The issue's targets at each thread count: ``{target, value, met}``."""
    out = []
    for n in sorted({r["threads"] for r in rows}):
        prod = [r for r in rows if r["threads"] == n and r["widths"] == ",".join(map(str, primary))
                and r["batch"] == batch and r["variant"] == "folded_cl"]
        if prod:
            r = prod[0]
            out.append({"target": f"threads {n}: batch {batch} folded_cl >= {PEAK_FRACTION_TARGET:.0%} of "
                                  "matmul GFLOP/s",
                        "value": f"{r['gflops']:.1f} / {r['matmul_gflops']:.1f} = {r['peak_fraction']:.2f}",
                        "met": r["peak_fraction"] >= PEAK_FRACTION_TARGET})
        cnn, gff, lpcnn = (methods.get(f"{m}[threads={n}]") for m in ("cnn", "gff", "lpcnn"))
        if cnn and gff:
            out.append({"target": f"threads {n}: cnn faster per pair than gff",
                        "value": f"{cnn:.4f} s vs {gff:.4f} s", "met": cnn < gff})
        if cnn and lpcnn:
            out.append({"target": f"threads {n}: cnn >= {LPCNN_SPEEDUP_TARGET:.0f}x faster than lpcnn",
                        "value": f"{lpcnn / cnn:.1f}x", "met": lpcnn / cnn >= LPCNN_SPEEDUP_TARGET})
    return out


def _print(result: dict[str, Any]) -> None:
    print(f"# inference benchmark: device {result['device']}, torch threads {result['threads']}, "
          f"{result['cpu_count']} CPUs, torch {result['torch']}")
    print(f"# data: {result['data']}; best of {result['repeat']} interleaved rounds; "
          f"load average {result['loadavg_start'][0]:.2f} at start, {result['loadavg_end'][0]:.2f} at end; "
          f"{result['wall_s']:.0f} s")
    rows = [[str(r["threads"]), r["widths"], str(r["batch"]), r["variant"], f"{r['pairs_per_s']:.2f}",
             f"{1000 / r['pairs_per_s']:.1f}", f"{r['gflops']:.1f}", f"{r['matmul_gflops']:.1f}",
             f"{r['peak_fraction']:.2f}", f"{r['max_diff']:.1e}", f"{r['setup_s']:.1f}"]
            for r in result["network"]]
    print(_table(["threads", "widths", "batch", "variant", "pairs/s", "ms/pair", "GFLOP/s", "matmul GFLOP/s",
                  "of peak", "max |diff|", "setup s"], rows))
    for key in sorted({(r["threads"], r["widths"], r["batch"]) for r in result["network"]}):
        group = [r for r in result["network"] if (r["threads"], r["widths"], r["batch"]) == key]
        win = max(group, key=lambda r: r["pairs_per_s"])
        eager = next(r for r in group if r["variant"] == "eager")
        print(f"fastest at threads {key[0]}, widths {key[1]}, batch {key[2]}: {win['variant']} "
              f"({win['pairs_per_s']:.1f} pairs/s, {win['pairs_per_s'] / eager['pairs_per_s']:.2f}x eager)")
    if result["methods_s_per_pair"]:
        print()
        m = result["methods_s_per_pair"]
        rows = []
        for key, v in m.items():
            cnn = m.get(key.replace(key.split("[")[0], "cnn", 1))
            rows.append([key, f"{v:.4f}", f"{1 / v:.1f}", f"{v / cnn:.2f}" if cnn else "-"])
        print(_table(["method", "s/pair", "pairs/s", "x cnn time"], rows))
    for note in result["notes"]:
        print(f"note: {note}")
    print()
    for t in result["targets"]:
        print(f"target {'MET   ' if t['met'] else 'MISSED'}: {t['target']}: {t['value']}")


if __name__ == "__main__":
    sys.exit(main())
