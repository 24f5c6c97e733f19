"""``cnn``: the trained SSIM-alpha fusion network as a method with the baselines' ``fuse(a, b)`` shape.

The weights default to the bundle's ``models/model.pt`` (:func:`pipeline.resources.shipped_checkpoint`,
found in a checkout and in an installed wheel alike); a loaded network is
kept per (checkpoint, modification time, device), so fusing a data set loads it once. It runs in
the fastest measured inference form (:class:`CNNFuser`: batch norm folded into the convolutions,
channels-last, ``inference_mode``), equal to the eager network up to float rounding; to fuse many
pairs at once, batched, use :meth:`CNNFuser.fuse_many` (as :mod:`pipeline.inference` does).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from pipeline.weights import load_fusion_network, load_state_dict
from pipeline.colour import fuse_with_colour
from pipeline.model_index import checkpoint_for
from pipeline.networks import inference_network
from pipeline.resources import shipped_checkpoint

__all__ = ["fuse", "CNNFuser", "DEFAULT_CHECKPOINT", "DEFAULT_BATCH_SIZE"]

#: Weights shipped with the bundle (produced by its training run).
DEFAULT_CHECKPOINT = shipped_checkpoint()

#: Pairs per forward pass when fusing many pairs of one size; ``None`` picks by device: 1 on the CPU
#: (a 256x256 pair's activations stay in cache, so larger batches are slower there) and 32 on a GPU;
#: ``benchmarks/bench_inference.py`` measures the batch sizes.
DEFAULT_BATCH_SIZE: int | None = None


class CNNFuser:
    """Fuse 2D slices with a FusionNet, in its fastest measured inference form.

    The network is run as :func:`pipeline.networks.inference_network` makes it (batch norm folded
    into the convolutions, channels-last layout) under ``torch.inference_mode``; its output equals
    the eager ``network.eval()`` up to float rounding (``benchmarks/bench_inference.py`` measures
    the variants). :meth:`fuse_many` batches pairs of one size.

    Args:
        network: a FusionNet (or any module mapping ``(N, 2, H, W)`` to ``(N, 1, H, W)``).
        device: where to run; default the network's device.
        amp: autocast to float16 on CUDA.
        optimise: run the folded channels-last form (``False``: the eval network as given).
        batch_size: pairs per forward pass in :meth:`fuse_many` (``None``: 1 on the CPU, 32 on a GPU).
    """

    def __init__(
        self,
        network: torch.nn.Module,
        device: str | torch.device | None = None,
        amp: bool = False,
        optimise: bool = True,
        batch_size: int | None = DEFAULT_BATCH_SIZE,
    ) -> None:
        self.device = torch.device(device) if device is not None else next(network.parameters()).device
        if batch_size is None:
            batch_size = 1 if self.device.type == "cpu" else 32
        self.network = network.to(self.device).eval()
        self.runner = inference_network(self.network) if optimise else self.network
        self.amp = bool(amp) and self.device.type == "cuda"
        if int(batch_size) < 1:
            raise ValueError(f"CNNFuser: batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)

    @torch.inference_mode()
    def fuse_gray_batch(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Fuse stacks of gray images: ``(N, H, W)`` float in [0, 1] each, to ``(N, H, W)`` float64 in [0, 1].

        Runs ``batch_size`` pairs per forward pass.

        Raises:
            ValueError: not two 3D stacks of one shape.
        """
        a, b = np.asarray(a), np.asarray(b)
        if a.ndim != 3 or a.shape != b.shape:
            raise ValueError(f"CNNFuser.fuse_gray_batch needs two (N, H, W) stacks of one shape, got "
                             f"{a.shape} and {b.shape}")
        x = torch.from_numpy(np.stack([a, b], axis=1).astype(np.float32))
        out = []
        for chunk in x.split(self.batch_size):
            with torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.amp):
                y = self.runner(chunk.to(self.device))
            out.append(y[:, 0].float().clamp(0, 1).cpu())
        return torch.cat(out).numpy().astype(np.float64)

    def fuse_gray(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Fuse two gray ``(H, W)`` float images in [0, 1] into one, float64 in [0, 1].

        Raises:
            ValueError: not two 2D images of one size.
        """
        a, b = np.asarray(a), np.asarray(b)
        if a.ndim != 2 or a.shape != b.shape:
            raise ValueError(f"CNNFuser.fuse_gray needs two 2D images of one size, got {a.shape} "
                             f"and {b.shape}")
        return self.fuse_gray_batch(a[None], b[None])[0]

    def fuse(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Fuse a pair in which a source may be colour (``(H, W, 3)``): YCbCr fusion, RGB out.

        Args:
            a: first source, float in [0, 1].
            b: second source, float in [0, 1], same height and width.

        Returns:
            ``(H, W)`` for a gray pair, ``(H, W, 3)`` RGB otherwise, float in [0, 1].
        """
        return fuse_with_colour(a, b, self.fuse_gray)

    def fuse_many(self, pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
        """Fuse many pairs (gray or colour, as :meth:`fuse`), batching the network over pairs of one size.

        Gives the same images as calling :meth:`fuse` on each pair: the gray inputs the colour
        rule hands to the network are collected first, run in batches of ``batch_size`` per image
        size, and handed back to the same colour rule.

        Args:
            pairs: ``(a, b)`` float sources in [0, 1].

        Returns:
            the fused images, in order, as :meth:`fuse` returns them.
        """
        inputs: list[tuple[np.ndarray, np.ndarray]] = []

        def collect(ga: np.ndarray, gb: np.ndarray) -> np.ndarray:
            if ga.shape != gb.shape or np.ndim(ga) != 2:
                raise ValueError(f"CNNFuser.fuse_many: a pair of sizes {np.shape(ga)} and {np.shape(gb)}; "
                                 "the two sources must be 2D images of one size")
            inputs.append((ga, gb))
            return np.zeros_like(ga)

        for a, b in pairs:
            fuse_with_colour(a, b, collect)
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, (ga, _) in enumerate(inputs):
            by_shape.setdefault(ga.shape, []).append(i)
        fused_gray: list[np.ndarray | None] = [None] * len(inputs)
        for idx in by_shape.values():
            out = self.fuse_gray_batch(np.stack([inputs[i][0] for i in idx]),
                                       np.stack([inputs[i][1] for i in idx]))
            for i, f in zip(idx, out):
                fused_gray[i] = f
        results = iter(fused_gray)
        return [fuse_with_colour(a, b, lambda _a, _b: next(results)) for a, b in pairs]


@functools.lru_cache(maxsize=4)
def _fuser(path: str, mtime: float, device: str) -> CNNFuser:
    return CNNFuser(load_fusion_network(path, device=device))


def fuse(
    a: np.ndarray,
    b: np.ndarray,
    checkpoint: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    pair: str | None = None,
) -> np.ndarray:
    """Fuse two registered slices with the trained FusionNet.

    Args:
        a: source A, ``(H, W)`` float in [0, 1] (a colour ``(H, W, 3)`` source is fused in YCbCr).
        b: source B, same size.
        checkpoint: weights file; default: the bundle's network for ``pair``
            (:func:`pipeline.model_index.checkpoint_for`), :data:`DEFAULT_CHECKPOINT` for an unknown pair.
        device: ``"cpu"``/``"cuda"``; default CUDA when available.
        pair: the pair type, e.g. ``"SPECT-MRI"``, which picks the shipped network (ignored with
            ``checkpoint``).

    Returns:
        the fused image, float64 in [0, 1], ``(H, W)`` (``(H, W, 3)`` when a source is colour).

    Raises:
        pipeline.io.CheckpointError: no weights at the checkpoint path (train the bundle
            first), or weights of another architecture.
        ValueError: the two images differ in size.
    """
    path = Path(checkpoint) if checkpoint is not None else checkpoint_for(pair)
    if not path.is_file():
        load_state_dict(path)  # raises the explanatory CheckpointError
    dev = str(device) if device is not None else ("cuda:0" if torch.cuda.is_available() else "cpu")
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape[:2] != b.shape[:2]:
        raise ValueError(f"cnn.fuse: the sources differ in size, {a.shape} and {b.shape}")
    return _fuser(str(path.resolve()), path.stat().st_mtime, dev).fuse(a, b)
