"""Fuse new slice pairs with a trained FusionNet: load the checkpoint, find the pairs, write 8-bit PNG.

A pair is either two files of the same name in the two subfolders of an input folder
(``DIR/CT/2010.png`` with ``DIR/MRI/2010.png``), or an entry of a datalist split. Gray pairs go
through the network as they are; a colour source (PET/SPECT pseudo-colour) is fused in YCbCr: its
Y with the other source, then its Cb/Cr are put back and the result is written as RGB
(:func:`pipeline.colour.fuse_with_colour`). Images are float in [0, 1] inside (÷255 after
decoding, no min-max normalisation) and written as 8-bit PNG; the network output is clipped to
[0, 1].

Every input pair is decoded and checked before anything is written, and each PNG is written
atomically, so a bad pair stops the run with a clear error and leaves no partial output file.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.colour import fuse_with_colour
from pipeline.io import CheckpointError, load_checkpoint, read_pair, write_png
from pipeline.networks import FusionNet, inference_network, widths_from_state_dict

__all__ = [
    "CheckpointError",
    "load_state_dict",
    "load_fusion_network",
    "CNNFuser",
    "find_pairs",
    "datalist_pairs",
    "run_inference",
    "IMAGE_SUFFIXES",
    "DEFAULT_BATCH_SIZE",
]

logger = logging.getLogger(__name__)

#: Pairs per forward pass when fusing many pairs of one size; ``None`` picks by device: 1 on the CPU
#: (a 256x256 pair's activations stay in cache: 97 vs 41 pairs/s at batch 32 on 2 cores) and 32 on a
#: GPU (measured with ``benchmarks/bench_inference.py``).
DEFAULT_BATCH_SIZE: int | None = None

#: File suffixes taken as images when pairing folders.
IMAGE_SUFFIXES = (".png", ".gif", ".tif", ".tiff", ".bmp", ".jpg", ".jpeg")


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The network weights in a checkpoint: a plain state dict (``model.pt``) or ``{"model": ...}``
    (the resumable ``latest.pt``).

    Raises:
        CheckpointError: missing, unreadable, or holding no network weights.
    """
    obj = load_checkpoint(path, "cpu", missing=(
        "no such checkpoint. Train the bundle (python -m monai.bundle run training --config_file "
        "bundles/ssim_fusion/configs/train.yaml) and copy its best models/model.pt there, or pass --ckpt_path"))
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
    dev = torch.device(device) if device is not None else _default_device()
    return net.to(dev).eval()


def _default_device() -> torch.device:
    return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")


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


def find_pairs(
    input_dir: str | os.PathLike, subdirs: Sequence[str] | None = None
) -> list[tuple[str, Path, Path]]:
    """Pairs of same-named images in the two subfolders of ``input_dir``.

    The network was trained with the MRI as source B (data_prep writes pairs as CT/PET/SPECT, MRI),
    so a subfolder named ``MR``/``MRI`` (any case) is taken as B; otherwise A and B are the two
    subfolders in alphabetical order. ``subdirs`` names them explicitly.

    Args:
        input_dir: folder with exactly two subfolders of images.
        subdirs: ``(A, B)`` subfolder names, to override the rule above.

    Returns:
        ``(stem, path_a, path_b)`` sorted by stem; files are matched by name without suffix.

    Raises:
        FileNotFoundError: the folder or a named subfolder does not exist.
        ValueError: not exactly two subfolders, an image without a partner, no pairs, or two files
            with the same stem in one subfolder; the message names the file.
    """
    root = Path(input_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such input folder. It must hold two subfolders of paired images")
    if subdirs is not None:
        dirs = [root / s for s in subdirs]
        for d in dirs:
            if not d.is_dir():
                raise FileNotFoundError(f"{d}: no such subfolder of {root}")
        if len(dirs) != 2:
            raise ValueError(f"subdirs must name two folders (A, B), got {list(subdirs)}")
    else:
        dirs = sorted((d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")),
                      key=lambda d: d.name)
        if len(dirs) != 2:
            raise ValueError(f"{root}: expected exactly two subfolders (one per modality, same file names), "
                             "found "
                             f"{[d.name for d in dirs]}. Arrange the pairs as DIR/<modality A>/x.png and "
                             "DIR/<modality B>/x.png, or pass a datalist")
        if dirs[0].name.lower() in ("mr", "mri"):
            dirs.reverse()
    files = []
    for d in dirs:
        by_stem: dict[str, Path] = {}
        for f in sorted(d.iterdir()):
            if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
                if f.stem in by_stem:
                    raise ValueError(f"{f}: has the same name as {by_stem[f.stem]}; keep one image per name")
                by_stem[f.stem] = f
        files.append(by_stem)
    fa, fb = files
    for mine, other, other_dir in ((fa, fb, dirs[1]), (fb, fa, dirs[0])):
        lonely = sorted(set(mine) - set(other))
        if lonely:
            raise ValueError(f"{mine[lonely[0]]}: has no partner in {other_dir} "
                             f"(expected {other_dir / lonely[0]}.*)"
                             f"{f' and {len(lonely) - 1} more unpaired' if len(lonely) > 1 else ''}. "
                             "Add the partner or remove the unpaired file")
    if not fa:
        raise ValueError(f"{root}: no images in {dirs[0].name}/ and {dirs[1].name}/ "
                         f"({', '.join(IMAGE_SUFFIXES)})")
    return [(stem, fa[stem], fb[stem]) for stem in sorted(fa)]


def datalist_pairs(datalist: str | os.PathLike, split: str | None = "test") -> list[tuple[str, Path, Path]]:
    """Pairs of a datalist split (``None``: all splits), named ``<pair>/<case>_<slice:03d>``.

    Raises:
        pipeline.datalist.DatalistError: the datalist is missing, invalid or has no such split.
    """
    from pipeline.datalist import SPLITS, load_datalist

    data = load_datalist(datalist)
    splits = SPLITS if split is None else (split,)
    if split is not None and split not in data:
        raise ValueError(f"{datalist}: no split {split!r}; choose one of {SPLITS}")
    out = []
    for s in splits:
        for e in data[s]:
            name = Path(e["image_a"]).stem
            if "case" in e and "slice" in e:
                name = f"{e['case']}_{int(e['slice']):03d}"
            out.append((f"{e.get('pair', 'pairs')}/{name}", Path(e["image_a"]), Path(e["image_b"])))
    return out


def run_inference(
    ckpt_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    input_dir: str | os.PathLike | None = None,
    datalist: str | os.PathLike | None = None,
    split: str | None = "test",
    subdirs: Sequence[str] | None = None,
    device: str | torch.device | None = None,
    widths: Sequence[int] | None = None,
    amp: bool = False,
    batch_size: int | None = DEFAULT_BATCH_SIZE,
) -> list[Path]:
    """Fuse every pair of ``input_dir`` (or of a datalist split) and write 8-bit PNGs to ``output_dir``.

    Args:
        ckpt_path: the trained weights (``models/model.pt``).
        output_dir: where ``<name>.png`` files go (created).
        input_dir: folder of two subfolders of same-named images (see :func:`find_pairs`).
        datalist: alternatively, a ``datalist.json``; outputs go to ``<pair>/<case>_<slice>.png``.
        split: the datalist split to fuse (``None``: all).
        subdirs: ``(A, B)`` subfolder names of ``input_dir``.
        device: ``"cpu"``, ``"cuda"``...; default CUDA when available.
        widths: expected network widths (``None``: read from the checkpoint).
        amp: float16 autocast on CUDA.
        batch_size: pairs of one size per forward pass.

    Returns:
        the written files, in pair order.

    Raises:
        ValueError: neither or both of ``input_dir`` and ``datalist``; bad pairs or checkpoint
            (:class:`CheckpointError`, :class:`pipeline.io.ImageReadError`) - before anything is written.
    """
    if (input_dir is None) == (datalist is None):
        raise ValueError("give exactly one of input_dir (two subfolders of paired images) or datalist")
    pairs = find_pairs(input_dir, subdirs) if input_dir is not None else datalist_pairs(datalist, split)
    if not pairs:
        raise ValueError(f"{datalist}: split {split!r} has no pairs")
    fuser = CNNFuser(load_fusion_network(ckpt_path, device=device, widths=widths), amp=amp,
                     batch_size=batch_size)
    decoded = [(name, *read_pair(pa, pb)) for name, pa, pb in pairs]  # check all before writing any
    out_dir = Path(output_dir)
    written = []
    fused_all = fuser.fuse_many([(a.astype(np.float64) / 255.0, b.astype(np.float64) / 255.0)
                                 for _, a, b in decoded])
    for (name, _, _), fused in zip(decoded, fused_all):
        target = out_dir / f"{name}.png"
        write_png(target, fused)
        written.append(target)
    logger.info(f"fused {len(written)} pairs into {out_dir} with {ckpt_path} on {fuser.device}")
    return written
