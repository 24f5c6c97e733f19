"""Guided filtering fusion (GFF): Li, Kang and Hu, "Image fusion with guided filtering", IEEE TIP 2013.

A faithful re-implementation of the authors' MATLAB code (Kang, 2013), detail for detail, so that
it reproduces their published outputs (``golden/mfif/*_gff.tif``) to the grey level:

1. **saliency**: ``|Laplacian|`` (3x3 ``[0 1 0; 1 -4 1; 0 1 0]``, replicated borders), then an
   11x11 Gaussian with sigma 5 (replicated borders); ``S += 1e-12`` and ``S /= sum_n S``.
   Both filters are evaluated in MATLAB ``imfilter``'s floating-point order: the Laplacian as the
   running sum left + up + down - 4 centre + right, the Gaussian as ``imfilter`` does for a
   rank-one kernel (split by SVD into a row and a column kernel, rows first, taps summed in
   order). This matters: where the two sources differ by a constant (e.g. flat areas of 41 and
   43), their saliencies are equal in exact arithmetic and only rounding decides the winner. The
   orders were chosen by matching the golden outputs: scipy's own order puts far more pixels off
   by one (the README's validation table gives both agreements; ``tests/test_gff.py`` asserts them).
2. **initial weights**: ``P_n = 1`` where source ``n`` has the largest saliency; ties go to the
   *first* source (MATLAB's ``max`` returns the first index).
3. **weight refinement**: He's guided filter (O(1) box filter by cumulative sums, normalised by
   the true window size ``N`` at the borders) of ``P_n`` guided by source ``n``: radius ``r1``,
   ``eps1`` for the base weights, ``r2``, ``eps2`` for the detail weights. Each map is then
   *quantised to 8 bits* exactly as the original does (``uint8(W*255)/255``: clips to [0, 1] and
   rounds half away from zero), ``+ 1e-12`` and normalised to sum 1 over the sources.
4. **two-scale fusion**: base ``B = 31x31 mean`` (replicated borders), detail ``D = I - B``;
   ``F = sum_n W_B,n * B_n + W_D,n * D_n``.

The original returns ``uint8(F*255)``; :func:`fuse` returns ``F`` clipped to [0, 1], so writing it
with :func:`pipeline.io.write_png` (``round(F*255)``) gives the same bytes except on exact
``.5`` ties (numpy rounds them to even, MATLAB away from zero).

Colour: the original computes saliency and guidance on the MATLAB ``rgb2gray`` of each colour source
(rounded to 8 bits, as MATLAB does on ``uint8`` input) and fuses every RGB channel with those
weights: that is :func:`fuse_per_channel`.

Library images are float in [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.ndimage import uniform_filter

from pipeline.baselines.matlab_ops import fspecial_gaussian, matlab_uint8, rgb2gray

__all__ = ["DEFAULTS", "box_filter", "guided_filter", "saliency_weights", "fuse", "fuse_per_channel"]

#: The paper's and the code's default parameters.
DEFAULTS = {"r1": 45, "eps1": 0.3, "r2": 7, "eps2": 1e-6}

def _rank_one_factors(kernel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column and row factors of a rank-one kernel by SVD, as MATLAB's ``imfilter`` splits it."""
    u, s, vt = np.linalg.svd(kernel)
    return u[:, 0] * np.sqrt(s[0]), vt[0] * np.sqrt(s[0])


_GAUSSIAN_COL, _GAUSSIAN_ROW = _rank_one_factors(fspecial_gaussian(11, 5.0))
_BASE_SIZE = 31
_TINY = 1e-12  # the original's guard against division by zero


def _laplacian_abs(img: np.ndarray) -> np.ndarray:
    """``|imfilter(img, [0 1 0; 1 -4 1; 0 1 0], 'replicate')|`` summed in MATLAB's order."""
    padded = np.pad(img, 1, mode="edge")
    h, w = img.shape
    up, down = padded[0:h, 1:w + 1], padded[2:h + 2, 1:w + 1]
    left, right = padded[1:h + 1, 0:w], padded[1:h + 1, 2:w + 2]
    return np.abs((((left + up) + down) + (-4.0 * img)) + right)


def _correlate_1d_in_order(img: np.ndarray, taps: np.ndarray, axis: int) -> np.ndarray:
    """Correlation with replicated borders, taps accumulated one by one from the first."""
    radius = len(taps) // 2
    pad = [(0, 0), (0, 0)]
    pad[axis] = (radius, radius)
    padded = np.pad(img, pad, mode="edge")
    n = img.shape[axis]
    out = np.zeros_like(img)
    for k, tap in enumerate(taps):
        window = [slice(None), slice(None)]
        window[axis] = slice(k, k + n)
        out = out + padded[tuple(window)] * tap
    return out


def _gaussian_saliency(lap_abs: np.ndarray) -> np.ndarray:
    """``imfilter(H, fspecial('gaussian', 11, 5), 'replicate')`` the way MATLAB evaluates it."""
    rows_done = _correlate_1d_in_order(lap_abs, _GAUSSIAN_ROW, axis=1)
    return _correlate_1d_in_order(rows_done, _GAUSSIAN_COL, axis=0)


def _box_sum_1d(img: np.ndarray, r: int, axis: int) -> np.ndarray:
    """Window sum of radius ``r`` along ``axis`` by cumulative sums, windows clipped at the borders.

    Same arithmetic as He's ``boxfilter.m`` (``C[i+r] - C[i-r-1]``, with ``C[n-1]`` past the end
    and no subtraction before the start), but also valid when the image is shorter than ``2r+2``.
    """
    n = img.shape[axis]
    cum = np.cumsum(img, axis=axis)
    idx = np.arange(n)
    upper = np.take(cum, np.minimum(idx + r, n - 1), axis=axis)
    lower_idx = idx - r - 1
    out = upper.copy()
    has_lower = lower_idx >= 0
    if has_lower.any():
        sl = [slice(None)] * img.ndim
        sl[axis] = np.nonzero(has_lower)[0]
        out[tuple(sl)] = upper[tuple(sl)] - np.take(cum, lower_idx[has_lower], axis=axis)
    return out


def box_filter(img: np.ndarray, r: int) -> np.ndarray:
    """Sum over the ``(2r+1) x (2r+1)`` window around each pixel, clipped at the image borders.

    Args:
        img: float ``(H, W)`` array.
        r: window radius (>= 0).

    Returns:
        float64 ``(H, W)`` window sums (divide by ``box_filter(ones, r)`` for means).
    """
    return _box_sum_1d(_box_sum_1d(np.asarray(img, dtype=np.float64), r, axis=0), r, axis=1)


def guided_filter(guide: np.ndarray, src: np.ndarray, r: int, eps: float) -> np.ndarray:
    """He, Sun and Tang's guided filter (gray guide), as in their ``guidedfilter.m``.

    Args:
        guide: float ``(H, W)`` guidance image (library images are float in [0, 1]).
        src: float ``(H, W)`` image to filter.
        r: window radius.
        eps: regularisation.

    Returns:
        float64 ``(H, W)`` filtered image (not clipped).
    """
    guide = np.asarray(guide, dtype=np.float64)
    src = np.asarray(src, dtype=np.float64)
    count = box_filter(np.ones_like(guide), r)  # true window size, smaller at the borders
    mean_i = box_filter(guide, r) / count
    mean_p = box_filter(src, r) / count
    mean_ip = box_filter(guide * src, r) / count
    cov_ip = mean_ip - mean_i * mean_p
    mean_ii = box_filter(guide * guide, r) / count
    var_i = mean_ii - mean_i * mean_i
    a = cov_ip / (var_i + eps)
    b = mean_p - a * mean_i
    return (box_filter(a, r) / count) * guide + box_filter(b, r) / count


def _quantised_normalised(maps: list[np.ndarray]) -> list[np.ndarray]:
    """The original's ``uint8(W*255)/255``, ``+1e-12``, then normalisation over the sources."""
    quantised = [matlab_uint8(w * 255.0).astype(np.float64) / 255.0 + _TINY for w in maps]
    total = np.sum(quantised, axis=0)
    return [w / total for w in quantised]


def saliency_weights(
    guides: Sequence[np.ndarray], r1: int = 45, eps1: float = 0.3, r2: int = 7, eps2: float = 1e-6
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Base and detail weight maps of GFF from gray sources (steps 1-3 of the module docstring).

    Args:
        guides: gray ``(H, W)`` float sources in [0, 1], in fusion order (ties go to the first).
        r1, eps1: guided filter of the base weights.
        r2, eps2: guided filter of the detail weights.

    Returns:
        ``(base_weights, detail_weights)``: one ``(H, W)`` map per source, each set summing to 1.
    """
    guides = [np.asarray(g, dtype=np.float64) for g in guides]
    saliency = np.stack([_gaussian_saliency(_laplacian_abs(g)) for g in guides])
    saliency = saliency + _TINY
    saliency = saliency / saliency.sum(axis=0)
    labels = np.argmax(saliency, axis=0)  # first maximum wins, like MATLAB's max
    initial = [(labels == n).astype(np.float64) for n in range(len(guides))]
    base = _quantised_normalised([guided_filter(g, p, r1, eps1) for g, p in zip(guides, initial)])
    detail = _quantised_normalised([guided_filter(g, p, r2, eps2) for g, p in zip(guides, initial)])
    return base, detail


def _two_scale(sources: Sequence[np.ndarray], base_w: list[np.ndarray], detail_w: list[np.ndarray]) -> np.ndarray:
    fused = None
    for src, wb, wd in zip(sources, base_w, detail_w):
        if src.ndim == 3:
            wb, wd = wb[..., None], wd[..., None]
            size = (_BASE_SIZE, _BASE_SIZE, 1)
        else:
            size = _BASE_SIZE
        base = uniform_filter(src, size=size, mode="nearest")
        term = base * wb + (src - base) * wd
        fused = term if fused is None else fused + term
    assert fused is not None
    return fused


def _check_pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"gff expects two (H, W) sources of one shape, got {a.shape} and {b.shape}")
    return a, b


def fuse(a: np.ndarray, b: np.ndarray, r1: int = 45, eps1: float = 0.3, r2: int = 7, eps2: float = 1e-6) -> np.ndarray:
    """Fuse two gray images with guided filtering fusion (default parameters of the paper).

    Args:
        a: first source, float ``(H, W)`` in [0, 1] (wins saliency ties).
        b: second source, same shape.
        r1, eps1: base-layer guided filter radius and regularisation.
        r2, eps2: detail-layer guided filter radius and regularisation.

    Returns:
        fused float64 ``(H, W)`` image, clipped to [0, 1].

    Raises:
        ValueError: the sources are not two 2D arrays of one shape.
    """
    a, b = _check_pair(a, b)
    base_w, detail_w = saliency_weights([a, b], r1, eps1, r2, eps2)
    return np.clip(_two_scale([a, b], base_w, detail_w), 0.0, 1.0)


def fuse_per_channel(
    a: np.ndarray, b: np.ndarray, r1: int = 45, eps1: float = 0.3, r2: int = 7, eps2: float = 1e-6
) -> np.ndarray:
    """The original code's colour GFF: weights from the 8-bit ``rgb2gray`` of each source, every
    RGB channel fused with them.

    Args:
        a: first source, float ``(H, W, 3)`` RGB or ``(H, W)`` gray in [0, 1]; a gray source is its
            own grayscale and is repeated into three channels.
        b: second source, same height and width.
        r1, eps1, r2, eps2: as in :func:`fuse`.

    Returns:
        fused float64 ``(H, W, 3)`` image, clipped to [0, 1].

    Raises:
        ValueError: the sources are not gray/RGB images of one height and width.
    """
    sources = []
    guides = []
    for name, src in (("a", a), ("b", b)):
        src = np.asarray(src, dtype=np.float64)
        if src.ndim == 2:
            guides.append(src)
            src = np.repeat(src[..., None], 3, axis=2)
        elif src.ndim == 3 and src.shape[2] == 3:
            guides.append(rgb2gray(src))
        else:
            raise ValueError(f"gff: source {name} must be (H, W) or (H, W, 3), got shape {src.shape}")
        sources.append(src)
    if sources[0].shape != sources[1].shape:
        raise ValueError(f"gff: the sources differ in size, {np.shape(a)} and {np.shape(b)}")
    base_w, detail_w = saliency_weights(guides, r1, eps1, r2, eps2)
    return np.clip(_two_scale(sources, base_w, detail_w), 0.0, 1.0)
