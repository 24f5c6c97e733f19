"""Feature mutual information ``FMI`` (Haghighat et al. 2011), the windowed "Fast-FMI" of 2014.

References: M.B.A. Haghighat, A. Aghagolzadeh, H. Seyedarabi, "A non-reference image fusion metric
based on mutual information of image features", Computers & Electrical Engineering 37(5), 2011;
M. Haghighat, M.A. Razian, "Fast-FMI: non-reference image fusion metric", AICT 2014. We reproduce
the authors' public MATLAB code ``fmi.m`` (the Fast-FMI implementation, also shipped as
``analysis_fmi.m`` with DenseFuse and many later papers), vectorised: the reference loops over
windows in MATLAB and takes seconds per 256x256 image; this takes tens of milliseconds.

Images are 0..255 (``uint8`` or float; the library's [0, 1] images are multiplied by 255 at this
boundary), gray ``(H, W)``. FMI is invariant to the intensity scale: ``fmi(a/255, b/255, f/255)``
gives the same value up to round-off (the ``edge`` feature's threshold is relative).

Definition (per source X in {A, B}, per ``w x w`` window, ``w = 3`` by default):

1. Feature images: ``pixel`` = the image (the reference calls it ``'none'``); ``gradient`` =
   MATLAB ``gradient(im)`` with one output, i.e. the *horizontal* derivative only (central
   differences inside, one-sided at the left/right border); ``edge`` = MATLAB ``edge(im)``, the
   Sobel detector with its automatic threshold ``sqrt(4 mean(gx^2 + gy^2))`` and directional
   non-maximum thinning (a binary map); ``dct`` = the orthonormal 2-D DCT-II of the *whole* image
   (MATLAB ``dct2``); ``wavelet`` = one level of the discrete Meyer DWT of the whole image,
   symmetric extension, laid out as ``[cA cH; cV cD]`` and rescaled to [0, 1].
2. In each window (pixels taken in MATLAB's column-major order) the feature values of X and F are
   min-max normalised and divided by their sum: two distributions ``x``, ``f`` over the ``w^2``
   positions, with CDFs ``X``, ``F``.
3. Their joint distribution is Nelsen's mixture ``t * Frechet bound + (1 - t) * f x^T``: the
   upper (comonotone) bound when the Pearson correlation ``c`` of ``x`` and ``f`` is >= 0, the
   lower (countermonotone) bound otherwise, with ``t = c / corr(bound)`` (``corr`` of the position
   indices under the bound; ``t = 0`` when ``c = 0`` or a distribution has zero spread).
4. ``NMI = 2 I(x; f) / (H(x) + H(f))`` in bits (0 when ``I = 0``); entries of the joint that are
   negative (``t > 1``) enter the entropy as ``-p log2 |p|`` (MATLAB's ``real()``).
5. ``FMI = mean over windows of (NMI(A, F) + NMI(B, F)) / 2``.

Modes. ``fmi.m`` is not symmetric in the sources: its loop computes the A-F term first and, unless
the raw A and F windows are identical, overwrites its F window with the normalised copy (all ones
where F is flat); the B-F term then applies the identical-window rule to B's raw window against
that copy. So the B-F rule sees raw F only where A's window equals F's: elsewhere a B window equal
to F scores the generic NMI (0 for a "one-hot" window, eight equal pixels and one brighter, whose
distribution is a point mass), and a B window equal to *normalised* F scores 1. Max-fused slices
have many one-hot windows at the edge of the black background, copied from a source into F, and
there the two modes differ in the third decimal. ``mode="reference"``, the **default** of every
function here, follows that control flow, so a number printed as ``FMI_*`` is the one the field's
code prints (and swapping A and B changes it); ``mode="symmetric"`` applies the rule to raw B and
raw F, the published definition, symmetric in A and B. The modes agree on every window where
neither source's window equals F's raw or normalised window (almost all windows of a mean-fused
image).

Degenerate windows, as the reference treats them: identical raw feature windows of X and F give 1;
a constant window becomes the uniform distribution. Where both windows are constant (but differ),
step 3 is 0/0 in exact arithmetic and the reference's value comes from round-off: summed left to
right (MATLAB's ``sum`` of a short vector; our loop transcription in the tests does the same), the
mean of nine copies of 1/9 is not 1/9, the centred vectors are equal tiny constants, ``c = 1`` and
the window scores 1. We give 1, which is also the intent of the identical-window rule (normalised,
the two windows are the same). Where exactly one window is constant, ``c`` is 0 and the window
scores 0 (the reference gets round-off noise of about 1e-16). FMI is never NaN.

Which feature is "FMI"? Haghighat's public ``fmi.m`` documents raw pixels as its default ("default:
image with no feature extraction"; "``fmi(ima,imb,imf,'none',3)``, or simply ``fmi(ima,imb,imf)``")
but its code sets ``feature = 'edge'`` when none is given: a bare ``fmi(a, b, f)`` call — what a
paper that reports just "FMI" most likely ran — computes the **edge** feature, FMI_edge. The
copies of it that circulate as ``analysis_fmi.m`` with DenseFuse-style evaluation scripts keep that
default, and those scripts label the bare call ``FMI_pixel`` (next to explicit ``'dct'`` and
``'wavelet'`` calls): their published "FMI_pixel" numbers are FMI_edge values. Here every feature
is named explicitly (``FMI_pixel`` is the raw-pixel feature); :data:`REFERENCE_DEFAULT_FEATURE`
records the reference's default.

Known deviation: MATLAB's ``dmey`` filter has 102 taps, PyWavelets' 62 (PyWavelets issue #261);
we use PyWavelets', so ``FMI_wavelet`` differs slightly from MATLAB's (its feature image is 316 x
316 instead of 356 x 356 for a 256 x 256 input). The other features follow MATLAB's definitions
(``edge``: the thinning rule of its portable ``computeEdgesWithThinning``).

The numpy functions return a float; :func:`fmi_torch` takes ``(N, 1, H, W)`` tensors in 0..255 on
any device and returns a float64 tensor ``(N,)``; both share one implementation of the window
statistics and of the modes (``_fmi_map``), so they agree to round-off.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import numpy as np

from pipeline.metrics.checks import check_triple

if TYPE_CHECKING:  # torch is imported lazily: numpy users do not pay for it
    import torch

__all__ = [
    "FEATURES",
    "REFERENCE_DEFAULT_FEATURE",
    "Feature",
    "MODES",
    "DEFAULT_MODE",
    "Mode",
    "fmi",
    "fmi_pixel",
    "fmi_gradient",
    "fmi_edge",
    "fmi_dct",
    "fmi_wavelet",
    "fmi_torch",
    "feature_image",
]

Feature = Literal["pixel", "gradient", "edge", "dct", "wavelet"]
Mode = Literal["reference", "symmetric"]
#: ``"reference"``: ``fmi.m``'s control flow, asymmetric in the sources; ``"symmetric"``: the
#: published definition, ``(NMI(A, F) + NMI(B, F)) / 2`` with one rule for both terms.
MODES: tuple[str, ...] = ("reference", "symmetric")
#: Every FMI function computes what ``fmi.m`` prints unless told otherwise.
DEFAULT_MODE = "reference"
#: The features of the reference ``fmi.m`` ('none' there is our ``"pixel"``).
FEATURES: tuple[str, ...] = ("pixel", "gradient", "edge", "dct", "wavelet")
#: What Haghighat's ``fmi.m`` computes when called without a feature argument.
REFERENCE_DEFAULT_FEATURE = "edge"

# MATLAB eps(1): edge()'s thinning compares |gx| >= |gy| - 100 * eps.
_MATLAB_EPS = 2.220446049250313e-16
# Windows per chunk of the window statistics. On the CPU, chunks whose arrays stay in the L2 cache
# make the code 2-3x faster than whole-image arrays; on a GPU, large chunks keep kernels busy.
_CPU_CHUNK = 2048
_GPU_CHUNK = 1 << 18
# Smallest magnitude passed to log2: 0 * log2(_TINY) = 0 gives the convention 0 log 0 = 0.
_TINY = 1e-300


# ----------------------------------------------------------------------------- array adapters
# The window statistics run on arrays laid out positions-first, ``(l, n)`` for ``n`` windows of
# ``l`` pixels, so that every reduction over a window is a handful of long vector operations.


class _NumpyOps:
    """The few array operations the window statistics need, for numpy."""

    @staticmethod
    def merge(first: np.ndarray, second: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Sort the union of two ``(l, n)`` sets of values in [0, 2) per column (round-off
        negatives count as 0); ties put ``first`` before ``second``. Returns the sorted ``(2l, n)``
        values and a mask of those that came from ``first``."""
        # Non-negative doubles below 2 sort like their int64 bit patterns with bit 62 clear, so
        # the origin fits in the lowest bit and a plain integer sort merges (5x faster than a
        # stable argsort). Round-off negatives become +0.0 (adding 0.0 also turns -0.0 into +0.0).
        keys = (np.maximum(np.concatenate([first, second]), 0.0) + 0.0).view(np.int64) << 1
        keys[first.shape[0]:] |= 1
        keys = np.ascontiguousarray(np.sort(keys.T, axis=1).T)
        return (keys >> 1).view(np.float64), (keys & 1) == 0

    @staticmethod
    def index(rows: np.ndarray) -> np.ndarray:
        """Index for :meth:`gather` of ``x[rows[k, i], i]`` from ``(l, n)`` arrays."""
        return rows.astype(np.intp) * rows.shape[1] + np.arange(rows.shape[1])

    @staticmethod
    def gather(x: np.ndarray, index: np.ndarray) -> np.ndarray:
        return x.ravel().take(index)

    @staticmethod
    def cumsum(x: np.ndarray) -> np.ndarray:
        # Row by row: numpy's cumsum over axis 0 walks column by column, ten times slower here.
        out = x.copy()
        for k in range(1, out.shape[0]):
            out[k] += out[k - 1]
        return out

    @staticmethod
    def arange(n: int, like: np.ndarray) -> np.ndarray:
        return np.arange(n, dtype=np.float64)[:, None]

    @staticmethod
    def cat(parts: list) -> np.ndarray:
        return np.concatenate(parts)

    @staticmethod
    def amin(x: np.ndarray) -> np.ndarray:
        return x.min(0)

    @staticmethod
    def amax(x: np.ndarray) -> np.ndarray:
        return x.max(0)

    @staticmethod
    def nonzero(mask: np.ndarray) -> np.ndarray:
        return np.flatnonzero(mask)

    @staticmethod
    def columns(x: np.ndarray, idx: np.ndarray) -> np.ndarray:
        # np.take keeps the C order that x[:, idx] would lose (and with it the speed).
        return np.take(x, idx, axis=1)


class _TorchOps:
    """The same operations for torch tensors (any device)."""

    @staticmethod
    def merge(first: "torch.Tensor", second: "torch.Tensor") -> tuple["torch.Tensor", "torch.Tensor"]:
        import torch

        merged = torch.cat([first, second]).clamp_min(0.0)
        order = torch.argsort(merged, dim=0, stable=True)
        return merged.gather(0, order), order < first.shape[0]

    @staticmethod
    def index(rows: "torch.Tensor") -> "torch.Tensor":
        import torch

        return rows.to(torch.int64)

    @staticmethod
    def gather(x: "torch.Tensor", index: "torch.Tensor") -> "torch.Tensor":
        return x.gather(0, index)

    @staticmethod
    def cumsum(x: "torch.Tensor") -> "torch.Tensor":
        return x.cumsum(0)

    @staticmethod
    def arange(n: int, like: "torch.Tensor") -> "torch.Tensor":
        import torch

        return torch.arange(n, dtype=like.dtype, device=like.device)[:, None]

    @staticmethod
    def cat(parts: list) -> "torch.Tensor":
        import torch

        return torch.cat(parts)

    @staticmethod
    def amin(x: "torch.Tensor") -> "torch.Tensor":
        return x.amin(0)

    @staticmethod
    def amax(x: "torch.Tensor") -> "torch.Tensor":
        return x.amax(0)

    @staticmethod
    def nonzero(mask: "torch.Tensor") -> "torch.Tensor":
        return mask.nonzero()[:, 0]

    @staticmethod
    def columns(x: "torch.Tensor", idx: "torch.Tensor") -> "torch.Tensor":
        return x.index_select(1, idx)


def _ops(x: Any) -> type:
    return _NumpyOps if isinstance(x, np.ndarray) else _TorchOps


def _where(cond: Any, a: Any, b: Any) -> Any:
    """``np.where`` / ``torch.where`` with python-scalar branches."""
    if isinstance(cond, np.ndarray):
        return np.where(cond, a, b)
    import torch

    return torch.where(cond, a, b)


def _log2abs(x: Any) -> Any:
    """``log2|x|``, finite everywhere (about -1000 at 0, where callers multiply it by 0)."""
    if isinstance(x, np.ndarray):
        return np.log2(np.maximum(np.abs(x), _TINY))
    return x.abs().clamp_min(_TINY).log2()


def _xlog2abs(x: Any) -> Any:
    """``x * log2|x|`` with 0 at 0 (MATLAB's ``real(x .* log2(x))``)."""
    return x * _log2abs(x)


def _clip(x: Any, low: float, high: float) -> Any:
    if isinstance(x, np.ndarray):
        return np.minimum(np.maximum(x, low), high)
    return x.clamp(low, high)


def _as_float(mask: Any, like: Any) -> Any:
    """Boolean array -> 0./1. in ``like``'s float dtype."""
    return mask.astype(like.dtype) if isinstance(mask, np.ndarray) else mask.to(like.dtype)


# ----------------------------------------------------------------------------- window statistics


class _Distribution(NamedTuple):
    """Per-window distributions of ``n`` windows of ``l`` positions (arrays ``(l, n)`` or ``(n,)``)."""

    pdf: Any
    cdf: Any
    log_pdf: Any  # log2 of the pdf (finite; multiplied by pdf = 0 where it is -inf)
    entropy: Any  # bits
    spread: Any  # standard deviation of the position 1..l
    centred: Any  # pdf minus its mean over the window
    centred_norm2: Any
    total: Any  # sum of the pdf (1 up to round-off)
    cdf_total: Any


def _distribution(windows: Any) -> _Distribution:
    """Distributions of non-constant raw feature windows ``(l, n)``: each window min-max normalised
    and divided by its sum (as the reference; the two steps reduce to one division)."""
    ops = _ops(windows)
    length = windows.shape[0]
    ones = ops.arange(length, windows)[:, 0] * 0.0 + 1.0
    pdf = windows - ops.amin(windows)
    pdf /= ones @ pdf
    log_pdf = _log2abs(pdf)
    pos = ones.cumsum(0)
    mean_pos = pos @ pdf
    total = ones @ pdf
    centred = pdf - total / length
    cdf = ops.cumsum(pdf)
    return _Distribution(
        pdf=pdf,
        cdf=cdf,
        log_pdf=log_pdf,
        entropy=-(ones @ (pdf * log_pdf)),
        spread=_clip(pos * pos @ pdf - mean_pos * mean_pos, 0.0, float("inf")) ** 0.5,
        centred=centred,
        centred_norm2=ones @ (centred * centred),
        total=total,
        cdf_total=ones @ cdf,
    )


def _generic_nmi(xw: Any, fw: Any) -> Any:
    """NMI of windows that are neither identical nor constant: ``(l, n)`` raw features -> ``(n,)``."""
    ops = _ops(xw)
    length = xw.shape[0]
    dx, df = _distribution(xw), _distribution(fw)
    x, f, h_x, h_f = dx.pdf, df.pdf, dx.entropy, df.entropy

    # Pearson correlation of the two distributions (as vectors over the window positions).
    # Non-constant windows have non-constant distributions, so the denominator is > 0.
    c = (dx.centred * df.centred).sum(0) / (dx.centred_norm2 * df.centred_norm2) ** 0.5

    # The Frechet bound as a coupling u -> (F^-1(u), X^-1(u)) (upper) or (F^-1(u), X^-1(1 - u))
    # (lower): merging the two CDFs' breakpoints gives the at most 2l cells it occupies and their
    # masses, instead of the reference's l x l table of differences of min(F_i, X_j) or
    # max(F_i + X_j - 1, 0).
    upper = c >= 0
    breaks, from_f = ops.merge(df.cdf, _where(upper, dx.cdf, 1.0 - dx.cdf))
    from_f = _as_float(from_f, x)
    row = ops.cumsum(from_f) - from_f  # f breakpoints before each merged one
    col = ops.arange(2 * length, x) - row  # x breakpoints before it
    mass = breaks.copy() if isinstance(breaks, np.ndarray) else breaks.clone()
    mass[1:] -= breaks[:-1]
    row = _clip(row, 0, length - 1)
    col = _where(upper, _clip(col, 0, length - 1), _clip(length - col, 0, length - 1))
    # Covariance of the positions under the bound (Hoeffding): sum_ij bound_CDF(i, j) - F_i X_j.
    cov = (mass * (length - row) * (length - col)).sum(0) - df.cdf_total * dx.cdf_total
    spread = dx.spread * df.spread
    corr = cov / _where(spread > 0, spread, 1.0)
    degenerate = (spread == 0) | (corr == 0) | (upper & (c == 0))
    t = _where(degenerate, 0.0, c / _where(corr == 0, 1.0, corr))

    # Joint entropy of t * bound + (1 - t) f x^T: the product part in closed form over all l^2
    # cells, then the <= 2l cells the bound occupies corrected one by one.
    rest = 1.0 - t
    log_rest = _log2abs(rest)
    joint = -rest * (df.total * dx.total * log_rest - dx.total * h_f - df.total * h_x)
    row_index, col_index = ops.index(row), ops.index(col)
    product = rest * ops.gather(f, row_index) * ops.gather(x, col_index)
    log_product = log_rest + ops.gather(df.log_pdf, row_index) + ops.gather(dx.log_pdf, col_index)
    joint -= (_xlog2abs(product + t * mass) - product * log_product).sum(0)

    mi = h_x + h_f - joint
    total = h_x + h_f
    return _where((mi == 0) | (total == 0), 0.0, 2.0 * mi / _where(total == 0, 1.0, total))


def _normalised(windows: Any) -> Any:
    """Min-max normalised windows ``(l, n)``, all ones where a window is constant (the reference's
    ``(w - min) / (max - min)``, same operations so the values are bit-identical)."""
    ops = _ops(windows)
    low, high = ops.amin(windows), ops.amax(windows)
    flat = high == low
    return _where(flat, 1.0, (windows - low) / _where(flat, 1.0, high - low))


def _window_nmi(xw: Any, fw: Any, equal: Any) -> Any:
    """Per-window NMI of feature windows ``(l, n)`` (positions in MATLAB's column-major order);
    ``equal`` ``(n,)`` marks the windows that the identical-window rule scores 1."""
    ops = _ops(xw)
    out = xw[0] * 0.0
    x_flat = ops.amin(xw) == ops.amax(xw)
    f_flat = ops.amin(fw) == ops.amax(fw)
    out[equal | (x_flat & f_flat)] = 1.0
    idx = ops.nonzero(~equal & ~x_flat & ~f_flat)
    on_gpu = not isinstance(xw, np.ndarray) and xw.device.type != "cpu"
    chunk = _GPU_CHUNK if on_gpu else _CPU_CHUNK
    for start in range(0, int(idx.shape[0]), chunk):
        sel = idx[start:start + chunk]
        out[sel] = _generic_nmi(ops.columns(xw, sel), ops.columns(fw, sel))
    return out


def _fmi_map(wa: Any, wb: Any, wf: Any, mode: str) -> Any:
    """Per-window FMI ``(NMI(A, F) + NMI(B, F)) / 2`` of feature windows ``(l, n)``.

    In ``"reference"`` mode the B-F identical-window test compares B's raw window with the F window
    as ``fmi.m``'s A-F branch leaves it: raw where A's window equals F's, else normalised. Past that
    test both branches see the same normalised F, so the rest of the B-F computation is shared.
    """
    equal_a = (wa == wf).all(0)
    seen = wf if mode == "symmetric" else _where(equal_a, wf, _normalised(wf))
    return (_window_nmi(wa, wf, equal_a) + _window_nmi(wb, wf, (wb == seen).all(0))) / 2.0


# ----------------------------------------------------------------------------- features (numpy)


def _check_feature(feature: str) -> str:
    if feature not in FEATURES:
        raise ValueError(f"unknown FMI feature {feature!r}; choose one of {', '.join(FEATURES)}")
    return feature


def _check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"unknown FMI mode {mode!r}; choose one of {', '.join(MODES)}")
    return mode


def _check_window(window: int) -> int:
    if int(window) != window or window < 3 or window % 2 == 0:
        raise ValueError(f"FMI window must be an odd integer >= 3, got {window!r}")
    return int(window)


def _matlab_sobel_edge(image: np.ndarray) -> np.ndarray:
    """MATLAB ``edge(im)``: Sobel, automatic threshold, directional thinning; boolean map."""
    from scipy import ndimage

    sobel = np.array([[1.0, 2.0, 1.0], [0.0, 0.0, 0.0], [-1.0, -2.0, -1.0]]) / 8.0
    gx = ndimage.correlate(image, sobel.T, mode="nearest")
    gy = ndimage.correlate(image, sobel, mode="nearest")
    return _thin_edges(np, gx, gy)


def _thin_edges(xp: Any, gx: Any, gy: Any) -> Any:
    """Edge map from gradients ``(..., H, W)``: ``b > 4 mean(b)`` and a local maximum of ``b``
    across the dominant gradient direction (MATLAB's ``computeedge``, Sobel offsets 0)."""
    mag = gx * gx + gy * gy
    if xp is np:
        cutoff = 4.0 * mag.mean((-2, -1), keepdims=True)
        true_col = np.ones(mag[..., :, :1].shape, dtype=bool)
        true_row = np.ones(mag[..., :1, :].shape, dtype=bool)
        cat = np.concatenate
    else:
        cutoff = 4.0 * mag.mean((-2, -1), keepdim=True)
        true_col = xp.ones(mag[..., :, :1].shape, dtype=xp.bool, device=mag.device)
        true_row = xp.ones(mag[..., :1, :].shape, dtype=xp.bool, device=mag.device)
        cat = xp.cat
    ax, ay = abs(gx), abs(gy)
    left = cat([true_col, mag[..., :, :-1] <= mag[..., :, 1:]], -1)
    right = cat([mag[..., :, :-1] > mag[..., :, 1:], true_col], -1)
    up = cat([true_row, mag[..., :-1, :] <= mag[..., 1:, :]], -2)
    down = cat([mag[..., :-1, :] > mag[..., 1:, :], true_row], -2)
    tol = 100.0 * _MATLAB_EPS
    return (mag > cutoff) & (((ax >= ay - tol) & left & right) | ((ay >= ax - tol) & up & down))


def _rerange(x: np.ndarray) -> np.ndarray:
    lo, hi = x.min(), x.max()
    return np.ones_like(x) if hi == lo else (x - lo) / (hi - lo)


def feature_image(image: np.ndarray, feature: Feature = "pixel") -> np.ndarray:
    """The feature image FMI compares, as the reference ``fmi.m`` extracts it.

    Args:
        image: gray ``(H, W)`` image in 0..255.
        feature: ``"pixel"``, ``"gradient"``, ``"edge"``, ``"dct"`` or ``"wavelet"`` (see the
            module docstring).

    Returns:
        float64 feature image (``(H, W)``; larger for ``"wavelet"``).

    Raises:
        ValueError: unknown feature, or an image too small for the feature.
    """
    _check_feature(feature)
    x = np.asarray(image, dtype=np.float64)
    if feature == "pixel":
        return x
    if feature == "gradient":
        if x.shape[1] < 2:
            raise ValueError(f"the gradient feature needs an image at least 2 pixels wide, got {x.shape}")
        return np.gradient(x, axis=1)
    if feature == "edge":
        return _matlab_sobel_edge(x).astype(np.float64)
    if feature == "dct":
        from scipy.fft import dctn

        return dctn(x, type=2, norm="ortho")
    import pywt

    c_a, (c_h, c_v, c_d) = pywt.dwt2(x, "dmey", mode="symmetric")
    return _rerange(np.block([[c_a, c_h], [c_v, c_d]]))


def _column_major_windows(x: np.ndarray, window: int) -> np.ndarray:
    """All ``window x window`` windows as ``(window^2, n)``: row ``k`` holds window position
    ``k`` of MATLAB's column-major ``w(:)`` for every window."""
    rows, cols = x.shape[0] - window + 1, x.shape[1] - window + 1
    return np.stack([x[r:r + rows, c:c + cols].ravel() for c in range(window) for r in range(window)])


# ----------------------------------------------------------------------------- public API


def fmi(a: np.ndarray, b: np.ndarray, f: np.ndarray, feature: Feature = "pixel", window: int = 3,
        mode: Mode = DEFAULT_MODE) -> float:
    """Feature mutual information of a fused image (Fast-FMI), in [0, 1].

    The default ``mode="reference"`` is the value Haghighat's ``fmi.m`` prints (not symmetric in
    the sources); ``mode="symmetric"`` is the published definition (see the module docstring).

    Args:
        a: first source, gray ``(H, W)``, 0..255 (uint8 or float).
        b: second source, same shape.
        f: fused image, same shape.
        feature: ``"pixel"`` (default here; the reference's bare call means ``"edge"``, see the
            module docstring), ``"gradient"``, ``"edge"``, ``"dct"`` or ``"wavelet"``.
        window: odd sliding-window size (default 3, as the reference).
        mode: ``"reference"`` (default: ``fmi.m``'s control flow) or ``"symmetric"``.

    Returns:
        the FMI value; 1 when F equals both sources.

    Raises:
        ValueError: shapes differ, colour input, unknown feature or mode, even window, or an image
            smaller than the window.
    """
    _check_feature(feature)
    _check_mode(mode)
    window = _check_window(window)
    a, b, f = check_triple(a, b, f, min_size=window)
    fa, fb, ff = (feature_image(x, feature) for x in (a, b, f))
    wa, wb, wf = (_column_major_windows(x, window) for x in (fa, fb, ff))
    return float(_fmi_map(wa, wb, wf, mode).mean())


def fmi_pixel(a: np.ndarray, b: np.ndarray, f: np.ndarray, window: int = 3,
              mode: Mode = DEFAULT_MODE) -> float:
    """``FMI_pixel``: :func:`fmi` on raw pixels (the reference's ``'none'``); ``mode`` as there
    (default ``"reference"``, ``fmi.m``'s value)."""
    return fmi(a, b, f, "pixel", window, mode)


def fmi_gradient(a: np.ndarray, b: np.ndarray, f: np.ndarray, window: int = 3,
                 mode: Mode = DEFAULT_MODE) -> float:
    """``FMI_gradient``: :func:`fmi` on MATLAB ``gradient`` (horizontal derivative) images; ``mode``
    as there (default ``"reference"``, ``fmi.m``'s value)."""
    return fmi(a, b, f, "gradient", window, mode)


def fmi_edge(a: np.ndarray, b: np.ndarray, f: np.ndarray, window: int = 3,
             mode: Mode = DEFAULT_MODE) -> float:
    """``FMI_edge``: :func:`fmi` on MATLAB ``edge`` (Sobel) maps, the reference's default feature;
    ``mode`` as there (default ``"reference"``, ``fmi.m``'s value)."""
    return fmi(a, b, f, "edge", window, mode)


def fmi_dct(a: np.ndarray, b: np.ndarray, f: np.ndarray, window: int = 3, mode: Mode = DEFAULT_MODE) -> float:
    """``FMI_dct``: :func:`fmi` on the whole-image orthonormal DCT; ``mode`` as there (default
    ``"reference"``, ``fmi.m``'s value)."""
    return fmi(a, b, f, "dct", window, mode)


def fmi_wavelet(a: np.ndarray, b: np.ndarray, f: np.ndarray, window: int = 3,
                mode: Mode = DEFAULT_MODE) -> float:
    """``FMI_wavelet``: :func:`fmi` on the one-level discrete Meyer DWT (see the deviation note);
    ``mode`` as there (default ``"reference"``, ``fmi.m``'s control flow)."""
    return fmi(a, b, f, "wavelet", window, mode)


# ----------------------------------------------------------------------------- torch


def _torch_features(x: "torch.Tensor", feature: str) -> "torch.Tensor":
    """Feature images of a float64 batch ``(N, 1, H, W)``."""
    import torch
    import torch.nn.functional as F

    if feature == "pixel":
        return x
    if feature == "gradient":
        if x.shape[-1] < 2:
            raise ValueError(f"the gradient feature needs images at least 2 pixels wide, "
                             f"got {tuple(x.shape)}")
        inner = (x[..., 2:] - x[..., :-2]) / 2.0
        return torch.cat([x[..., 1:2] - x[..., :1], inner, x[..., -1:] - x[..., -2:-1]], -1)
    if feature == "edge":
        sobel = torch.tensor([[1.0, 2.0, 1.0], [0.0, 0.0, 0.0], [-1.0, -2.0, -1.0]],
                             dtype=x.dtype, device=x.device) / 8.0
        padded = F.pad(x, (1, 1, 1, 1), mode="replicate")
        gx = F.conv2d(padded, sobel.t()[None, None])
        gy = F.conv2d(padded, sobel[None, None])
        return _thin_edges(torch, gx, gy).to(x.dtype)
    if feature == "dct":
        return _dct_matrix(x.shape[-2], x) @ x @ _dct_matrix(x.shape[-1], x).t()
    # The discrete Meyer DWT runs in PyWavelets on the CPU, one image at a time.
    feats = [feature_image(img[0].cpu().numpy(), "wavelet") for img in x]
    return torch.from_numpy(np.stack(feats)[:, None]).to(device=x.device, dtype=x.dtype)


def _dct_matrix(n: int, like: "torch.Tensor") -> "torch.Tensor":
    """Orthonormal DCT-II matrix ``D`` (``D @ v`` = MATLAB ``dct(v)``)."""
    import torch

    k = torch.arange(n, dtype=like.dtype, device=like.device)[:, None]
    i = torch.arange(n, dtype=like.dtype, device=like.device)[None, :]
    d = torch.cos(torch.pi * (2.0 * i + 1.0) * k / (2.0 * n)) * (2.0 / n) ** 0.5
    d[0] = d[0] / 2.0**0.5
    return d


def fmi_torch(
    a: "torch.Tensor", b: "torch.Tensor", f: "torch.Tensor", feature: Feature = "pixel", window: int = 3,
    mode: Mode = DEFAULT_MODE,
) -> "torch.Tensor":
    """Batched :func:`fmi` on tensors, on their device (float64 inside).

    Args:
        a: first sources, ``(N, 1, H, W)``, 0..255.
        b: second sources, same shape.
        f: fused images, same shape.
        feature: as :func:`fmi` (``"wavelet"`` runs in PyWavelets on the CPU).
        window: odd window size (default 3).
        mode: ``"reference"`` (default: ``fmi.m``'s value) or ``"symmetric"``, as :func:`fmi`.

    Returns:
        float64 tensor ``(N,)`` of FMI values, equal to :func:`fmi` per image up to round-off.

    Raises:
        ValueError: shapes differ or are not ``(N, 1, H, W)``, unknown feature or mode, even
            window, or images smaller than the window.
    """
    import torch
    import torch.nn.functional as F

    _check_feature(feature)
    _check_mode(mode)
    window = _check_window(window)
    if not (a.shape == b.shape == f.shape) or a.ndim != 4 or a.shape[1] != 1:
        raise ValueError("fmi_torch: a, b and f must be (N, 1, H, W) tensors of one shape, got "
                         f"{tuple(a.shape)}, {tuple(b.shape)}, {tuple(f.shape)}")
    if min(a.shape[-2:]) < window:
        raise ValueError(f"fmi_torch: images of size {tuple(a.shape[-2:])} are smaller than the window")
    n = a.shape[0]
    # Kernel positions come row-major out of unfold; reorder them column-major as MATLAB's w(:).
    size = window * window
    perm = torch.tensor([(k % window) * window + k // window for k in range(size)], device=a.device)

    def windows(x: "torch.Tensor") -> "torch.Tensor":
        feat = _torch_features(x.to(torch.float64), feature)
        cols = F.unfold(feat, window)  # (N, w*w, L)
        return cols[:, perm].transpose(0, 1).reshape(window * window, -1)

    wa, wb, wf = windows(a), windows(b), windows(f)
    return _fmi_map(wa, wb, wf, mode).reshape(n, -1).mean(1)
