"""Colour handling for PET/SPECT + MRI pairs: fuse the luminance, keep the source's colour.

The medical fusion literature fuses a pseudo-colour functional image (PET, SPECT) with a gray MRI
in YCbCr: the Y channel is fused with the MRI like any grayscale pair, then the Cb and Cr channels
of the colour source are put back. We use the full-range ITU-R BT.601 transform (the JPEG one), so
that ``ycbcr_to_rgb(rgb_to_ycbcr(x))`` round-trips exactly up to float rounding and gray maps to
Cb = Cr = 0.5. Arrays are float in [0, 1] (the library's convention after loading).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

__all__ = ["rgb_to_ycbcr", "ycbcr_to_rgb", "fuse_with_colour"]

_RGB2YCBCR = np.array(
    [[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]], dtype=np.float64
)
_YCBCR2RGB = np.linalg.inv(_RGB2YCBCR)


def rgb_to_ycbcr(rgb: np.ndarray) -> np.ndarray:
    """RGB in [0, 1], ``(..., 3)`` -> YCbCr in [0, 1], ``(..., 3)`` (Cb, Cr offset by 0.5).

    Args:
        rgb: float array, last axis R, G, B in [0, 1].

    Returns:
        float64 array, last axis Y, Cb, Cr.
    """
    ycc = np.asarray(rgb, dtype=np.float64) @ _RGB2YCBCR.T
    ycc[..., 1:] += 0.5
    return ycc


def ycbcr_to_rgb(ycbcr: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rgb_to_ycbcr`; the result is clipped to [0, 1].

    Args:
        ycbcr: float array, last axis Y, Cb, Cr in [0, 1].

    Returns:
        float64 RGB array in [0, 1].
    """
    ycc = np.array(ycbcr, dtype=np.float64, copy=True)
    ycc[..., 1:] -= 0.5
    return np.clip(ycc @ _YCBCR2RGB.T, 0.0, 1.0)


def fuse_with_colour(
    a: np.ndarray, b: np.ndarray, fuse_gray: Callable[[np.ndarray, np.ndarray], np.ndarray]
) -> np.ndarray:
    """Fuse a pair in which either source may be colour, with a grayscale fusion rule.

    Two gray sources go straight to ``fuse_gray``. One colour source: its Y is fused with the gray
    source (in the pair's order) and its Cb/Cr are restored. Two colour sources: Y with Y, and
    the chroma of the source with the more saturated colour is kept.

    Args:
        a: first source, float in [0, 1], ``(H, W)`` or ``(H, W, 3)``.
        b: second source, same height and width.
        fuse_gray: rule taking two ``(H, W)`` float images in [0, 1] and returning one.

    Returns:
        the fused image, ``(H, W)`` for a gray pair, ``(H, W, 3)`` RGB otherwise, float in [0, 1].
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    colour_a, colour_b = a.ndim == 3, b.ndim == 3
    if not (colour_a or colour_b):
        return np.asarray(fuse_gray(a, b), dtype=np.float64)
    ycc_a = rgb_to_ycbcr(a) if colour_a else None
    ycc_b = rgb_to_ycbcr(b) if colour_b else None
    y_a = ycc_a[..., 0] if ycc_a is not None else a
    y_b = ycc_b[..., 0] if ycc_b is not None else b
    if ycc_a is not None and ycc_b is not None:
        sat_a = np.abs(ycc_a[..., 1:] - 0.5).sum()
        sat_b = np.abs(ycc_b[..., 1:] - 0.5).sum()
        chroma = ycc_a if sat_a >= sat_b else ycc_b
    else:
        chroma = ycc_a if ycc_a is not None else ycc_b
    fused = np.empty_like(chroma)
    fused[..., 0] = np.clip(fuse_gray(y_a, y_b), 0.0, 1.0)
    fused[..., 1:] = chroma[..., 1:]
    return ycbcr_to_rgb(fused)
