"""Choose-max (MAX): ``F = max(A, B)`` per pixel, the field's plain reference rule.

It keeps every bright structure at its source intensity (CT bone, PET/SPECT uptake) and is the
pixel-level form of the choose-max rule that IFCNN applies to convolutional features (Zhang et al.,
Information Fusion 2020, "IFCNN-MAX"); CDDFuse's and SwinFusion's losses pull towards it too.
Library images are float in [0, 1].
"""

from __future__ import annotations

import numpy as np

__all__ = ["fuse"]


def fuse(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-pixel maximum of two images of one shape.

    Args:
        a: first source, float array in [0, 1].
        b: second source, same shape.

    Returns:
        float64 array ``max(a, b)``.

    Raises:
        ValueError: the shapes differ.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"max: the sources differ in shape ({a.shape} vs {b.shape})")
    return np.maximum(a, b)
