"""Input checks shared by the metric modules: one place that turns an image into MATLAB's ``double()``.

Metrics take 2D grayscale images in 0..255 (uint8 or float), like the reference toolboxes; colour
is reduced by the registry (:func:`pipeline.metrics.compute_metrics`) before it reaches them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["as_gray_float", "check_triple"]


def as_gray_float(image: Any, name: str = "image") -> np.ndarray:
    """Return ``image`` as a finite 2D float64 array (MATLAB's ``double()``).

    Args:
        image: 2D grayscale array in 0..255, integer or float.
        name: how the array is called in error messages (``"a"``, ``"b"``, ``"f"``).

    Returns:
        float64 array, shape unchanged (no copy when it is float64 already).

    Raises:
        ValueError: the array is not 2D, not numeric, empty, or holds NaN/Inf.
    """
    arr = np.asarray(image)
    if arr.ndim != 2:
        raise ValueError(f"{name}: expected a 2D grayscale array (H, W) in 0..255, got shape {arr.shape}; "
                         "convert colour images to gray (or the Y channel) or evaluate per channel")
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)
            or arr.dtype == np.bool_):
        raise ValueError(f"{name}: expected an integer or float array, got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    if arr.size == 0:
        raise ValueError(f"{name}: the image is empty")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name}: the image holds NaN or Inf; metrics need finite grey levels 0..255")
    return arr


def check_triple(a: Any, b: Any, f: Any, min_size: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Convert the sources and the fused image with :func:`as_gray_float` and check their grid.

    Args:
        a: first source, 2D, 0..255.
        b: second source.
        f: fused image.
        min_size: smallest height and width the metric can work on.

    Returns:
        the three float64 arrays.

    Raises:
        ValueError: an image is not a finite 2D array, the shapes differ, or they are too small.
    """
    a, b, f = as_gray_float(a, "a"), as_gray_float(b, "b"), as_gray_float(f, "f")
    if not (a.shape == b.shape == f.shape):
        raise ValueError(f"a, b and f must have one shape (same shape), got {a.shape}, {b.shape}, {f.shape}; "
                         "resample them onto one grid first")
    if min(a.shape) < min_size:
        raise ValueError(f"images must be at least {min_size}x{min_size} for this metric, got {a.shape}")
    return a, b, f
