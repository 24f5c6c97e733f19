"""Information-theoretic fusion metrics: ``Q_MI``, ``Q_NCIE``, ``MI`` and ``CE``.

Every metric takes the two sources ``a``, ``b`` and the fused image ``f`` as 2D grayscale arrays
in 0..255 (``uint8`` or float), the range of the reference MATLAB toolboxes; library images,
which are float in [0, 1], must be multiplied by 255 first. Inputs are converted to float64 at
the boundary, as the MATLAB code does with ``double()``.

Two reference implementations are reproduced, and they bin grey levels differently:

- ``Q_MI`` and ``Q_NCIE`` follow Liu et al.'s TPAMI 2012 toolbox (``metricMI`` with ``sw=1``,
  ``metricWang``): each image is first stretched to 0..255 and rounded (the toolbox's
  ``normalize1``), then a 256x256 joint histogram of the integer levels is built; logs are base 2.
- ``MI`` and ``CE`` follow VIFB (``metricsMutinf``, ``metricsCross_entropy``): ``MI`` stretches
  each image to 0..255 on its own and uses natural logs (nats); ``CE`` histograms the raw
  integer grey levels with no stretching and uses base-2 logs.

Undefined cases (only possible with constant images) never yield NaN silently: each function
documents the number it returns instead, and ``strict=True`` raises :class:`ValueError`.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from pipeline.metrics.checks import check_triple

__all__ = [
    "q_mi",
    "q_ncie",
    "mutual_information",
    "cross_entropy",
    "matlab_round",
    "stretch_to_gray_levels",
    "joint_histogram",
]

_LEVELS = 256


def matlab_round(x: np.ndarray) -> np.ndarray:
    """Round half away from zero, as MATLAB's ``round`` (numpy rounds half to even)."""
    x = np.asarray(x, dtype=np.float64)
    mag = np.abs(x)
    low = np.floor(mag)
    # mag - low is exact in float64, so the 0.5 comparison is too (floor(x + 0.5) is not).
    return np.copysign(low + (mag - low >= 0.5), x)


def stretch_to_gray_levels(image: np.ndarray) -> np.ndarray:
    """Stretch an image linearly to 0..255 and round to integers (the TPAMI toolbox's ``normalize1``).

    An all-zero image is returned unchanged, as in the toolbox. Any other constant image, which
    the toolbox turns into NaN (0/0), becomes all zeros here: it holds a single grey level.

    Args:
        image: 2D float array.

    Returns:
        float64 array of integer values in 0..255.
    """
    top, bottom = float(image.max()), float(image.min())
    if top == bottom:
        return np.zeros_like(image, dtype=np.float64)
    return matlab_round((image - bottom) / (top - bottom) * 255.0)


def joint_histogram(x_levels: np.ndarray, y_levels: np.ndarray) -> np.ndarray:
    """Normalised 256x256 joint histogram of two integer-level images (rows: ``x``, columns: ``y``).

    Args:
        x_levels: integer grey levels 0..255 (float or int array).
        y_levels: same shape as ``x_levels``.

    Returns:
        float64 ``(256, 256)`` probabilities summing to 1.
    """
    index = x_levels.astype(np.int64).ravel() * _LEVELS + y_levels.astype(np.int64).ravel()
    counts = np.bincount(index, minlength=_LEVELS * _LEVELS).astype(np.float64)
    return (counts / counts.sum()).reshape(_LEVELS, _LEVELS)


def _entropy(p: np.ndarray, log: Callable[[np.ndarray], np.ndarray] = np.log2) -> float:
    """Shannon entropy of a probability array, with 0 log 0 = 0."""
    nz = p[p > 0]
    return float(-(nz * log(nz)).sum())


def _histogram_entropies(x_levels: np.ndarray, y_levels: np.ndarray,
                         log: Callable[[np.ndarray], np.ndarray] = np.log2) -> tuple[float, float, float]:
    """Marginal entropies H(x), H(y) and joint entropy H(x, y) of two integer-level images."""
    joint = joint_histogram(x_levels, y_levels)
    return _entropy(joint.sum(axis=1), log), _entropy(joint.sum(axis=0), log), _entropy(joint, log)


def _undefined(strict: bool, message: str, value: float) -> float:
    if strict:
        raise ValueError(message)
    return value


def q_mi(a: np.ndarray, b: np.ndarray, f: np.ndarray, *, strict: bool = False) -> float:
    """Hossny's normalised mutual information ``Q_MI`` (TPAMI toolbox ``metricMI``, ``sw=1``).

    ``Q_MI = 2 * [ I(A,F) / (H(A) + H(F)) + I(B,F) / (H(B) + H(F)) ]`` on the toolbox's
    stretched-and-rounded 256-level histograms, base-2 logs. Range [0, 2]; 2 when A = B = F.

    Args:
        a: first source, 2D, 0..255 (library images: multiply by 255 first).
        b: second source, same shape.
        f: fused image, same shape.
        strict: raise instead of applying the flat-image rule below.

    Returns:
        the metric as a Python float. Rule for the undefined case: when a source and ``f`` are
        both constant (H(X) + H(F) = 0, the reference gives NaN), that source's term is 0.

    Raises:
        ValueError: bad shapes or values; with ``strict``, a term is undefined.
    """
    a, b, f = check_triple(a, b, f)
    fl = stretch_to_gray_levels(f)
    total = 0.0
    for name, src in (("a", a), ("b", b)):
        h_x, h_f, h_xf = _histogram_entropies(stretch_to_gray_levels(src), fl)
        denom = h_x + h_f
        if denom == 0.0:
            total += _undefined(strict, f"Q_MI is undefined: {name} and f are both constant images", 0.0)
        else:
            total += (h_x + h_f - h_xf) / denom
    return float(2.0 * total)


def _nonlinear_correlation(x_levels: np.ndarray, y_levels: np.ndarray) -> float:
    """Wang's nonlinear correlation coefficient: MI with entropies in base 256 (toolbox ``NCC``)."""
    h_x, h_y, h_xy = _histogram_entropies(x_levels, y_levels)
    return (h_x + h_y - h_xy) / np.log2(_LEVELS)


def q_ncie(a: np.ndarray, b: np.ndarray, f: np.ndarray) -> float:
    """Wang's nonlinear correlation information entropy ``Q_NCIE`` (TPAMI toolbox ``metricWang``).

    The three pairwise nonlinear correlation coefficients of A, B, F (mutual information in base
    256 on the toolbox's stretched 256-level histograms) fill a 3x3 correlation matrix R with
    unit diagonal; ``Q_NCIE = 1 + sum_i (l_i/3) log_256(l_i/3)`` over its eigenvalues ``l_i``.
    Range [0, 1]; 1 when all three coefficients are 1.

    Args:
        a: first source, 2D, 0..255 (library images: multiply by 255 first).
        b: second source, same shape.
        f: fused image, same shape.

    Returns:
        the metric as a Python float. ``0 log 0`` is taken as 0, so a singular R (e.g. three
        identical images with a flat 256-level histogram), where the reference gives NaN,
        yields its limit; eigenvalues below 0 from rounding are clipped to 0.

    Raises:
        ValueError: bad shapes or values.
    """
    a, b, f = check_triple(a, b, f)
    al, bl, fl = (stretch_to_gray_levels(x) for x in (a, b, f))
    ncc_ab, ncc_af, ncc_bf = (_nonlinear_correlation(x, y) for x, y in ((al, bl), (al, fl), (bl, fl)))
    r = np.array([[1.0, ncc_ab, ncc_af], [ncc_ab, 1.0, ncc_bf], [ncc_af, ncc_bf, 1.0]])
    eig = np.clip(np.linalg.eigvalsh(r), 0.0, None) / 3.0
    nz = eig[eig > 0]
    hr = -float((nz * np.log2(nz)).sum()) / np.log2(_LEVELS)
    return float(1.0 - hr)


def _vifb_levels(image: np.ndarray) -> np.ndarray:
    """VIFB's ``mutinf`` binning: stretch to [0, 1], then ``int16(x * 255)`` (round half away)."""
    top, bottom = float(image.max()), float(image.min())
    if top == bottom:
        return np.zeros_like(image)
    return matlab_round((image - bottom) / (top - bottom) * 255.0)


def mutual_information(a: np.ndarray, b: np.ndarray, f: np.ndarray) -> float:
    """Mutual information ``MI = MI(A, F) + MI(B, F)`` as VIFB computes it (``metricsMutinf``).

    Each image is stretched to 0..255 on its own and rounded (a constant image becomes all 0),
    a 256x256 joint histogram is built, and entropies use natural logs, so the value is in nats.
    Always defined (no flat-image rule needed). VIFB averages this over RGB channels for colour.

    Args:
        a: first source, 2D, 0..255 (library images: multiply by 255 first).
        b: second source, same shape.
        f: fused image, same shape.

    Returns:
        the metric as a Python float (nats).

    Raises:
        ValueError: bad shapes or values.
    """
    a, b, f = check_triple(a, b, f)
    fl = _vifb_levels(f)
    total = 0.0
    for src in (a, b):
        h_x, h_f, h_xf = _histogram_entropies(_vifb_levels(src), fl, log=np.log)
        total += h_x + h_f - h_xf
    return float(total)


def _gray_level_histogram(image: np.ndarray, name: str) -> np.ndarray:
    levels = matlab_round(image)
    if levels.min() < 0 or levels.max() > _LEVELS - 1:
        raise ValueError(f"{name}: cross entropy needs grey levels in 0..255, got "
                         f"{image.min():g}..{image.max():g}; library images must be multiplied by 255")
    counts = np.bincount(levels.astype(np.int64).ravel(), minlength=_LEVELS).astype(np.float64)
    return counts / levels.size


def _relative_entropy(p: np.ndarray, q: np.ndarray) -> float:
    """VIFB's ``cross_entropy``: sum of p log2(p/q) over levels where both p and q are non-zero."""
    both = (p > 0) & (q > 0)
    return float((p[both] * np.log2(p[both] / q[both])).sum())


def cross_entropy(a: np.ndarray, b: np.ndarray, f: np.ndarray) -> float:
    """Cross entropy ``CE = (CE(A, F) + CE(B, F)) / 2`` as VIFB computes it (``metricsCross_entropy``).

    ``CE(X, F) = sum_l p_X(l) log2(p_X(l) / p_F(l))`` over the raw grey-level histograms (no
    stretching), summing only the levels present in both images, as VIFB does (so it is always
    finite). Lower is better; 0 when the histograms of A, B and F are equal.

    Args:
        a: first source, 2D, integer grey levels 0..255 (float inputs are rounded).
        b: second source, same shape.
        f: fused image, same shape.

    Returns:
        the metric as a Python float (bits).

    Raises:
        ValueError: bad shapes or values, or grey levels outside 0..255.
    """
    a, b, f = check_triple(a, b, f)
    pf = _gray_level_histogram(f, "f")
    ce_a = _relative_entropy(_gray_level_histogram(a, "a"), pf)
    ce_b = _relative_entropy(_gray_level_histogram(b, "b"), pf)
    return float((ce_a + ce_b) / 2.0)
