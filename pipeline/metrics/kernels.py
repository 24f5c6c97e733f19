"""Small spatial-filter kernels shared by the metric modules, for numpy or torch arrays (``xp``).

The metrics reproduce MATLAB values, and some snap round-off (flat windows) or compare a numpy
result with its torch twin, so these kernels fix the order of the arithmetic: a filter is a sum
of weighted shifted copies taken in the kernel's order. The numpy versions accumulate in place
(no temporary per term) and keep that order, so they round exactly as the torch versions do.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

__all__ = ["weighted_sum", "zero_pad1", "correlate3_same"]


def weighted_sum(terms: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """``sum(w * t)`` over numpy arrays in the order given, accumulated in a new array.

    Multiplying by +-1 is exact, so those terms are added or subtracted as they are. When every
    ``|w|`` is one power of two (a 1/8 box), scaling is exact and commutes with rounding, so the
    sum is scaled once instead. Either way the values are those of the plain sum.

    Args:
        terms: arrays of one shape (views are fine; none is modified).
        weights: one float per term.

    Returns:
        a new float array.
    """
    weights = [float(w) for w in weights]
    scale = abs(weights[0])
    if scale != 1.0 and math.frexp(scale)[0] == 0.5 and all(abs(w) == scale for w in weights):
        out = weighted_sum(terms, [math.copysign(1.0, w) for w in weights])
        return np.multiply(out, scale, out=out)
    first = weights[0]
    out = terms[0].copy() if first == 1.0 else np.negative(terms[0]) if first == -1.0 \
        else np.multiply(terms[0], first)
    scratch = None
    for term, weight in zip(terms[1:], weights[1:]):
        if weight == 1.0:
            out += term
        elif weight == -1.0:
            out -= term
        else:
            scratch = np.empty_like(out) if scratch is None else scratch
            out += np.multiply(term, weight, out=scratch)
    return out


def zero_pad1(xp: Any, x: Any) -> Any:
    """``x`` with one row/column of zeros around its last two axes (numpy or torch)."""
    if xp is np:
        return np.pad(x, [(0, 0)] * (x.ndim - 2) + [(1, 1), (1, 1)])
    import torch.nn.functional as F

    return F.pad(x, (1, 1, 1, 1))


def correlate3_same(xp: Any, x: Any, kernels: Sequence[Sequence[Sequence[float]]]) -> list[Any]:
    """MATLAB ``filter2(kernel, x, 'same')`` for 3x3 kernels over the last two axes.

    Correlation with zero padding (padded once for all the kernels); zero weights are skipped,
    the others summed row by row. Returns one array per kernel.
    """
    h, w = x.shape[-2], x.shape[-1]
    padded = zero_pad1(xp, x)
    results = []
    for kernel in kernels:
        taps = [(i, j) for i in range(3) for j in range(3) if kernel[i][j] != 0.0]
        if xp is np:
            results.append(weighted_sum([padded[..., i : i + h, j : j + w] for i, j in taps],
                                        [kernel[i][j] for i, j in taps]))
            continue
        out = 0.0
        for i, j in taps:
            out = out + kernel[i][j] * padded[..., i : i + h, j : j + w]
        results.append(out)
    return results
