"""Structural (SSIM-family) fusion metrics: ``Q_E`` (Piella), ``Q_Y`` (Yang) and ``SSIM`` (VIFB).

Every metric takes the two sources A, B and the fused image F. Images inside the library are float
in [0, 1]; metrics take **0..255** like the reference MATLAB toolboxes (uint8 or float; converted to
float64 at the boundary, as MATLAB's ``double()``). Each definition reproduces its reference code:

- ``q_e``: ``metricPeilla(img1, img2, fuse, 3)`` of Yu Liu's corrected copy of Zheng Liu's
  toolbox (Liu et al., TPAMI 2012; MFIF repository): Piella and Heijmans' edge-dependent fusion
  quality index ``Q_E = Q_W(A, B, F) * Q_W(|∇A|, |∇B|, |∇F|)`` on 8x8 box windows.
- ``q_y``: ``metricYang`` of the same copy (Yang et al., Information Fusion 2008), 7x7 Gaussian
  (sigma 1.5) windows, SSIM constants 2e-16.
- ``ssim``: VIFB's ``metricsSsim``: ``SSIM(A, F) + SSIM(B, F)`` with Wang et al.'s 2004 SSIM
  (11x11 Gaussian, sigma 1.5, K = (0.01, 0.03), L = 255, 'valid' windows, mean of the map);
  ``variant="skimage"`` gives scikit-image's ``structural_similarity`` (7x7 box, sample
  covariance) instead, which CDDFuse's evaluator uses.

All local statistics are computed on 'valid' windows (MATLAB ``filter2(w, x, 'valid')``) as
``E[x^2] - E[x]^2``. In a flat window that difference is pure floating-point round-off (about
1e-12 for bright pixels) which, against the 2e-16 constants of Q_Y, would turn the SSIM map into
noise; we therefore snap a local (co)variance to exactly 0 when it is below ``1e-10 * E[x^2]``
(far below the smallest variance an 8-bit image can have in these windows, about 1e-3). This
changes no value on images without flat windows.

Numpy functions return a Python float; the ``*_torch`` versions take ``(N, 1, H, W)`` tensors in
0..255 on any device, compute in float64 and return a float64 tensor ``(N,)`` equal to the numpy
values to 1e-10 (they share one implementation).
"""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING, Any, Callable, Literal

import numpy as np

from pipeline.metrics.checks import check_triple
from pipeline.metrics.kernels import correlate3_same, weighted_sum

if TYPE_CHECKING:  # torch is imported lazily: numpy users do not pay for it
    import torch

__all__ = [
    "FLAT_POLICIES",
    "FlatPolicy",
    "SSIM_VARIANTS",
    "SsimVariant",
    "q_e",
    "q_y",
    "ssim",
    "q_y_torch",
    "ssim_torch",
    "gaussian_window_1d",
]

FlatPolicy = Literal["limit", "exclude", "canonical", "reference"]
#: Accepted values of ``q_y(..., flat=...)``; see :func:`q_y`.
FLAT_POLICIES: tuple[str, ...] = ("limit", "exclude", "canonical", "reference")
SsimVariant = Literal["vifb", "skimage"]
#: Accepted values of ``ssim(..., variant=...)``; see :func:`ssim`.
SSIM_VARIANTS: tuple[str, ...] = ("vifb", "skimage")

#: A local (co)variance below this fraction of the local second moment is floating-point
#: round-off of a flat window, and is snapped to 0.
_ROUNDOFF_REL = 1e-10

# Q_E (Piella): Wang's ssim_index with K = [1e-6 1e-6] (SSIM degrades to UIQI), L = 255, ones(8).
_PIELLA_C = (1e-6 * 255.0) ** 2
_PIELLA_WINDOW = 8
# Q_Y (Yang): ssim_yang, fspecial('gaussian', 7, 1.5), C1 = C2 = 2e-16.
_YANG_C = 2e-16
_YANG_SIZE, _YANG_SIGMA = 7, 1.5
_YANG_THRESHOLD = 0.75
# SSIM (VIFB metricsSsim): fspecial('gaussian', 11, 1.5), K = (0.01, 0.03), L = 255.
_SSIM_SIZE, _SSIM_SIGMA = 11, 1.5
_SSIM_K1, _SSIM_K2 = 0.01, 0.03
# SSIM as scikit-image's structural_similarity: 7x7 box window, sample covariance (n / (n - 1)).
_SKIMAGE_SIZE = 7

# Prewitt masks of metricPeilla's edge images (filter2 = correlation, 'same', zero padding).
_PREWITT_X = ((1.0, 0.0, -1.0), (1.0, 0.0, -1.0), (1.0, 0.0, -1.0))
_PREWITT_Y = ((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (-1.0, -1.0, -1.0))


# ----------------------------------------------------------------------------- input checks


def _check_batch(a: "torch.Tensor", b: "torch.Tensor", f: "torch.Tensor", min_size: int) -> tuple:
    """(N, 1, H, W) tensors -> float64 (N, H, W) tensors on their device, or a clear ValueError."""
    import torch

    out = []
    for name, t in (("a", a), ("b", b), ("f", f)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name}: expected a torch.Tensor (N, 1, H, W), got {type(t).__name__}")
        if t.ndim != 4 or t.shape[1] != 1:
            raise ValueError(f"{name}: expected shape (N, 1, H, W) in 0..255, got {tuple(t.shape)}")
        out.append(t.detach().to(torch.float64)[:, 0])
    if not (out[0].shape == out[1].shape == out[2].shape):
        raise ValueError(f"a, b, f must have the same shape, got {[tuple(t.shape) for t in (a, b, f)]}")
    if min(out[0].shape[-2:]) < min_size:
        raise ValueError(f"images must be at least {min_size}x{min_size}, got {tuple(a.shape)}")
    return tuple(out)


# ----------------------------------------------------------------------------- filtering


def gaussian_window_1d(size: int, sigma: float) -> np.ndarray:
    """1D factor of MATLAB ``fspecial('gaussian', size, sigma)`` (normalised to sum 1).

    The 2D window is ``outer(g, g)``; fspecial's cut below ``eps * max`` never bites for the
    sizes used here (the smallest corner weight is ~1e-5).
    """
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-(x * x) / (2.0 * sigma * sigma))
    return g / g.sum()


def _filter_valid(x: Any, taps: np.ndarray) -> Any:
    """Separable ``filter2(outer(taps, taps), x, 'valid')`` over the last two axes (numpy or torch)."""
    n = len(taps)
    h, w = x.shape[-2], x.shape[-1]
    if isinstance(x, np.ndarray):
        rows = weighted_sum([x[..., i : i + h - n + 1, :] for i in range(n)], taps)
        return weighted_sum([rows[..., :, j : j + w - n + 1] for j in range(n)], taps)
    rows = sum(float(t) * x[..., i : i + h - n + 1, :] for i, t in enumerate(taps))
    return sum(float(t) * rows[..., :, j : j + w - n + 1] for j, t in enumerate(taps))


def _moments(xp: Any, filt: Callable[[Any], Any], x: Any, snap: bool = True) -> tuple[Any, Any]:
    """Local mean and variance of ``x``, the variance snapped to 0 where it is round-off (unless
    ``snap`` is False: the reference's arithmetic, round-off kept)."""
    mu = filt(x)
    ex2 = filt(x * x)
    var = ex2 - mu * mu
    return mu, (xp.where(xp.abs(var) <= _ROUNDOFF_REL * ex2, 0.0, var) if snap else var)


def _ssim_map(xp: Any, filt: Callable[[Any], Any], x: Any, y: Any, mx: tuple, my: tuple,
              c1: float, c2: float, cov_scale: float = 1.0, snap: bool = True) -> Any:
    """Wang's SSIM map (direct formula, C1, C2 > 0) from precomputed moments of x and y.

    ``cov_scale`` multiplies the (co)variances: ``n / (n - 1)`` turns the window's population
    statistics into sample ones (scikit-image's default); ``snap`` as :func:`_moments`.
    """
    (mu_x, var_x), (mu_y, var_y) = mx, my
    cov = filt(x * y) - mu_x * mu_y
    if snap:
        # Cauchy-Schwarz: a covariance with a flat window is 0; keep round-off out of it.
        cov = xp.where((var_x == 0) | (var_y == 0), 0.0, cov)
    if cov_scale != 1.0:
        var_x, var_y, cov = cov_scale * var_x, cov_scale * var_y, cov_scale * cov
    num = (2.0 * mu_x * mu_y + c1) * (2.0 * cov + c2)
    den = (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
    return num / den


def _mean2(x: Any) -> Any:
    return x.mean(axis=(-2, -1))


# ----------------------------------------------------------------------------- Q_E (Piella)


def _piella_weighted(xp: Any, a: Any, b: Any, f: Any, window: int) -> Any:
    """Piella's weighted fusion quality index Q_W (metricPeilla's ``Q``/``Qw``)."""
    taps = np.full(window, 1.0 / window)
    filt = lambda x: _filter_valid(x, taps)  # noqa: E731
    ma, mb, mf = _moments(xp, filt, a), _moments(xp, filt, b), _moments(xp, filt, f)
    var_a, var_b = ma[1], mb[1]
    # Yu Liu's guard: where both sources are flat, add 0.5 to both variances (lambda = 1/2).
    both_flat = (var_a + var_b) == 0
    var_a = xp.where(both_flat, var_a + 0.5, var_a)
    var_b = xp.where(both_flat, var_b + 0.5, var_b)
    lam = var_a / (var_a + var_b)
    s_fa = _ssim_map(xp, filt, f, a, mf, ma, _PIELLA_C, _PIELLA_C)
    s_fb = _ssim_map(xp, filt, f, b, mf, mb, _PIELLA_C, _PIELLA_C)
    cw = xp.maximum(var_a, var_b)
    return (cw * (lam * s_fa + (1.0 - lam) * s_fb)).sum(axis=(-2, -1)) / cw.sum(axis=(-2, -1))


def _edge_magnitude(xp: Any, x: Any) -> Any:
    gx, gy = correlate3_same(xp, x, (_PREWITT_X, _PREWITT_Y))
    return xp.sqrt(gx * gx + gy * gy)


def _q_e_core(xp: Any, a: Any, b: Any, f: Any, window: int) -> Any:
    q_w = _piella_weighted(xp, a, b, f, window)
    edges = [_edge_magnitude(xp, x) for x in (a, b, f)]
    q_w_edges = _piella_weighted(xp, *edges, window)
    return q_w * q_w_edges  # alpha = 1


def q_e(a: Any, b: Any, f: Any, window: int = _PIELLA_WINDOW) -> float:
    """Piella's edge-dependent fusion quality index ``Q_E`` (metric name ``Q_E``).

    Reproduces ``metricPeilla(A, B, F, 3)`` of Yu Liu's corrected toolbox copy (the reference of
    the MFIF golden values). The ``3`` there selects the *edge-dependent* variant among Piella's
    three indices (1: Q, 2: Q_W, 3: Q_E); it is not a window size. The windows are the toolbox's
    ``ones(8)`` boxes ('valid'), and SSIM runs with ``K = [1e-6 1e-6]`` so that it equals Wang and
    Bovik's UIQI as in Piella's paper::

        Q_W(A, B, F) = sum_w c(w) [lambda(w) Q0(A, F | w) + (1 - lambda(w)) Q0(B, F | w)]
        lambda = s_A / (s_A + s_B),  c = max(s_A, s_B) / sum_w max(s_A, s_B)   (s = local variance)
        Q_E = Q_W(A, B, F) * Q_W(|grad A|, |grad B|, |grad F|)    (alpha = 1; Prewitt, 'same')

    Where both sources are flat in a window, the reference adds 0.5 to both variances (lambda =
    1/2, weight 0.5); we do the same, so ``Q_E`` is finite on black backgrounds. (In MATLAB a
    flat window at a non-zero level gets a ~1e-12 round-off variance instead of 0, hence weight
    ~0 rather than 0.5: this and similar round-off make up our <= 3.4e-5 difference from the
    MFIF golden values.)

    Args:
        a: first source, 2D, 0..255 (library images are [0, 1]: multiply by 255 first).
        b: second source, same shape.
        f: fused image, same shape.
        window: side of the square box window; 8 reproduces the reference.

    Returns:
        ``Q_E`` in [-1, 1] (1 when A = B = F); symmetric in A and B.

    Raises:
        ValueError: an image that is not 2D, not finite, of another shape, or smaller than the window.
    """
    if int(window) < 2:
        raise ValueError(f"window must be >= 2 (the reference uses 8), got {window}")
    a, b, f = check_triple(a, b, f, min_size=int(window) + 2)
    return float(_q_e_core(np, a, b, f, int(window)))


# ----------------------------------------------------------------------------- Q_Y (Yang)


def _q_y_core(xp: Any, a: Any, b: Any, f: Any, flat: str) -> tuple[Any, Any]:
    """Q_Y per image over the last two axes, and (``"exclude"`` only) whether nothing was kept."""
    taps = gaussian_window_1d(_YANG_SIZE, _YANG_SIGMA)
    filt = lambda x: _filter_valid(x, taps)  # noqa: E731
    snap = flat != "reference"
    ma, mb, mf = (_moments(xp, filt, x, snap) for x in (a, b, f))
    s_ab = _ssim_map(xp, filt, a, b, ma, mb, _YANG_C, _YANG_C, snap=snap)
    s_af = _ssim_map(xp, filt, a, f, ma, mf, _YANG_C, _YANG_C, snap=snap)
    s_bf = _ssim_map(xp, filt, b, f, mb, mf, _YANG_C, _YANG_C, snap=snap)
    var_a, var_b = ma[1], mb[1]
    both_flat = (var_a + var_b) == 0
    if flat == "canonical":
        # Zheng Liu's original: lambda = 0/0 = NaN in such windows, and NaN * 0 stays NaN.
        with np.errstate(invalid="ignore", divide="ignore"):
            lam = var_a / (var_a + var_b)
    else:
        lam = xp.where(both_flat, 0.5, var_a / xp.where(both_flat, 1.0, var_a + var_b))
    similar = s_ab >= _YANG_THRESHOLD
    q_map = xp.where(similar, lam * s_af + (1.0 - lam) * s_bf, xp.maximum(s_af, s_bf))
    if flat == "canonical":
        # MATLAB's (..).*bin_map keeps NaN even where bin_map is 0.
        q_map = xp.where(xp.isnan(lam), lam, q_map)
    if flat == "exclude":
        keep = ~both_flat
        n_keep = keep.sum(axis=(-2, -1))
        total = xp.where(keep, q_map, 0.0).sum(axis=(-2, -1))
        return total / xp.where(n_keep == 0, 1, n_keep), n_keep == 0
    return _mean2(q_map), None


def _check_flat(flat: str) -> str:
    if flat not in FLAT_POLICIES:
        raise ValueError(f"flat must be one of {FLAT_POLICIES}, got {flat!r}")
    return flat


def q_y(a: Any, b: Any, f: Any, flat: FlatPolicy = "limit") -> float:
    """Yang's SSIM-based fusion metric ``Q_Y`` (metric name ``Q_Y``), with a flat-region policy.

    Reproduces ``metricYang`` of Yu Liu's corrected toolbox copy (MFIF, commit 267c081): SSIM maps
    on 7x7 Gaussian windows (sigma 1.5, 'valid'), ``C1 = C2 = 2e-16``, and per window::

        Q = lambda SSIM(A, F) + (1 - lambda) SSIM(B, F)   if SSIM(A, B) >= 0.75
        Q = max(SSIM(A, F), SSIM(B, F))                    otherwise
        lambda = s_A / (s_A + s_B)        (s = local variance); Q_Y = mean over windows

    **Flat regions.** CT/MR slices are mostly black background; in a window where both sources
    are flat, ``lambda = 0/0``. Zheng Liu's original code then returns NaN for the whole image.
    The policies:

    - ``"limit"`` (default): ``lambda = 1/2``. This is the continuation the SSIM construction
      implies: stabilising the weight like SSIM's terms, ``(s_A + c) / (s_A + s_B + 2c)``, gives
      exactly 1/2 for any ``c > 0`` when ``s_A = s_B = 0``; the two SSIM maps themselves stay
      defined through their constants (equal flat windows give 1, a flat source against a
      structured F gives ~0, so artefacts that F adds to a black background are penalised).
      It is also exactly Yu Liu's correction in the reference copy, so the MFIF golden values
      are reproduced. Black background shared by A, B and F counts as perfect (1), which raises
      Q_Y on mostly-black slices; use ``"exclude"`` to score the anatomy only.
    - ``"exclude"``: windows where both sources are flat are left out of the mean. Raises
      ValueError when every window is flat (Q_Y is then undefined).
    - ``"canonical"``: the original, unguarded formula; any both-flat window makes the result
      NaN, returned with a RuntimeWarning (never silently).
    - ``"reference"``: the reference's arithmetic, for comparing with its printed values: local
      (co)variances as ``E[x^2] - E[x]^2`` computes them, round-off kept (no snapping, see the
      module docstring), and Yu Liu's ``lambda = 1/2`` only where the two variances sum to exactly
      0. Where both sources are flat at a non-zero level, ``SSIM(A, B)`` and ``lambda`` are then
      ratios of round-off residues, as in MATLAB, instead of the limits above.

    Agreement with the reference: <= 3.2e-5 on the MFIF golden values, except pairs g_03 and
    g_04 (<= 4.1e-3), whose large uniform areas leave A and B flat at *different* levels in 2-8%
    of the windows. There ``SSIM(A, B)`` and ``lambda`` are 0/0 in exact arithmetic (we take the
    limits above), whereas MATLAB divides two round-off residues of ``E[x^2] - E[x]^2`` (~1e-12,
    against constants of 2e-16), i.e. noise that depends on its summation order.

    Args:
        a: first source, 2D, 0..255 (library images are [0, 1]: multiply by 255 first).
        b: second source, same shape.
        f: fused image, same shape.
        flat: ``"limit"``, ``"exclude"``, ``"canonical"`` or ``"reference"`` (see above).

    Returns:
        ``Q_Y`` (1 when A = B = F); symmetric in A and B. NaN only with ``flat="canonical"``.

    Raises:
        ValueError: bad images (not 2D, not finite, shapes differ, smaller than 11x11), an unknown
            policy, or ``flat="exclude"`` on sources that are flat everywhere.
    """
    flat = _check_flat(flat)
    a, b, f = check_triple(a, b, f, min_size=11)
    value, degenerate = _q_y_core(np, a, b, f, flat)
    return _finish_q_y(float(value), bool(degenerate), flat)


def _finish_q_y(value: float, degenerate: bool, flat: str, where: str = "") -> float:
    if flat == "exclude" and degenerate:
        raise ValueError(f"Q_Y{where}: both sources are flat in every window, so flat='exclude' "
                         "leaves nothing to average; use flat='limit'")
    if math.isnan(value):
        warnings.warn(f"Q_Y{where} is NaN: flat='canonical' reproduces the original toolbox, where a "
                      "window flat in both sources gives lambda = 0/0; use flat='limit' for a number",
                      RuntimeWarning, stacklevel=3)
    return value


def q_y_torch(a: "torch.Tensor", b: "torch.Tensor", f: "torch.Tensor",
              flat: FlatPolicy = "limit") -> "torch.Tensor":
    """Batched :func:`q_y` on tensors (CPU or GPU), same definition and flat policies.

    Args:
        a: first sources, ``(N, 1, H, W)``, 0..255 (library tensors are [0, 1]: multiply by 255).
        b: second sources, same shape.
        f: fused images, same shape.
        flat: ``"limit"``, ``"exclude"``, ``"canonical"`` or ``"reference"`` (see :func:`q_y`).

    Returns:
        float64 tensor ``(N,)`` on the inputs' device (an evaluation metric: inputs are detached,
        no gradient); NaN entries only with ``"canonical"`` (with a RuntimeWarning).

    Raises:
        ValueError: bad shapes, an unknown policy, or ``"exclude"`` on an all-flat sample.
    """
    import torch

    flat = _check_flat(flat)
    a, b, f = _check_batch(a, b, f, 11)
    value, degenerate = _q_y_core(torch, a, b, f, flat)
    bad = torch.nonzero(degenerate).flatten().tolist() if flat == "exclude" else []
    if bad:
        _finish_q_y(0.0, True, flat, f" (samples {bad})")
    nan = torch.nonzero(torch.isnan(value)).flatten().tolist()
    if nan:
        _finish_q_y(float("nan"), False, flat, f" (samples {nan})")
    return value


# ----------------------------------------------------------------------------- SSIM (VIFB)


def _ssim_core(xp: Any, a: Any, b: Any, f: Any, variant: str = "vifb", data_range: float = 255.0) -> Any:
    if variant == "vifb":
        taps, cov_scale = gaussian_window_1d(_SSIM_SIZE, _SSIM_SIGMA), 1.0
    else:
        n = _SKIMAGE_SIZE**2
        taps, cov_scale = np.full(_SKIMAGE_SIZE, 1.0 / _SKIMAGE_SIZE), n / (n - 1)
    c1, c2 = (_SSIM_K1 * data_range) ** 2, (_SSIM_K2 * data_range) ** 2
    filt = lambda x: _filter_valid(x, taps)  # noqa: E731
    ma, mb, mf = _moments(xp, filt, a), _moments(xp, filt, b), _moments(xp, filt, f)
    s_af = _ssim_map(xp, filt, a, f, ma, mf, c1, c2, cov_scale)
    s_bf = _ssim_map(xp, filt, b, f, mb, mf, c1, c2, cov_scale)
    return _mean2(s_af) + _mean2(s_bf)


def ssim(a: Any, b: Any, f: Any, variant: SsimVariant = "vifb", data_range: float = 255.0) -> float:
    """The fusion SSIM of VIFB and recent papers (metric name ``SSIM``): ``SSIM(A,F) + SSIM(B,F)``.

    ``variant="vifb"`` (default): VIFB's ``metricsSsim`` (Wang et al. 2004 SSIM, mean of the map
    over 'valid' 11x11 Gaussian windows with sigma 1.5, ``C1 = (0.01*255)^2``,
    ``C2 = (0.03*255)^2``), summed over the two sources, so the range is [-2, 2] and A = B = F
    gives 2. (Some papers average instead of sum: divide by 2.) VIFB evaluates colour images
    channel by channel and averages; this function takes one 2D channel.

    ``variant="skimage"``: scikit-image's ``structural_similarity`` (7x7 box windows, sample
    covariance, the mean over the windows inside the image, i.e. its map cropped by 3 pixels),
    the SSIM of CDDFuse's evaluator and the Python fusion evaluators derived from it.

    Args:
        a: first source, 2D, 0..255 (library images are [0, 1]: multiply by 255 first).
        b: second source, same shape.
        f: fused image, same shape.
        variant: ``"vifb"`` or ``"skimage"`` (see above).
        data_range: ``L`` of the constants ``C1 = (0.01 L)^2``, ``C2 = (0.03 L)^2``. 255 matches
            the 8-bit data; CDDFuse's evaluator gets 2 (scikit-image 0.19's float range).

    Returns:
        ``SSIM(A, F) + SSIM(B, F)``; symmetric in A and B.

    Raises:
        ValueError: an image that is not 2D, not finite, of another shape, or smaller than the
            window (11x11; ``"skimage"``: 7x7); an unknown variant or a data range <= 0.
    """
    if variant not in SSIM_VARIANTS:
        raise ValueError(f"unknown SSIM variant {variant!r}; use one of {', '.join(SSIM_VARIANTS)}")
    if not data_range > 0:
        raise ValueError(f"SSIM data_range must be > 0, got {data_range!r}")
    size = _SSIM_SIZE if variant == "vifb" else _SKIMAGE_SIZE
    a, b, f = check_triple(a, b, f, min_size=size)
    return float(_ssim_core(np, a, b, f, variant, float(data_range)))


def ssim_torch(a: "torch.Tensor", b: "torch.Tensor", f: "torch.Tensor") -> "torch.Tensor":
    """Batched :func:`ssim` on tensors (CPU or GPU).

    Args:
        a: first sources, ``(N, 1, H, W)``, 0..255 (library tensors are [0, 1]: multiply by 255).
        b: second sources, same shape.
        f: fused images, same shape.

    Returns:
        float64 tensor ``(N,)``: ``SSIM(A, F) + SSIM(B, F)`` per sample, on the inputs' device
        (an evaluation metric: inputs are detached, no gradient).

    Raises:
        ValueError: tensors not ``(N, 1, H, W)``, of different shapes, or smaller than 11x11.
    """
    import torch

    a, b, f = _check_batch(a, b, f, _SSIM_SIZE)
    return _ssim_core(torch, a, b, f)
