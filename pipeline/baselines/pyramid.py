"""Gaussian and Laplacian pyramids with the conventions of Mertens' exposure-fusion code.

Liu et al.'s LP-CNN (and VIFB's copy of it) builds its pyramids with Tom Mertens' MATLAB helpers
(``gaussian_pyramid``, ``laplacian_pyramid``, ``reconstruct_laplacian_pyramid``, 2007). This module
reproduces their arithmetic exactly, so that a pyramid fusion here gives the numbers the MATLAB code
gives. The conventions, precisely:

* **filter**: the separable Burt-Adelson 5-tap low-pass ``[1, 4, 6, 4, 1] / 16``
  (:data:`PYRAMID_FILTER`), applied horizontally then vertically.
* **downsample** (one level down): filter with *symmetric* borders (MATLAB ``imfilter(...,
  'symmetric')``: the edge pixel is repeated, ``c b a | a b c``), then keep rows and columns
  ``0, 2, 4, ...``. A side of length ``n`` becomes ``ceil(n / 2)``.
* **upsample** (one level up, to a target size): pad the coarse image by one pixel with *replicated*
  borders, put ``4 * pixel`` at every even position of a zero image twice that size, filter with
  *zero* borders (``imfilter``'s default), then drop two pixels at the top/left and ``2 + odd`` at
  the bottom/right, where ``odd = 2 * coarse_size - target_size`` (0 or 1) per axis.
* **levels**: a pyramid of ``levels`` levels is a list of ``levels`` arrays, finest first. The
  default is MATLAB's ``floor(log(min(H, W)) / log(2))``, the highest possible pyramid.
* **Gaussian pyramid**: ``[img, down(img), down(down(img)), ...]``.
* **Laplacian pyramid**: level ``l < levels - 1`` holds ``G_l - up(G_{l+1})``; the last level holds
  the low-pass residual ``G_{levels-1}`` itself. :func:`reconstruct_laplacian` inverts it exactly
  (up to float rounding): ``R = L_last``, then ``R = L_l + up(R)`` from coarse to fine.

Arrays are float, ``(H, W)`` or ``(H, W, C)`` (channels are filtered independently); library images
are float in [0, 1], but nothing here depends on the range (Laplacian levels are signed).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.ndimage import correlate1d

__all__ = [
    "PYRAMID_FILTER",
    "default_levels",
    "downsample",
    "upsample",
    "gaussian_pyramid",
    "laplacian_pyramid",
    "reconstruct_laplacian",
]

#: Burt-Adelson 5-tap binomial low-pass, as in Mertens' ``pyramid_filter.m``.
PYRAMID_FILTER = np.array([0.0625, 0.25, 0.375, 0.25, 0.0625], dtype=np.float64)


def default_levels(shape: tuple[int, ...]) -> int:
    """MATLAB's default pyramid depth ``floor(log(min(H, W)) / log(2))``.

    Args:
        shape: array shape, ``(H, W)`` or ``(H, W, C)``.

    Returns:
        the number of levels of the highest possible pyramid (at least 1).
    """
    return max(1, math.floor(math.log(min(shape[0], shape[1])) / math.log(2)))


def _filter2d(img: np.ndarray, mode: str) -> np.ndarray:
    """Separable 5-tap filtering along rows then columns; ``mode`` is a scipy.ndimage border mode.

    scipy's ``reflect`` is MATLAB's ``symmetric``; ``constant`` (cval 0) is ``imfilter``'s default.
    """
    out = correlate1d(img, PYRAMID_FILTER, axis=1, mode=mode, cval=0.0)
    return correlate1d(out, PYRAMID_FILTER, axis=0, mode=mode, cval=0.0)


def _as_float(img: np.ndarray) -> np.ndarray:
    arr = np.asarray(img, dtype=np.float64)
    if arr.ndim not in (2, 3):
        raise ValueError(f"expected an (H, W) or (H, W, C) image, got shape {arr.shape}")
    return arr


def downsample(img: np.ndarray) -> np.ndarray:
    """Low-pass with symmetric borders and keep every other row/column (starting at 0).

    Args:
        img: float ``(H, W)`` or ``(H, W, C)`` array.

    Returns:
        float64 array of size ``(ceil(H/2), ceil(W/2)[, C])``.
    """
    low = _filter2d(_as_float(img), mode="reflect")
    return low[::2, ::2]


def upsample(img: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Expand a coarse level to ``shape`` (the finer level's height and width), Mertens-style.

    Args:
        img: float ``(h, w)`` or ``(h, w, C)`` coarse array.
        shape: target ``(H, W)``, with ``2h - H`` and ``2w - W`` in {0, 1}.

    Returns:
        float64 array of height and width ``shape``.

    Raises:
        ValueError: ``shape`` is not a size whose downsampling gives ``img``'s size.
    """
    arr = _as_float(img)
    odd = (2 * arr.shape[0] - shape[0], 2 * arr.shape[1] - shape[1])
    if odd[0] not in (0, 1) or odd[1] not in (0, 1):
        raise ValueError(f"cannot upsample a {arr.shape[:2]} level to {tuple(shape)}: "
                         "the target must be the size the level was downsampled from")
    pad = [(1, 1), (1, 1)] + [(0, 0)] * (arr.ndim - 2)
    arr = np.pad(arr, pad, mode="edge")
    rows, cols = 2 * arr.shape[0], 2 * arr.shape[1]
    big = np.zeros((rows, cols) + arr.shape[2:], dtype=np.float64)
    big[::2, ::2] = 4.0 * arr  # 4 = 2 x 2: each axis's zeros halve the filter's gain
    big = _filter2d(big, mode="constant")
    return big[2:rows - 2 - odd[0], 2:cols - 2 - odd[1]]


def gaussian_pyramid(img: np.ndarray, levels: int | None = None) -> list[np.ndarray]:
    """Gaussian pyramid, finest first: ``[img, down(img), ...]`` with ``levels`` entries.

    Args:
        img: float ``(H, W)`` or ``(H, W, C)`` array (library images are float in [0, 1]).
        levels: number of levels; default :func:`default_levels`.

    Returns:
        list of float64 arrays; entry 0 is a copy of ``img``.

    Raises:
        ValueError: ``levels`` < 1 or the image is not 2D/3D.
    """
    current = _as_float(img).copy()
    levels = default_levels(current.shape) if levels is None else int(levels)
    if levels < 1:
        raise ValueError(f"a pyramid needs at least 1 level, got levels={levels}")
    pyr = [current]
    for _ in range(1, levels):
        current = downsample(current)
        pyr.append(current)
    return pyr


def laplacian_pyramid(img: np.ndarray, levels: int | None = None) -> list[np.ndarray]:
    """Laplacian pyramid, finest first; the last entry is the low-pass residual.

    Args:
        img: float ``(H, W)`` or ``(H, W, C)`` array (library images are float in [0, 1]).
        levels: number of levels; default :func:`default_levels`.

    Returns:
        list of ``levels`` float64 arrays: band-pass details ``G_l - up(G_{l+1})``, then ``G_last``.

    Raises:
        ValueError: ``levels`` < 1 or the image is not 2D/3D.
    """
    current = _as_float(img)
    levels = default_levels(current.shape) if levels is None else int(levels)
    if levels < 1:
        raise ValueError(f"a pyramid needs at least 1 level, got levels={levels}")
    pyr: list[np.ndarray] = []
    for _ in range(levels - 1):
        coarse = downsample(current)
        pyr.append(current - upsample(coarse, current.shape[:2]))
        current = coarse
    pyr.append(current.copy())
    return pyr


def reconstruct_laplacian(pyr: list[np.ndarray]) -> np.ndarray:
    """Collapse a Laplacian pyramid (as built by :func:`laplacian_pyramid`) into an image.

    Args:
        pyr: list of levels, finest first, the last being the low-pass residual.

    Returns:
        float64 image of the finest level's size (not clipped).

    Raises:
        ValueError: the pyramid is empty.
    """
    if len(pyr) == 0:
        raise ValueError("cannot reconstruct an empty pyramid")
    result = _as_float(pyr[-1])
    for level in reversed(pyr[:-1]):
        level = _as_float(level)
        result = level + upsample(result, level.shape[:2])
    return result
