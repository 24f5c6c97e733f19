"""Laplacian pyramid (LP) fusion: the Burt-Adelson multi-scale baseline.

Both sources are decomposed with :func:`pipeline.baselines.pyramid.laplacian_pyramid` (5-tap
binomial filter, Mertens' border conventions); every band-pass level takes, pixel by pixel, the
coefficient of larger absolute value (ties: the first source), the low-pass top level is averaged,
and the pyramid is collapsed. Default 4 levels (3 band-pass + the top), capped at the depth the
image size allows. Fusing an image with itself returns it (up to float rounding). Library images
are float in [0, 1].
"""

from __future__ import annotations

import numpy as np

from pipeline.baselines.pyramid import default_levels, laplacian_pyramid, reconstruct_laplacian

__all__ = ["DEFAULT_LEVELS", "fuse"]

DEFAULT_LEVELS = 4


def fuse(a: np.ndarray, b: np.ndarray, levels: int = DEFAULT_LEVELS) -> np.ndarray:
    """Fuse two gray images in a Laplacian pyramid (max-abs details, mean top).

    Args:
        a: first source, float ``(H, W)`` in [0, 1].
        b: second source, same shape.
        levels: pyramid levels including the low-pass top (>= 1; 1 is plain averaging), capped at
            :func:`pipeline.baselines.pyramid.default_levels` of the image size.

    Returns:
        fused float64 ``(H, W)`` image, clipped to [0, 1].

    Raises:
        ValueError: shapes differ or are not 2D, or ``levels`` < 1.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"lp expects two (H, W) sources of one shape, got {a.shape} and {b.shape}")
    if int(levels) < 1:
        raise ValueError(f"lp: levels must be >= 1, got {levels}")
    levels = min(int(levels), default_levels(a.shape))
    pyr_a, pyr_b = laplacian_pyramid(a, levels), laplacian_pyramid(b, levels)
    fused = [np.where(np.abs(la) >= np.abs(lb), la, lb) for la, lb in zip(pyr_a[:-1], pyr_b[:-1])]
    fused.append((pyr_a[-1] + pyr_b[-1]) / 2.0)
    return np.clip(reconstruct_laplacian(fused), 0.0, 1.0)
