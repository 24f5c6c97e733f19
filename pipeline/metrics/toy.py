"""A toy metric showing what adding one takes: ``Q_TOY``, the mean absolute difference of F to A and B.

Images are 0..255 (``uint8`` or float), like every metric; the library's [0, 1] images are
multiplied by 255 at this boundary.
"""

from __future__ import annotations

import numpy as np

from pipeline.metrics.checks import check_triple

__all__ = ["q_toy"]


def q_toy(a: np.ndarray, b: np.ndarray, f: np.ndarray) -> float:
    """Mean over the two sources of the mean absolute difference to the fused image.

    Args:
        a: first source, 2D, 0..255.
        b: second source.
        f: fused image.

    Returns:
        the value in gray levels (0 when F equals both sources; smaller is better).
    """
    a, b, f = check_triple(a, b, f)
    return float((np.abs(f - a).mean() + np.abs(f - b).mean()) / 2.0)
