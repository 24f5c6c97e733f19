"""Phase-congruency fusion metric ``Q_P`` (Zhao et al. 2007), as in Liu et al.'s TPAMI 2012 toolbox.

``Q_P`` takes the two sources ``a``, ``b`` and the fused image ``f`` as 2D grayscale arrays in
0..255 (``uint8`` or float), the range of the reference MATLAB toolbox; library images, which
are float in [0, 1], must be multiplied by 255 first. Inputs become float64 at the boundary.

The phase congruency is the toolbox's ``myphasecong3`` (Z. Liu's revision of Kovesi's
``phasecong2``): log-Gabor filters in the frequency domain (4 scales, 6 orientations, minimum
wavelength 3, scale factor 2.1, sigmaOnf 0.55, dThetaOnSigma 1.2), Kovesi's noise compensation
(k = 2, then divided by 1.7 for PC_2), frequency-spread weighting (cutOff 0.5, g 10), and the
maximum / minimum moments of the phase-congruency covariance. ``metricZhao`` then correlates the
fused image's PC, maximum and minimum moment maps with the sources' (Gaussian 11x11, sigma 1.5,
``filter2 'same'``, feature threshold 0.1) and multiplies the three scores.

All three images go through the filter bank together, one orientation at a time, into buffers
reused across orientations; the filters are cached per image shape, and the 33 local means of
``metricZhao`` go through one separable filtering.

Precision: ``q_p`` filters in single precision by default (``precision="single"``: complex64
inverse FFTs and per-orientation maps, float64 accumulators): the 72 inverse FFTs of a triple
dominate the cost, and complex64 transforms take about half the work of complex128 ones. That
moves ``Q_P`` off the float64 value by float32 round-off, and by a little more where a pixel's
PC sits at the 0.1 feature threshold: at most about 1e-6 on the MFIF golden triples, against
the 1e-4 the golden tests allow. ``precision="double"`` reproduces the toolbox to float64
round-off. The feature correlations stay float64 (their variances would lose too much to
cancellation in float32).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np
from scipy import fft as sfft
from scipy import ndimage

from pipeline.metrics.checks import check_triple

__all__ = ["q_p", "phase_congruency", "PhaseCongruencyParams", "PRECISIONS", "Precision"]

Precision = Literal["single", "double"]
#: Accepted values of ``precision``: the float type of the filter responses.
PRECISIONS: tuple[str, ...] = ("single", "double")
_COMPLEX_TYPES = {"single": np.complex64, "double": np.complex128}

_EPSILON = 1e-4  # myphasecong3's guard against division by zero
_FEATURE_THRESHOLD = 0.1  # metricZhao: pixels with PC above this are features
_CORR_C = 1e-4  # metricZhao's C1 = C2 = C3


@dataclass(frozen=True)
class PhaseCongruencyParams:
    """The parameters of ``myphasecong3``; the defaults are the toolbox's (used by ``Q_P``)."""

    nscale: int = 4
    norient: int = 6
    min_wavelength: float = 3.0
    mult: float = 2.1
    sigma_on_f: float = 0.55
    d_theta_on_sigma: float = 1.2
    k: float = 2.0
    cut_off: float = 0.5
    g: float = 10.0


@dataclass(frozen=True)
class _FilterBank:
    filters: np.ndarray  # (norient, nscale, H, W) real transfer functions, 0 frequency at [0, 0]
    filters_single: np.ndarray  # the same in float32
    mean_sq_filter: np.ndarray  # (norient,) sum of the smallest-scale filter squared (EM_n)
    sum_an2: np.ndarray  # (norient,) noise model: sum over scales of the squared spatial filters
    sum_aiaj: np.ndarray  # (norient,) noise model: sum over scale pairs of their products


def _centred_grid(n: int) -> np.ndarray:
    """myphasecong3's normalised frequency range for one axis (+-0.5, odd/even handled apart)."""
    if n % 2:
        return np.arange(-(n - 1) / 2, (n - 1) / 2 + 1) / (n - 1)
    return np.arange(-n / 2, n / 2) / n


def _lowpass(shape: tuple[int, int], cutoff: float = 0.45, order: int = 15) -> np.ndarray:
    """Kovesi's Butterworth ``lowpassfilter`` (radius 0.45, order 15), shifted with ``fftshift``."""
    rows, cols = shape
    x = (np.arange(cols) - cols // 2) / cols
    y = (np.arange(rows) - rows // 2) / rows
    radius = np.sqrt(x[None, :] ** 2 + y[:, None] ** 2)
    return np.fft.fftshift(1.0 / (1.0 + (radius / cutoff) ** (2 * order)))


def _median_of_squares(values: np.ndarray) -> np.ndarray:
    """Row-wise ``median(values ** 2)`` for non-negative values, squaring only the middle ones.

    ``values`` is partitioned in place (its order is lost; its set of values is kept). One
    selection finds the lower middle value; for an even count the upper one is the smallest
    value above it.
    """
    n = values.shape[-1]
    lower = (n - 1) // 2
    values.partition(lower, axis=-1)  # squaring keeps the order
    low = values[..., lower]
    high = values[..., lower + 1 :].min(axis=-1) if n % 2 == 0 else low
    return (np.stack([low, high], axis=-1) ** 2).mean(axis=-1)


@lru_cache(maxsize=4)
def _filter_bank(shape: tuple[int, int], params: PhaseCongruencyParams) -> _FilterBank:
    rows, cols = shape
    x = _centred_grid(cols)[None, :]
    y = _centred_grid(rows)[:, None]
    radius = np.sqrt(x * x + y * y)
    radius[rows // 2, cols // 2] = 1.0  # avoid log(0); the filters' DC is zeroed below
    theta = np.arctan2(-y, x)  # -y: positive angles anticlockwise
    radius = np.fft.ifftshift(radius)
    theta = np.fft.ifftshift(np.broadcast_to(theta, shape))
    sin_t, cos_t = np.sin(theta), np.cos(theta)

    lp = _lowpass(shape)
    log_gabor = []
    for s in range(params.nscale):
        fo = 1.0 / (params.min_wavelength * params.mult**s)
        lg = np.exp(-(np.log(radius / fo) ** 2) / (2.0 * np.log(params.sigma_on_f) ** 2)) * lp
        lg[0, 0] = 0.0
        log_gabor.append(lg)

    theta_sigma = np.pi / params.norient / params.d_theta_on_sigma
    filters = np.empty((params.norient, params.nscale, rows, cols))
    for o in range(params.norient):
        angle = o * np.pi / params.norient
        ds = sin_t * np.cos(angle) - cos_t * np.sin(angle)
        dc = cos_t * np.cos(angle) + sin_t * np.sin(angle)
        spread = np.exp(-(np.abs(np.arctan2(ds, dc)) ** 2) / (2.0 * theta_sigma**2))
        for s in range(params.nscale):
            filters[o, s] = log_gabor[s] * spread

    spatial = sfft.ifft2(filters).real * np.sqrt(rows * cols)
    sum_an2 = (spatial**2).sum(axis=(1, 2, 3))
    sum_aiaj = np.zeros(params.norient)
    for si in range(params.nscale - 1):
        for sj in range(si + 1, params.nscale):
            sum_aiaj += (spatial[:, si] * spatial[:, sj]).sum(axis=(1, 2))
    mean_sq_filter = (filters[:, 0] ** 2).sum(axis=(1, 2))
    return _FilterBank(filters, filters.astype(np.float32), mean_sq_filter, sum_an2, sum_aiaj)


def phase_congruency(images: np.ndarray, params: PhaseCongruencyParams = PhaseCongruencyParams(),
                     precision: Precision = "double") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Phase congruency and its covariance moments, as the toolbox's ``myphasecong3``.

    Args:
        images: ``(H, W)`` or a stack ``(N, H, W)`` of float images (any range; PC is
            contrast-invariant).
        params: filter-bank parameters (defaults: the toolbox's).
        precision: ``"double"`` (float64 throughout) or ``"single"`` (float32 filter responses:
            cheaper transforms, half the memory traffic, float32 round-off in the maps; see the
            module notes).

    Returns:
        ``(pc, M, m)``: phase congruency in [0, 1], maximum moment (edge strength) and minimum
        moment (corner strength), each shaped like ``images``. Where all filter responses are 0
        (a constant image), the per-orientation PC that the reference leaves as NaN (0/0) is 0.
        The maps are float64 in either precision.

    Raises:
        ValueError: an unknown ``precision``.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    images = np.asarray(images, dtype=np.float64)
    single = images.ndim == 2
    stack = images[None] if single else images
    n = len(stack)
    bank = _filter_bank(stack.shape[-2:], params)
    complex_type = _COMPLEX_TYPES[precision]
    filters = bank.filters_single if precision == "single" else bank.filters
    spectrum = sfft.fft2(stack).astype(complex_type, copy=False)[:, None]  # (N, 1, H, W)

    # Buffers reused by every orientation: the responses are large (N x nscale images, complex).
    eo = np.empty((n, params.nscale, *stack.shape[-2:]), dtype=complex_type)
    amplitude = np.empty(eo.shape, dtype=filters.dtype)
    sine_part = np.empty(stack.shape, dtype=filters.dtype)
    scratch = np.empty(stack.shape, dtype=filters.dtype)
    total_energy = np.zeros(stack.shape)
    total_sum_an = np.zeros(stack.shape)
    cov_x2 = np.zeros(stack.shape)
    cov_y2 = np.zeros(stack.shape)
    cov_xy = np.zeros(stack.shape)
    for o in range(params.norient):
        angle = o * np.pi / params.norient
        np.multiply(spectrum, filters[o], out=eo)
        eo = sfft.ifft2(eo, overwrite_x=True)  # (N, nscale, H, W): even + i odd responses
        np.abs(eo, out=amplitude)
        sum_an = amplitude.sum(axis=1)
        max_an = amplitude.max(axis=1)
        summed = eo.sum(axis=1)  # sum of even + i sum of odd responses

        # Energy = sum_s An (cos(dphi) - |sin(dphi)|) about the weighted mean phase direction
        # w = summed / (|summed| + eps); its cosine part sums to |summed|^2 / (|summed| + eps).
        summed_abs = np.abs(summed)
        x_energy = summed_abs + _EPSILON
        mean_e, mean_o = summed.real / x_energy, summed.imag / x_energy
        sine_part.fill(0.0)
        for s in range(params.nscale):  # sum_s |even_s mean_o - odd_s mean_e|, one scale at a time
            np.multiply(eo[:, s].real, mean_o, out=scratch)
            scratch -= eo[:, s].imag * mean_e
            sine_part += np.abs(scratch, out=scratch)
        energy = summed_abs * summed_abs / x_energy - sine_part

        # Noise threshold from the median squared response at the smallest scale (Rayleigh model);
        # the smallest scale's amplitudes are not needed afterwards, so they are sorted in place.
        median_e2n = _median_of_squares(amplitude[:, 0].reshape(n, -1))
        noise_power = (-median_e2n / np.log(0.5)) / bank.mean_sq_filter[o]
        noise_energy2 = 2.0 * noise_power * bank.sum_an2[o] + 4.0 * noise_power * bank.sum_aiaj[o]
        tau = np.sqrt(noise_energy2 / 2.0)
        threshold = (tau * np.sqrt(np.pi / 2.0) + params.k * np.sqrt((2.0 - np.pi / 2.0) * tau**2)) / 1.7
        energy = np.maximum(energy - threshold[:, None, None], 0.0)

        # Penalise narrow frequency spread.
        width = sum_an / (max_an + _EPSILON) / params.nscale
        weight = 1.0 / (1.0 + np.exp((params.cut_off - width) * params.g))
        weighted = weight * energy
        total_sum_an += sum_an
        total_energy += weighted

        pc_orient = np.divide(weighted, sum_an, out=np.zeros_like(weighted), where=sum_an != 0)
        cov_x, cov_y = pc_orient * np.cos(angle), pc_orient * np.sin(angle)
        cov_x2 += cov_x**2
        cov_y2 += cov_y**2
        cov_xy += cov_x * cov_y

    pc = total_energy / (total_sum_an + _EPSILON)
    cov_x2 /= params.norient / 2.0
    cov_y2 /= params.norient / 2.0
    cov_xy /= params.norient  # = 2 cov_xy / (norient / 2)
    denom = np.sqrt(cov_xy**2 + (cov_x2 - cov_y2) ** 2) + _EPSILON
    big_m = (cov_y2 + cov_x2 + denom) / 2.0
    small_m = (cov_y2 + cov_x2 - denom) / 2.0
    if single:
        return pc[0], big_m[0], small_m[0]
    return pc, big_m, small_m


@lru_cache(maxsize=1)
def _zhao_window() -> np.ndarray:
    """1D factor of ``fspecial('gaussian', 11, 1.5)``, normalised (the 2D window is separable)."""
    x = np.arange(-5, 6, dtype=np.float64)
    g = np.exp(-(x * x) / (2.0 * 1.5**2))
    return g / g.sum()


def _local_mean(images: np.ndarray, out: np.ndarray | None = None,
                scratch: np.ndarray | None = None) -> np.ndarray:
    """``filter2(window, x, 'same')`` with zero padding, on the last two axes.

    ``out`` and ``scratch`` (arrays shaped like ``images``) receive the result and the first
    pass when given, so that a caller filtering many stacks reuses its memory.
    """
    g = _zhao_window()
    scratch = ndimage.correlate1d(images, g, axis=-1, output=scratch, mode="constant", cval=0.0)
    return ndimage.correlate1d(scratch, g, axis=-2, output=out, mode="constant", cval=0.0)


def _feature_correlations(maps: np.ndarray, larger_a: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """metricZhao's ``correlation_coeffcient`` for each feature map (PC, M and m).

    ``maps`` is ``(features, 3, H, W)``: each feature's maps of a, b and f. The maps of a, b and
    of their per-pixel ``max`` (a where ``larger_a``, else b) are masked to their feature pixels
    (the fused map is not); the local correlation with the fused map is taken at the masked
    pixels, the best of the three per pixel is kept (0 elsewhere), and the sum is divided by the
    number of ``max`` feature pixels. Per feature, its 11 local means go through one separable
    filtering, in buffers reused by the next feature (large temporaries would be fresh memory).

    Returns:
        ``(features,)`` correlation scores.
    """
    stack = np.empty((11, *maps.shape[-2:]))  # sources (3), f, sources^2 (3), f^2, sources * f (3)
    means, scratch = np.empty_like(stack), np.empty_like(stack)
    sources, fused = stack[0:3], stack[3]
    scores = np.empty(len(maps))
    for k, (map_a, map_b, map_f) in enumerate(maps):
        np.multiply(map_a, masks[0], out=sources[0])
        np.multiply(map_b, masks[1], out=sources[1])
        np.multiply(np.where(larger_a, map_a, map_b), masks[2], out=sources[2])
        fused[...] = map_f
        np.multiply(sources, sources, out=stack[4:7])
        np.multiply(fused, fused, out=stack[7])
        np.multiply(sources, fused, out=stack[8:11])
        _local_mean(stack, out=means, scratch=scratch)
        mu, mu_f, mean_sq, mean_sq_f, mean_sf = means[0:3], means[3], means[4:7], means[7], means[8:11]
        var = mean_sq - mu * mu
        var_f = mean_sq_f - mu_f * mu_f
        cov = mean_sf - mu * mu_f
        corr = (cov + _CORR_C) / (np.sqrt(np.abs(var * var_f)) + _CORR_C)
        corr = np.where(masks, corr, 0.0)
        scores[k] = corr.max(axis=0).sum()
    return scores / masks[2].sum()


def q_p(a: np.ndarray, b: np.ndarray, f: np.ndarray, *, strict: bool = False,
        precision: Precision = "single") -> float:
    """Zhao's phase-congruency metric ``Q_P`` (TPAMI toolbox ``metricZhao``).

    ``Q_P = P_pc * P_M * P_m``: the products of the fused image's local correlation with the
    sources' phase congruency, maximum moment and minimum moment maps at feature pixels
    (source PC > 0.1). At most about 1 (higher is better).

    Args:
        a: first source, 2D, 0..255 (library images: multiply by 255 first).
        b: second source, same shape.
        f: fused image, same shape.
        strict: raise instead of applying the featureless-source rule below.
        precision: ``"single"`` (default: float32 filter responses, within about 1e-6 of the
            float64 value) or ``"double"`` (the toolbox to float64 round-off); see the module notes.

    Returns:
        the metric as a Python float. Rule: when neither source has a pixel with PC above 0.1
        (e.g. both constant; the reference divides 0 by 0), there is no feature to preserve and
        ``Q_P`` is 0.

    Raises:
        ValueError: bad shapes or values, an unknown ``precision``; with ``strict``, the rule
            above is needed.
    """
    a, b, f = check_triple(a, b, f)
    pc, big_m, small_m = phase_congruency(np.stack([a, b, f]), precision=precision)
    larger_a = pc[0] > pc[1]
    pc_max = np.where(larger_a, pc[0], pc[1])
    masks = np.stack([pc[0], pc[1], pc_max]) > _FEATURE_THRESHOLD
    if not masks[2].any():
        if strict:
            raise ValueError("Q_P is undefined: neither source has a phase-congruency feature (PC > 0.1)")
        return 0.0
    return float(np.prod(_feature_correlations(np.stack([pc, big_m, small_m]), larger_a, masks)))
