"""LP-CNN: Liu et al.'s siamese-CNN weight map fused in a Laplacian pyramid (2017), in PyTorch.

Y. Liu, X. Chen, H. Peng, Z. Wang, "Multi-focus image fusion with a deep convolutional neural
network", Information Fusion 36 (2017); its medical variant (Liu, Chen, Cheng, Peng, "A medical image
fusion method based on convolutional neural networks", FUSION 2017) and the infrared/visible one
(IJWMIP 2018) fuse in a Laplacian pyramid with a local-energy similarity rule. This module
reproduces the authors' MATLAB forward code as VIFB ships it (``methods/CNN/run_CNN.m``):

* **network** (one branch per source, shared weights): conv3x3x64 - ReLU - conv3x3x128 - ReLU -
  maxpool 2 - conv3x3x256 - ReLU; the two branches' features are concatenated (first source's 256
  channels, then the second's) into an 8x8 convolution with 2 outputs and a softmax. The MATLAB code
  runs it fully convolutionally over the whole image: the 3x3 convolutions keep the size with zero
  borders (``conv2(..., 'same')``), the pooling pads an odd side with one zero row/column, the 8x8
  layer is ``'valid'`` and its bias is never added. ``conv2`` with a 180-degree-rotated kernel is a
  correlation, which is what ``torch.nn.functional.conv2d`` computes, so kernels are used unflipped.
* **weight map**: output ``(j, i)`` scores the 16x16 patch whose top-left corner is ``(2j, 2i)``; the
  score is the softmax's *second* output (the probability that the first source is the one to keep);
  every pixel averages the scores of the patches covering it (patches clipped at the image border).
* **fusion**: Laplacian pyramids of the sources, a Gaussian pyramid of the weight map (the highest
  possible pyramid, ``floor(log2(min(H, W)))`` levels, :mod:`pipeline.baselines.pyramid`), and at
  each level Burt's rule: local energies ``S1``, ``S2`` and match ``M = 2 S12 / (S1 + S2 + eps)`` over
  3x3 windows (Rockinger's ``es2`` border: mirrored without repeating the edge, zero corners); where
  ``M > 0.6`` the level is ``W L1 + (1 - W) L2``, elsewhere the coefficient with the larger local
  energy (the second source on ties).

The weights are the authors' ``cnnmodel.mat`` (MATLAB v5), converted at load time and cached per
path; the project never ships them. Images are float in [0, 1] (the library's convention); the
fused image is float64 in [0, 1].
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.baselines.pyramid import (
    default_levels,
    gaussian_pyramid,
    laplacian_pyramid,
    reconstruct_laplacian,
)

__all__ = [
    "WEIGHTS_ENV",
    "DEFAULT_WEIGHTS",
    "PATCH_SIZE",
    "PATCH_STRIDE",
    "SIMILARITY_THRESHOLD",
    "MIN_SIDE",
    "LPCNNSiamese",
    "resolve_weights_path",
    "load_network",
    "rgb2gray",
    "weight_map",
    "patch_scores_to_map",
    "band_fuse",
    "fuse_with_map",
    "fuse",
    "fuse_per_channel",
]

PathLike = Union[str, "os.PathLike[str]"]
Device = Union[str, torch.device]

#: Environment variable naming the ``cnnmodel.mat`` file.
WEIGHTS_ENV = "FUSION_LPCNN_WEIGHTS"
#: Where the weights are looked for by default, relative to the current directory.
DEFAULT_WEIGHTS = Path("..") / "shared" / "data" / "lpcnn" / "cnnmodel.mat"
#: Side of the square patch each network output scores, and the stride between patches.
PATCH_SIZE = 16
PATCH_STRIDE = 2
#: Match level above which a pyramid coefficient is a weighted average rather than a selection.
SIMILARITY_THRESHOLD = 0.6
#: Smallest image side the network accepts: the 8x8 output layer needs ceil(side / 2) >= 8.
MIN_SIDE = 15

#: MATLAB ``rgb2gray``: the first row of the inverse NTSC (YIQ) transform, for double images.
_RGB2GRAY = np.linalg.inv(np.array([[1.0, 0.956, 0.621], [1.0, -0.272, -0.647], [1.0, -1.106, 1.703]]))[0]

#: ``cnnmodel.mat`` variables and their shapes: MATLAB stores a k x k kernel column-major in one axis.
_MAT_SHAPES = {
    "weights_b1_1": (9, 64),
    "biases_b1_1": (64, 1),
    "weights_b1_2": (64, 9, 128),
    "biases_b1_2": (128, 1),
    "weights_b1_3": (128, 9, 256),
    "biases_b1_3": (256, 1),
    "weights_output": (512, 64, 2),
}

_HOW_TO_GET = (
    "The LP-CNN weights are not shipped with this project: get `cnnmodel.mat` from Liu et al.'s CNN "
    "fusion code (it ships in the VIFB benchmark, github.com/xingchenzhang/VIFB, "
    "methods/CNN/model/cnnmodel.mat) and pass its path as `weights=`, or set "
    f"${WEIGHTS_ENV}, or place it at {DEFAULT_WEIGHTS} relative to the current directory"
)


class LPCNNSiamese(nn.Module):
    """The siamese scoring network, fully convolutional (build it with :func:`load_network`).

    ``forward(a, b)`` takes two ``(N, 1, H, W)`` float32 tensors in [0, 1] and returns the output
    layer's ``(N, 2, ceil(H/2) - 7, ceil(W/2) - 7)`` logits (no bias, as in the reference).
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 64, 3, padding=1)
        self.conv2 = nn.Conv2d(64, 128, 3, padding=1)
        self.conv3 = nn.Conv2d(128, 256, 3, padding=1)
        self.output = nn.Conv2d(512, 2, 8, bias=False)

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        """One branch: conv-ReLU-conv-ReLU-maxpool-conv-ReLU (shared by both sources)."""
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        # ceil_mode = MATLAB's zero row/column on an odd side: the inputs are >= 0 after the ReLU.
        x = F.max_pool2d(x, 2, ceil_mode=True)
        return F.relu(self.conv3(x))

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        features = self.branch(torch.cat([a, b], dim=0))  # one pass for both sources
        fa, fb = features.chunk(2, dim=0)
        return self.output(torch.cat([fa, fb], dim=1))


def resolve_weights_path(weights: PathLike | None = None) -> Path:
    """The ``cnnmodel.mat`` to use: ``weights``, else ``$FUSION_LPCNN_WEIGHTS``, else the default.

    Args:
        weights: explicit path, or None.

    Returns:
        the absolute path of an existing file.

    Raises:
        FileNotFoundError: the file does not exist; the message says how to obtain it.
    """
    if weights is None:
        weights = os.environ.get(WEIGHTS_ENV) or DEFAULT_WEIGHTS
    path = Path(weights).expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: LP-CNN weights file not found. {_HOW_TO_GET}")
    return path


def _kernels(mat: np.ndarray, k: int) -> np.ndarray:
    """``(Cin, k*k, Cout)`` MATLAB layout (kernel column-major) -> torch ``(Cout, Cin, k, k)``."""
    cin, _, cout = mat.shape
    return np.ascontiguousarray(mat.reshape(cin, k, k, cout, order="F").transpose(3, 0, 1, 2))


def _convert(path: Path) -> LPCNNSiamese:
    """Read ``cnnmodel.mat`` and build the network with its weights (float32, CPU, eval mode)."""
    from scipy.io import loadmat  # imported here: only LP-CNN needs it

    try:
        mat = loadmat(str(path))
    except Exception as err:  # scipy raises several types for a corrupt or foreign file
        raise ValueError(f"{path}: cannot be read as a MATLAB .mat file ({err}). {_HOW_TO_GET}") from err
    for name, shape in _MAT_SHAPES.items():
        if name not in mat or tuple(mat[name].shape) != shape:
            found = tuple(mat[name].shape) if name in mat else "missing"
            raise ValueError(f"{path}: variable {name} should have shape {shape}, found {found}; "
                             f"this is not Liu et al.'s LP-CNN model. {_HOW_TO_GET}")
    w1 = mat["weights_b1_1"].reshape(3, 3, 64, order="F").transpose(2, 0, 1)[:, None]
    tensors = {
        "conv1.weight": w1,
        "conv1.bias": mat["biases_b1_1"].ravel(),
        "conv2.weight": _kernels(mat["weights_b1_2"], 3),
        "conv2.bias": mat["biases_b1_2"].ravel(),
        "conv3.weight": _kernels(mat["weights_b1_3"], 3),
        "conv3.bias": mat["biases_b1_3"].ravel(),
        "output.weight": _kernels(mat["weights_output"], 8),
    }
    net = LPCNNSiamese()
    state = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in tensors.items()}
    net.load_state_dict(state)
    return net.eval().requires_grad_(False)


_CACHE: dict[tuple[str, str], LPCNNSiamese] = {}
_CACHE_LOCK = threading.Lock()


def load_network(weights: PathLike | None = None, device: Device | None = None) -> LPCNNSiamese:
    """The converted network for a weights file, loaded once per (path, device) and cached.

    Args:
        weights: path of ``cnnmodel.mat``; default ``$FUSION_LPCNN_WEIGHTS`` or
            ``../shared/data/lpcnn/cnnmodel.mat`` relative to the current directory.
        device: torch device; default CUDA when available, else CPU.

    Returns:
        the network in eval mode, on ``device``.

    Raises:
        FileNotFoundError: the weights file is missing (the message says where to get it).
        ValueError: the file is not the LP-CNN model.
    """
    path = resolve_weights_path(weights)
    dev = _device(device)
    key = (str(path), str(dev))
    with _CACHE_LOCK:
        if key not in _CACHE:
            cpu_key = (str(path), "cpu")
            if cpu_key not in _CACHE:
                _CACHE[cpu_key] = _convert(path)
            if key != cpu_key:
                _CACHE[key] = LPCNNSiamese().to(dev).eval().requires_grad_(False)
                _CACHE[key].load_state_dict(_CACHE[cpu_key].state_dict())
        return _CACHE[key]


def _device(device: Device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _check_pair(a: np.ndarray, b: np.ndarray, ndim: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    for name, img in (("a", a), ("b", b)):
        if img.ndim not in ndim or (img.ndim == 3 and img.shape[2] != 3):
            want = "(H, W)" if ndim == (2,) else "(H, W) or (H, W, 3)"
            raise ValueError(f"LP-CNN: source {name} must be a {want} image, got shape {img.shape}")
        if not np.isfinite(img).all():
            raise ValueError(f"LP-CNN: source {name} holds NaN or Inf")
    if a.shape[:2] != b.shape[:2]:
        raise ValueError(f"LP-CNN: the sources differ in size ({a.shape[:2]} vs {b.shape[:2]}); "
                         "resample them onto one grid first")
    if min(a.shape[:2]) < MIN_SIDE:
        raise ValueError(f"LP-CNN: images must be at least {MIN_SIDE}x{MIN_SIDE} pixels (the network scores "
                         f"{PATCH_SIZE}x{PATCH_SIZE} patches), got {a.shape[1]}x{a.shape[0]}")
    return a, b


def rgb2gray(rgb: np.ndarray) -> np.ndarray:
    """MATLAB ``rgb2gray`` of a float RGB image (``0.2989 R + 0.5870 G + 0.1140 B``).

    Args:
        rgb: float ``(H, W, 3)`` array in [0, 1].

    Returns:
        float64 ``(H, W)`` array.
    """
    return np.asarray(rgb, dtype=np.float64) @ _RGB2GRAY


def weight_map(
    a: np.ndarray, b: np.ndarray, weights: PathLike | None = None, device: Device | None = None
) -> np.ndarray:
    """Per-pixel weight of the first source from the siamese network's 16x16 patch scores.

    Args:
        a: first source, float ``(H, W)`` in [0, 1] (at least 15x15).
        b: second source, same size.
        weights: path of ``cnnmodel.mat`` (see :func:`load_network`).
        device: torch device (see :func:`load_network`).

    Returns:
        float64 ``(H, W)`` map in [0, 1]: the mean score of the patches (stride 2) covering each pixel.

    Raises:
        FileNotFoundError: the weights file is missing.
        ValueError: the images are not two equal-size 2D arrays of at least 15x15 pixels.
    """
    a, b = _check_pair(a, b, ndim=(2,))
    net = load_network(weights, device)
    dev = next(net.parameters()).device
    height, width = a.shape
    ta = torch.from_numpy(a.astype(np.float32))[None, None].to(dev)
    tb = torch.from_numpy(b.astype(np.float32))[None, None].to(dev)
    with torch.inference_mode():
        logits = net(ta, tb).double()
        # two-way softmax, second output: p2 = exp(z2) / (exp(z1) + exp(z2))
        score = torch.sigmoid(logits[0, 1] - logits[0, 0])
        return patch_scores_to_map(score, (height, width)).cpu().numpy()


def patch_scores_to_map(score: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Average overlapping 16x16 patch scores (stride 2) into a per-pixel map, as the reference does.

    Score ``(j, i)`` belongs to the patch whose top-left pixel is ``(2j, 2i)``; a patch reaching past
    the image is clipped to it. Each pixel gets the mean score of the patches covering it.

    Args:
        score: ``(h, w)`` tensor of patch scores.
        shape: ``(H, W)`` of the image, with ``2 (h - 1) < H`` and ``2 (w - 1) < W``.

    Returns:
        float64 ``(H, W)`` tensor on ``score``'s device.
    """
    height, width = shape
    score = score.to(torch.float64)[None, None]
    # a transposed convolution with a ones kernel adds each score over its patch; the crop clips
    ones = torch.ones(1, 1, PATCH_SIZE, PATCH_SIZE, dtype=torch.float64, device=score.device)
    total = F.conv_transpose2d(score, ones, stride=PATCH_STRIDE)[0, 0, :height, :width]
    count = F.conv_transpose2d(torch.ones_like(score), ones, stride=PATCH_STRIDE)[0, 0, :height, :width]
    return total / count


def _local_sum3(x: np.ndarray) -> np.ndarray:
    """3x3 window sums with Rockinger's ``es2`` border: mirror without the edge, zero corners."""
    pad = [(1, 1), (1, 1)] + [(0, 0)] * (x.ndim - 2)
    ext = np.pad(x, pad, mode="reflect")
    ext[0, 0] = ext[0, -1] = ext[-1, 0] = ext[-1, -1] = 0.0  # es2 leaves the corners at zero
    rows, cols = x.shape[:2]
    return sum(ext[dy:dy + rows, dx:dx + cols] for dy in range(3) for dx in range(3))


def band_fuse(
    level_a: np.ndarray, level_b: np.ndarray, weight: np.ndarray, threshold: float = SIMILARITY_THRESHOLD
) -> np.ndarray:
    """Fuse one pyramid level by Burt's local-energy match rule.

    Args:
        level_a: first source's level, ``(h, w)`` or ``(h, w, C)``.
        level_b: second source's level, same shape.
        weight: weight of the first source at this level, ``(h, w)``.
        threshold: match level above which the weighted average is used (strictly greater).

    Returns:
        the fused level, float64, the shape of ``level_a``.
    """
    level_a, level_b = np.asarray(level_a, dtype=np.float64), np.asarray(level_b, dtype=np.float64)
    w = np.asarray(weight, dtype=np.float64)
    if level_a.ndim == 3:
        w = w[..., None]
    energy_a = _local_sum3(level_a * level_a)
    energy_b = _local_sum3(level_b * level_b)
    match = 2.0 * _local_sum3(level_a * level_b) / (energy_a + energy_b + np.finfo(np.float64).eps)
    selected = np.where(energy_a > energy_b, level_a, level_b)
    averaged = w * level_a + (1.0 - w) * level_b
    return np.where(match > threshold, averaged, selected)


def fuse_with_map(
    a: np.ndarray, b: np.ndarray, weight: np.ndarray, threshold: float = SIMILARITY_THRESHOLD
) -> np.ndarray:
    """Pyramid fusion of two sources with a given weight map of the first.

    Args:
        a: first source, float ``(H, W)`` or ``(H, W, C)`` in [0, 1].
        b: second source, same shape.
        weight: ``(H, W)`` weight of ``a`` in [0, 1].
        threshold: similarity threshold of :func:`band_fuse`.

    Returns:
        the fused image, float64 in [0, 1] (clipped, as the reference's conversion to uint8 does).
    """
    levels = default_levels(a.shape)
    pyr_w = gaussian_pyramid(weight, levels)
    pyr_a = laplacian_pyramid(a, levels)
    pyr_b = laplacian_pyramid(b, levels)
    fused = [band_fuse(la, lb, lw, threshold) for la, lb, lw in zip(pyr_a, pyr_b, pyr_w)]
    return np.clip(reconstruct_laplacian(fused), 0.0, 1.0)


def fuse(
    a: np.ndarray, b: np.ndarray, weights: PathLike | None = None, device: Device | None = None
) -> np.ndarray:
    """Fuse two grayscale images with LP-CNN.

    Args:
        a: first source, float ``(H, W)`` in [0, 1] (at least 15x15). VIFB passes the infrared here.
        b: second source, same size.
        weights: path of ``cnnmodel.mat``; default ``$FUSION_LPCNN_WEIGHTS`` or
            ``../shared/data/lpcnn/cnnmodel.mat`` relative to the current directory.
        device: torch device for the network; default CUDA when available, else CPU.

    Returns:
        the fused image, float64 ``(H, W)`` in [0, 1].

    Raises:
        FileNotFoundError: the weights file is missing (the message says where to get it).
        ValueError: bad images, or a file that is not the LP-CNN model.
    """
    a, b = _check_pair(a, b, ndim=(2,))
    return fuse_with_map(a, b, weight_map(a, b, weights, device))


def fuse_per_channel(
    a: np.ndarray, b: np.ndarray, weights: PathLike | None = None, device: Device | None = None
) -> np.ndarray:
    """VIFB's colour mode: one weight map from the grayscales, every RGB channel fused with it.

    Args:
        a: first source, float ``(H, W, 3)`` or ``(H, W)`` in [0, 1]; a gray source is used as its own
            grayscale and repeated into three channels, as VIFB does.
        b: second source, same height and width.
        weights: path of ``cnnmodel.mat`` (see :func:`fuse`).
        device: torch device (see :func:`fuse`).

    Returns:
        the fused image, float64 ``(H, W, 3)`` in [0, 1].

    Raises:
        FileNotFoundError: the weights file is missing.
        ValueError: bad images, or a file that is not the LP-CNN model.
    """
    a, b = _check_pair(a, b, ndim=(2, 3))
    gray_a = rgb2gray(a) if a.ndim == 3 else a
    gray_b = rgb2gray(b) if b.ndim == 3 else b
    weight = weight_map(gray_a, gray_b, weights, device)
    rgb_a = a if a.ndim == 3 else np.repeat(a[..., None], 3, axis=2)
    rgb_b = b if b.ndim == 3 else np.repeat(b[..., None], 3, axis=2)
    return fuse_with_map(rgb_a, rgb_b, weight)
