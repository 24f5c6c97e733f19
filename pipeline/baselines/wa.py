"""Weighted averaging (WA): ``F = w_a * A + w_b * B``, the simplest fusion baseline.

The weights are normalised to sum to 1 (``w_a / (w_a + w_b)``), so ``weight_a=1, weight_b=3`` means
25% / 75%; the default is the plain mean (0.5 / 0.5). Negative weights are refused, since the result
must stay a convex combination inside [0, 1]. Library images are float in [0, 1].
"""

from __future__ import annotations

import numpy as np

__all__ = ["fuse"]


def fuse(a: np.ndarray, b: np.ndarray, weight_a: float = 0.5, weight_b: float = 0.5) -> np.ndarray:
    """Weighted average of two images of one shape.

    Args:
        a: first source, float array in [0, 1] (any shape; gray ``(H, W)`` in the registry).
        b: second source, same shape.
        weight_a: weight of ``a`` (>= 0).
        weight_b: weight of ``b`` (>= 0); the two are normalised to sum to 1.

    Returns:
        float64 array ``w_a * a + w_b * b`` with ``w_a + w_b = 1``.

    Raises:
        ValueError: shapes differ, a weight is negative or not finite, or both weights are 0.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"wa: the sources differ in shape ({a.shape} vs {b.shape})")
    weights = np.array([weight_a, weight_b], dtype=np.float64)
    if not np.isfinite(weights).all() or (weights < 0).any() or weights.sum() <= 0:
        raise ValueError(f"wa: weights must be finite, >= 0 and not both 0, got {weight_a}, {weight_b}")
    w_a, w_b = weights / weights.sum()
    return w_a * a + w_b * b
