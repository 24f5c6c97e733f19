"""Human-perception fusion metrics: ``Q_CB`` (Chen-Blum), ``Q_CV`` (Chen-Varshney) and ``VIF``.

Every metric takes the two sources ``a``, ``b`` and the fused image ``f`` as 2D grayscale arrays
in 0..255 (``uint8`` or float), the range of the reference MATLAB toolboxes; library images,
which are float in [0, 1], must be multiplied by 255 first. Inputs become float64 at the boundary.

``Q_CB`` and ``Q_CV`` reproduce Liu et al.'s TPAMI 2012 toolbox (``metricChenBlum``,
``metricChen``); VIFB's ``metricsQcb``/``metricsQcv`` are the same code applied per RGB channel
and averaged, so the same functions reproduce VIFB's values channel by channel. Details kept
from the reference: each image is stretched to 0..255 and rounded first (``normalize1``); the
contrast-sensitivity filters are applied in the frequency domain on ``freqspace`` grids; spatial
filters are MATLAB ``filter2(..., 'same')`` with zero padding; ``Q_CV``'s 16x16 regions are
``blkproc`` blocks, the last ones zero-padded when the size is not a multiple of 16.

``VIF``: VIFB has no VIF metric. The default is the variant of the recent fusion papers'
evaluators: Sheikh and Bovik's multi-scale pixel-domain VIF (LIVE ``vifp_mscale``,
``sigma_nsq = 2``) of each source against F, summed: ``VIF(A, F) + VIF(B, F)``.
``variant="han"`` gives Han et al.'s VIFF (Inf. Fusion 2013; MEFB's ``metricsVIF``) instead.

Undefined cases (flat images) never yield NaN silently: each function documents the number it
returns instead, and ``strict=True`` raises :class:`ValueError`.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy import fft as sfft
from scipy import ndimage

from pipeline.metrics.checks import check_triple
from pipeline.metrics.information import stretch_to_gray_levels

__all__ = ["q_cb", "q_cv", "vif"]


# --------------------------------------------------------------------------------------------
# shared helpers
# --------------------------------------------------------------------------------------------
def _freqspace_radius(shape: tuple[int, int], row_scale: float, col_scale: float) -> np.ndarray:
    """Radial frequency on MATLAB's ``freqspace(shape, 'meshgrid')`` grid (centred layout).

    ``freqspace`` gives ``((0:n-1) - floor(n/2)) * 2/n`` per axis; the toolbox then multiplies
    the column axis by ``col_scale`` and the row axis by ``row_scale``.
    """
    rows, cols = shape
    u = (np.arange(cols) - cols // 2) * (2.0 / cols) * col_scale
    v = (np.arange(rows) - rows // 2) * (2.0 / rows) * row_scale
    return np.sqrt(u[None, :] ** 2 + v[:, None] ** 2)


def _filter_frequency_domain(images: np.ndarray, centred_response: np.ndarray) -> np.ndarray:
    """``ifft2(ifftshift(fftshift(fft2(x)) .* S))`` for real images and a symmetric real S.

    The response is radially symmetric on the ``freqspace`` grid, so the product is exactly
    conjugate-symmetric and MATLAB returns a real image; a real FFT gives the same values.
    """
    shape = images.shape[-2:]
    response = np.fft.ifftshift(centred_response)[:, : shape[1] // 2 + 1]
    return sfft.irfft2(sfft.rfft2(images) * response, s=shape)


def _undefined(strict: bool, message: str) -> None:
    if strict:
        raise ValueError(message)


# --------------------------------------------------------------------------------------------
# Q_CB
# --------------------------------------------------------------------------------------------
# Chen-Blum constants (metricChenBlum): DoG contrast-sensitivity function, and the
# local-contrast masking k C^p / (h C^q + Z).
_CB_F0, _CB_F1, _CB_A = 15.3870, 1.3456, 0.7622
_CB_P, _CB_Q, _CB_Z = 3.0, 2.0, 1e-4
_CB_SIGMAS = (2.0, 4.0)
_CB_HALF = 15  # the toolbox's Gaussians are 31x31 and not normalised


@lru_cache(maxsize=8)
def _cb_csf(shape: tuple[int, int]) -> np.ndarray:
    rows, cols = shape
    r = _freqspace_radius(shape, rows / 30.0, cols / 30.0)
    return np.exp(-((r / _CB_F0) ** 2)) - _CB_A * np.exp(-((r / _CB_F1) ** 2))


def _gaussian_same(images: np.ndarray, sigma: float) -> np.ndarray:
    """``filter2(G, x, 'same')`` with the toolbox's unnormalised 31x31 Gaussian, done separably."""
    x = np.arange(-_CB_HALF, _CB_HALF + 1, dtype=np.float64)
    g = np.exp(-(x * x) / (2.0 * sigma * sigma))
    out = ndimage.correlate1d(images, g, axis=-1, mode="constant", cval=0.0)
    out = ndimage.correlate1d(out, g, axis=-2, mode="constant", cval=0.0)
    return out / (2.0 * np.pi * sigma * sigma)


def _safe_ratio(num: np.ndarray, den: np.ndarray, fill: float) -> np.ndarray:
    """num / den, with ``fill`` where den == 0 (where the reference produces NaN or Inf)."""
    out = np.full(np.broadcast_shapes(num.shape, den.shape), fill, dtype=np.float64)
    np.divide(num, den, out=out, where=den != 0)
    return out


def q_cb(a: np.ndarray, b: np.ndarray, f: np.ndarray, *, strict: bool = False) -> float:
    """Chen-Blum perceptual metric ``Q_CB`` (TPAMI toolbox ``metricChenBlum``; VIFB ``Qcb``).

    The images are filtered with a DoG contrast-sensitivity function, local contrast
    ``|G_2 * x / G_4 * x - 1|`` is masked as ``C^3 / (C^2 + 1e-4)``, and the fused image's
    contrast preservation (min/max ratio with each source) is averaged with saliency weights
    ``C_A^2 / (C_A^2 + C_B^2)``. Range [0, 1]; 1 when A = B = F.

    Args:
        a: first source, 2D, 0..255 (library images: multiply by 255 first).
        b: second source, same shape.
        f: fused image, same shape.
        strict: raise instead of applying the flat-region rules below.

    Returns:
        the metric as a Python float. Rules where the reference divides 0 by 0 (flat regions):
        a pixel whose contrast denominator ``G_4 * x`` is 0 has contrast 0; where a source and F
        both have zero masked contrast the preservation is 1; where both sources have zero
        masked contrast the saliency weights are 1/2 each.

    Raises:
        ValueError: bad shapes or values; with ``strict``, any of the rules above is needed.
    """
    a, b, f = check_triple(a, b, f)
    stack = np.stack([stretch_to_gray_levels(x) for x in (a, b, f)])
    filtered = _filter_frequency_domain(stack, _cb_csf(stack.shape[-2:]))
    narrow = _gaussian_same(filtered, _CB_SIGMAS[0])
    wide = _gaussian_same(filtered, _CB_SIGMAS[1])
    if strict and (wide == 0).any():
        _undefined(strict, "Q_CB is undefined: a local mean of the CSF-filtered image is exactly 0")
    contrast = np.abs(_safe_ratio(narrow, wide, 1.0) - 1.0)  # no local mean: contrast 0
    masked = contrast**_CB_P / (contrast**_CB_Q + _CB_Z)
    ca, cb, cf = masked

    def preservation(cs: np.ndarray) -> np.ndarray:
        if strict and ((cs == 0) & (cf == 0)).any():
            _undefined(strict, "Q_CB is undefined: a source and f both have zero contrast at a pixel")
        low, high = np.minimum(cs, cf), np.maximum(cs, cf)
        return _safe_ratio(low, high, 1.0)  # high == 0 only where both are 0

    energy_a, energy_b = ca * ca, cb * cb
    total = energy_a + energy_b
    if strict and (total == 0).any():
        _undefined(strict, "Q_CB is undefined: both sources have zero contrast at a pixel")
    weight_a = _safe_ratio(energy_a, total, 0.5)
    weight_b = _safe_ratio(energy_b, total, 0.5)
    quality = weight_a * preservation(ca) + weight_b * preservation(cb)
    return float(quality.mean())


# --------------------------------------------------------------------------------------------
# Q_CV
# --------------------------------------------------------------------------------------------
_CV_WINDOW = 16
_CV_ALPHA = 5  # saliency exponent of the summed gradient magnitude
_SOBEL_X = np.array([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
_SOBEL_Y = _SOBEL_X.T.copy()


@lru_cache(maxsize=8)
def _cv_csf(shape: tuple[int, int]) -> np.ndarray:
    """Mannos-Sakrison CSF on the toolbox's grid (frequencies scaled by size/8)."""
    rows, cols = shape
    r = _freqspace_radius(shape, rows / 8.0, cols / 8.0)
    return 2.6 * (0.0192 + 0.144 * r) * np.exp(-((0.144 * r) ** 1.1))


def _block_reduce(image: np.ndarray, window: int) -> np.ndarray:
    """Per-block sums over ``window``-square blocks, zero-padding the last ones (``blkproc``)."""
    rows, cols = image.shape
    pr, pc = -rows % window, -cols % window
    padded = np.pad(image, ((0, pr), (0, pc))) if (pr or pc) else image
    blocks = padded.reshape(padded.shape[0] // window, window, padded.shape[1] // window, window)
    return blocks.sum(axis=(1, 3))


def q_cv(a: np.ndarray, b: np.ndarray, f: np.ndarray, *, strict: bool = False) -> float:
    """Chen-Varshney perceptual metric ``Q_CV`` (TPAMI toolbox ``metricChen``; VIFB ``Qcv``).

    The differences A - F and B - F are filtered with the Mannos-Sakrison CSF; their mean square
    per 16x16 region is weighted by the region's saliency in each source (sum of the Sobel
    gradient magnitude to the 5th power) and normalised by the total saliency. Lower is
    better; 0 when F equals both sources.

    Args:
        a: first source, 2D, 0..255 (library images: multiply by 255 first).
        b: second source, same shape.
        f: fused image, same shape.
        strict: raise instead of applying the flat-image rule below.

    Returns:
        the metric as a Python float. Rule: when both sources are flat (zero total saliency,
        the reference gives NaN), the regions are weighted equally.

    Raises:
        ValueError: bad shapes or values; with ``strict``, the rule above is needed.
    """
    a, b, f = check_triple(a, b, f)
    al, bl, fl = (stretch_to_gray_levels(x) for x in (a, b, f))
    saliency = []
    for src in (al, bl):
        gx = ndimage.correlate(src, _SOBEL_X, mode="constant", cval=0.0)
        gy = ndimage.correlate(src, _SOBEL_Y, mode="constant", cval=0.0)
        saliency.append(_block_reduce(np.sqrt(gx * gx + gy * gy) ** _CV_ALPHA, _CV_WINDOW))
    diffs = _filter_frequency_domain(np.stack([al - fl, bl - fl]), _cv_csf(al.shape))
    dist = [_block_reduce(d * d, _CV_WINDOW) / _CV_WINDOW**2 for d in diffs]
    total = float((saliency[0] + saliency[1]).sum())
    if total == 0.0:
        _undefined(strict, "Q_CV is undefined: both sources are flat (no gradient anywhere)")
        return float((dist[0] + dist[1]).sum() / (2 * dist[0].size))
    return float((saliency[0] * dist[0] + saliency[1] * dist[1]).sum() / total)


# --------------------------------------------------------------------------------------------
# VIF
# --------------------------------------------------------------------------------------------
_VIF_SCALES = 4
_VIFP_NOISE = 2.0  # LIVE vifp_mscale sigma_nsq
_VIFF_NOISE = 0.005 * 255.0 * 255.0  # Han et al.'s visual noise
_VIFF_SCALE_WEIGHTS = np.array([1.0, 0.0, 0.15, 1.0]) / 2.15
_VIFF_C = 1e-7
_TINY = 1e-10
#: Smallest side: 33 for the first window ("sum" then skips coarser scales that would be empty,
#: as MATLAB's empty sums do); 81 for all four scales, which Han's per-scale ratios need.
_VIF_MIN_SIDE = {"sum": 33, "han": 81}


@lru_cache(maxsize=8)
def _gaussian_1d(size: int) -> np.ndarray:
    """1D factor of ``fspecial('gaussian', size, size / 5)`` (normalised; it is separable)."""
    half = (size - 1) / 2.0
    x = np.arange(size) - half
    sigma = size / 5.0
    g = np.exp(-(x * x) / (2.0 * sigma * sigma))
    return g / g.sum()


def _valid(images: np.ndarray, g: np.ndarray) -> np.ndarray:
    """``filter2(g g^T, x, 'valid')`` for a stack of images, separably."""
    n = g.size
    rows = sliding_window_view(images, n, axis=-2) @ g  # (..., H-n+1, W)
    return sliding_window_view(rows, n, axis=-1) @ g


def _vif_scale_maps(ref: np.ndarray, dist: np.ndarray, noise: float
                    ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per-scale (information with distortion, without distortion, gain g) maps of Sheikh-Bovik VIF.

    ``ref`` may be a stack of references compared against the same ``dist``.
    """
    maps = []
    for scale in range(1, _VIF_SCALES + 1):
        g = _gaussian_1d(2 ** (_VIF_SCALES - scale + 1) + 1)
        if scale > 1:
            if min(ref.shape[-2:]) < g.size:
                break  # MATLAB's 'valid' gives empty maps here, which add nothing to the sums
            ref = _valid(ref, g)[..., ::2, ::2]
            dist = _valid(dist, g)[..., ::2, ::2]
        if min(ref.shape[-2:]) < g.size:
            break
        mu1, mu2 = _valid(ref, g), _valid(dist, g)
        s1 = np.maximum(_valid(ref * ref, g) - mu1 * mu1, 0.0)
        s2 = np.maximum(_valid(dist * dist, g) - mu2 * mu2, 0.0)
        s12 = _valid(ref * dist, g) - mu1 * mu2
        s2 = np.broadcast_to(s2, s1.shape)
        gain = s12 / (s1 + _TINY)
        sv = s2 - gain * s12
        flat_ref = s1 < _TINY
        gain = np.where(flat_ref, 0.0, gain)
        sv = np.where(flat_ref, s2, sv)
        s1 = np.where(flat_ref, 0.0, s1)
        flat_dist = s2 < _TINY
        gain = np.where(flat_dist, 0.0, gain)
        sv = np.where(flat_dist, 0.0, sv)
        negative = gain < 0
        sv = np.where(negative, s2, sv)
        gain = np.where(negative, 0.0, gain)
        sv = np.maximum(sv, _TINY)
        with_dist = np.log10(1.0 + gain * gain * s1 / (sv + noise))
        without_dist = np.log10(1.0 + s1 / noise)
        maps.append((with_dist, without_dist, gain))
    return maps


def vif(a: np.ndarray, b: np.ndarray, f: np.ndarray, *, variant: Literal["sum", "han"] = "sum",
        strict: bool = False) -> float:
    """Visual information fidelity of the fused image with respect to both sources.

    ``variant="sum"`` (default, the recent fusion papers' ``VIF``): ``VIFP(A, F) + VIFP(B, F)``
    with the LIVE multi-scale pixel-domain ``vifp_mscale`` (4 scales, Gaussian windows
    ``N = 2^(5-s)+1``, sigma ``N/5``, ``'valid'`` filtering and 2x decimation, noise variance 2).
    Each term is 1 when F equals that source, so identical A = B = F give 2.

    ``variant="han"``: Han et al.'s VIFF (MEFB ``metricsVIF``): per pixel the source with the
    smaller gain is kept, per-scale ratios weighted ``[1, 0, 0.15, 1] / 2.15``. 1 for A = B = F.

    VIFB has no VIF metric; for colour, VIFB-style evaluation averages over RGB channels.

    Args:
        a: first source, 2D, 0..255 (library images: multiply by 255 first); at least 33x33
            (``"han"``: 81x81); below 81x81 ``"sum"`` uses the scales that fit, as MATLAB does.
        b: second source, same shape.
        f: fused image, same shape.
        variant: ``"sum"`` or ``"han"``.
        strict: raise instead of applying the flat-source rule below.

    Returns:
        the metric as a Python float. Rule (``"sum"``): a constant source carries no visual
        information (the reference's 0/0, NaN), and its term is taken as 1, as the common Python
        evaluators do.

    Raises:
        ValueError: bad shapes, values or variant; image too small (see ``a``);
            with ``strict``, the rule above is needed.
    """
    if variant not in _VIF_MIN_SIDE:
        raise ValueError(f"unknown VIF variant {variant!r}; use 'sum' or 'han'")
    a, b, f = check_triple(a, b, f)
    if min(a.shape) < _VIF_MIN_SIDE[variant]:
        raise ValueError(f"VIF ({variant}) needs images of at least {_VIF_MIN_SIDE[variant]}x"
                         f"{_VIF_MIN_SIDE[variant]} pixels for its 'valid' Gaussian windows, "
                         f"got {a.shape[1]}x{a.shape[0]}")
    if variant == "sum":
        maps = _vif_scale_maps(np.stack([a, b]), f, _VIFP_NOISE)
        num = sum(m[0].sum(axis=(-2, -1)) for m in maps)
        den = sum(m[1].sum(axis=(-2, -1)) for m in maps)
        total = 0.0
        for name, n, d in zip("ab", num, den):
            if d == 0.0:
                _undefined(strict, f"VIF is undefined: source {name} is constant")
                total += 1.0
            else:
                total += n / d
        return float(total)
    maps = _vif_scale_maps(np.stack([a, b]), f, _VIFF_NOISE)
    ratios = []
    for with_dist, without_dist, gain in maps:
        pick_a = gain[0] < gain[1]  # Han keeps, per pixel, the source with the smaller gain
        num = np.where(pick_a, with_dist[0], with_dist[1]) + _VIFF_C
        den = np.where(pick_a, without_dist[0], without_dist[1]) + _VIFF_C
        ratios.append(num.sum() / den.sum())
    return float(np.dot(_VIFF_SCALE_WEIGHTS, ratios))
