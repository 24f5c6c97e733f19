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

import functools
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
# Windows per chunk of the window statistics: on the CPU, chunks whose arrays stay in the L2 cache
# (larger ones are slower, smaller ones pay numpy's per-call cost more often); on a GPU, large
# chunks keep kernels busy. The numpy path extracts windows in bands of about _BAND_CHUNKS chunks.
_CPU_CHUNK = 2048
_GPU_CHUNK = 1 << 18
_BAND_CHUNKS = 4
# Smallest magnitude passed to log2: 0 * log2(_TINY) = 0 gives the convention 0 log 0 = 0.
_TINY = 1e-300


# ----------------------------------------------------------------------------- array adapters
# The window statistics run on arrays laid out positions-first, ``(l, n)`` for ``n`` windows of
# ``l`` pixels, so that every reduction over a window is a handful of long vector operations.


@functools.lru_cache(maxsize=None)
def _merge_program(length: int) -> tuple[tuple[bool, int, int], ...]:
    """Batcher's odd-even merging network for two sorted lists of ``length``, pruned for them.

    The lists sit at positions ``0..length-1`` and ``size..size+length-1`` of a ``2 size`` network
    (``size`` a power of 2), the rest being +inf. Tracking where the infinities are decides every
    comparator that touches one: it is dropped, or (an inf above a value) becomes a relabelling.
    Returns ``(compare, i, j)`` steps: compare-exchange positions ``i < j``, or swap their labels.
    """
    size = 1
    while size < length:
        size *= 2
    pairs: list[tuple[int, int]] = []

    def merge(low: int, n: int, r: int) -> None:
        step = 2 * r
        if step < n:
            merge(low, n, step)
            merge(low + r, n, step)
            pairs.extend((i, i + r) for i in range(low + r, low + n - r, step))
        else:
            pairs.append((low, low + r))

    merge(0, 2 * size, 1)
    inf = [not (k < length or size <= k < size + length) for k in range(2 * size)]
    program = []
    for i, j in pairs:
        if inf[j]:
            continue  # in order already (or both infinite)
        if inf[i]:
            inf[i], inf[j] = False, True
            program.append((False, i, j))
        else:
            program.append((True, i, j))
    return tuple(program)


class _NumpyOps:
    """The few array operations the window statistics need, for numpy."""

    @staticmethod
    def merge(first: np.ndarray, second: np.ndarray, end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Merge two ``(m, n)`` sets of values in [0, 2), each sorted along axis 0, per column; ties
        put ``first`` before ``second``; ``end`` ``(n,)`` (>= all of them) is appended. Returns the
        merged ``(2m + 1, n)`` values and 1 (int64) where a value came from ``second``, else 0."""
        # Non-negative doubles below 2 sort like their int64 bit patterns with bit 62 clear, so the
        # origin fits in the lowest bit; a merging network of row-wise min/max then merges all
        # columns at once (a sort along axis 0 is strided, and transposing costs more than this).
        length, n = first.shape
        rows = np.empty((2 * length + 2, n), dtype=np.int64)
        np.left_shift(first.view(np.int64), 1, out=rows[:length])
        np.left_shift(second.view(np.int64), 1, out=rows[length:2 * length])
        rows[length:2 * length] |= 1
        np.left_shift(end.view(np.int64), 1, out=rows[-1])
        size = 1
        while size < length:
            size *= 2
        where = {k: k for k in range(length)}  # network position -> row of ``rows``
        where.update({size + k: length + k for k in range(length)})
        spare = 2 * length  # the last row holds ``end``
        view = list(rows)
        minimum, maximum = np.minimum, np.maximum
        for compare, i, j in _merge_program(length):
            if not compare:
                where[i] = where.pop(j)
                continue
            lo, hi = where[i], where[j]
            minimum(view[lo], view[hi], out=view[spare])
            maximum(view[lo], view[hi], out=view[hi])
            where[i], spare = spare, lo
        keys = rows.take([where[k] for k in range(2 * length)] + [2 * length + 1], axis=0)
        return (keys >> 1).view(np.float64), keys & 1

    @staticmethod
    def cells(col: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Indices for :meth:`take` of the cells ``(k - col[k, i], col[k, i])`` of column ``i``,
        ``k`` the row of ``col``: the first into the fused image's arrays, the second into X's."""
        n = col.shape[1]
        scaled = col * n
        return _cell_base(col.shape[0], n) - scaled, scaled + np.arange(n)

    @staticmethod
    def take(x: np.ndarray, index: np.ndarray) -> np.ndarray:
        return x.ravel().take(index)

    @staticmethod
    def flipped(pdf: np.ndarray, flip: np.ndarray) -> np.ndarray:
        """``pdf`` ``(l, n)`` with its rows reversed in the columns where ``flip``."""
        if not flip.any():
            return pdf
        out = pdf.copy()
        np.copyto(out, pdf[::-1], where=flip)
        return out

    @staticmethod
    def diff(x: np.ndarray) -> np.ndarray:
        """Differences of consecutive rows, the first row kept (``x[k] - x[k - 1]``, ``x[-1] = 0``)."""
        out = np.empty_like(x)
        out[0] = x[0]
        np.subtract(x[1:], x[:-1], out=out[1:])
        return out

    @staticmethod
    def dot(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Column sums of ``x * y``."""
        return np.einsum("kn,kn->n", x, y)

    @staticmethod
    def cumsum(x: np.ndarray, exclusive: bool = False) -> np.ndarray:
        """Cumulative sum along axis 0 (``exclusive``: of the rows before each row)."""
        # Row by row: numpy's cumsum over axis 0 walks column by column, ten times slower here.
        out = np.empty_like(x)
        if exclusive:
            out[0] = 0
            for k in range(1, out.shape[0]):
                np.add(out[k - 1], x[k - 1], out=out[k])
        else:
            out[0] = x[0]
            for k in range(1, out.shape[0]):
                np.add(out[k - 1], x[k], out=out[k])
        return out

    @staticmethod
    def arange(n: int, like: np.ndarray) -> np.ndarray:
        return np.arange(n, dtype=np.float64)[:, None]

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

    @staticmethod
    def to_float(x: np.ndarray) -> np.ndarray:
        return x.astype(np.float64)


class _TorchOps:
    """The same operations for torch tensors (any device)."""

    @staticmethod
    def merge(first: "torch.Tensor", second: "torch.Tensor",
              end: "torch.Tensor") -> tuple["torch.Tensor", "torch.Tensor"]:
        import torch

        merged = torch.cat([first, second])
        order = torch.argsort(merged, dim=0, stable=True)
        from_second = torch.cat([order >= first.shape[0], order[:1] >= 0]).to(torch.int64)
        return torch.cat([merged.gather(0, order), end[None]]), from_second

    @staticmethod
    def cells(col: "torch.Tensor") -> tuple["torch.Tensor", "torch.Tensor"]:
        import torch

        k = torch.arange(col.shape[0], device=col.device)[:, None]
        return k - col, col

    @staticmethod
    def take(x: "torch.Tensor", index: "torch.Tensor") -> "torch.Tensor":
        return x.gather(0, index)

    @staticmethod
    def flipped(pdf: "torch.Tensor", flip: "torch.Tensor") -> "torch.Tensor":
        import torch

        return torch.where(flip, pdf.flip(0), pdf)

    @staticmethod
    def diff(x: "torch.Tensor") -> "torch.Tensor":
        import torch

        return torch.cat([x[:1], x[1:] - x[:-1]])

    @staticmethod
    def dot(x: "torch.Tensor", y: "torch.Tensor") -> "torch.Tensor":
        return (x * y).sum(0)

    @staticmethod
    def cumsum(x: "torch.Tensor", exclusive: bool = False) -> "torch.Tensor":
        out = x.cumsum(0)
        return out - x if exclusive else out

    @staticmethod
    def arange(n: int, like: "torch.Tensor") -> "torch.Tensor":
        import torch

        return torch.arange(n, dtype=like.dtype, device=like.device)[:, None]

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

    @staticmethod
    def to_float(x: "torch.Tensor") -> "torch.Tensor":
        import torch

        return x.to(torch.float64)


@functools.lru_cache(maxsize=16)
def _cell_base(rows: int, n: int) -> np.ndarray:
    """``k n + i`` for row ``k`` and column ``i`` of a ``(rows, n)`` array (flat indices)."""
    base = np.arange(rows)[:, None] * n + np.arange(n)
    base.flags.writeable = False
    return base


def _ops(x: Any) -> type:
    return _NumpyOps if isinstance(x, np.ndarray) else _TorchOps


def _where(cond: Any, a: Any, b: Any) -> Any:
    """``np.where`` / ``torch.where`` with python-scalar branches."""
    if isinstance(cond, np.ndarray):
        return np.where(cond, a, b)
    import torch

    return torch.where(cond, a, b)


def _moments(length: int, like: Any) -> Any:
    """Rows ``1``, ``i`` and ``i^2`` for the positions ``i = 1..length`` (``(3, length)``)."""
    if isinstance(like, np.ndarray):
        return _moments_numpy(length)
    import torch

    pos = torch.arange(1, length + 1, dtype=like.dtype, device=like.device)
    return torch.stack([pos * 0.0 + 1.0, pos, pos * pos])


@functools.lru_cache(maxsize=8)
def _moments_numpy(length: int) -> np.ndarray:
    pos = np.arange(1.0, length + 1.0)
    matrix = np.stack([np.ones(length), pos, pos * pos])
    matrix.flags.writeable = False
    return matrix


def _minimum(x: Any, y: Any) -> Any:
    return np.minimum(x, y) if isinstance(x, np.ndarray) else x.minimum(y)


def _log2abs(x: Any, nonnegative: bool = False) -> Any:
    """``log2|x|``, finite everywhere (about -1000 at 0, where callers multiply it by 0)."""
    if isinstance(x, np.ndarray):
        out = np.maximum(x, _TINY) if nonnegative else np.maximum(np.abs(x), _TINY)
        return np.log2(out, out=out)
    return x.abs().clamp_min(_TINY).log2()


def _xlog2abs_sum(x: Any, nonnegative: bool = False) -> Any:
    """``sum over axis 0 of x log2|x|``, 0 log 0 = 0 (MATLAB's ``real(x .* log2(x))``)."""
    return _ops(x).dot(x, _log2abs(x, nonnegative))


# ----------------------------------------------------------------------------- window statistics


class _Marginal(NamedTuple):
    """Per-window distributions of ``n`` windows of ``l`` positions (arrays ``(l, n)`` or ``(n,)``)."""

    pdf: Any
    entropy: Any  # bits
    total: Any  # sum of the pdf (1 up to round-off)
    mean: Any  # mean position, positions 1..l as the reference counts them
    spread: Any  # standard deviation of the position
    centred: Any  # pdf minus its mean over the window
    centred_norm2: Any


def _marginal(windows: Any) -> _Marginal:
    """Distributions of non-constant raw feature windows ``(l, n)``: each window min-max normalised
    and divided by its sum (as the reference; the two steps reduce to one division)."""
    ops = _ops(windows)
    length = windows.shape[0]
    pdf = windows - ops.amin(windows)
    # Divided, not multiplied by a reciprocal: a one-hot window must give exactly 1 (zero spread).
    moments = _moments(length, pdf)
    pdf /= moments[0] @ pdf
    total, mean, second = moments @ pdf  # sum and moments of the positions 1..l
    centred = pdf - total / length
    return _Marginal(
        pdf=pdf,
        entropy=-_xlog2abs_sum(pdf, nonnegative=True),
        total=total,
        mean=mean,
        spread=_where(second > mean * mean, second - mean * mean, 0.0) ** 0.5,
        centred=centred,
        centred_norm2=ops.dot(centred, centred),
    )


class _Fused(NamedTuple):
    """The fused image's side of a chunk of windows, shared by the A-F and B-F terms."""

    marginal: _Marginal
    cdf: Any


def _fused(windows: Any) -> _Fused:
    ops = _ops(windows)
    m = _marginal(windows)
    return _Fused(m, ops.cumsum(m.pdf))


def _generic_nmi(xw: Any, fused: _Fused) -> Any:
    """NMI of windows that are neither identical nor constant: ``(l, n)`` raw features of X and the
    fused image's side of the same windows -> ``(n,)``."""
    ops = _ops(xw)
    length = xw.shape[0]
    dx, df = _marginal(xw), fused.marginal
    h_x, h_f = dx.entropy, df.entropy

    # Pearson correlation of the two distributions (as vectors over the window positions).
    # Non-constant windows have non-constant distributions, so the denominator is > 0.
    c = ops.dot(dx.centred, df.centred) / (dx.centred_norm2 * df.centred_norm2) ** 0.5

    # The lower Frechet bound of (f, x) is the upper bound of (f, x reversed), mirrored: so X's
    # positions are reversed where c < 0, and the upper bound serves both (|c| for c).
    upper = c >= 0
    x = ops.flipped(dx.pdf, ~upper)
    x_mean = length * dx.total - dx.mean  # mean 0-based position of x reversed

    # The upper bound as a coupling u -> (F^-1(u), X^-1(u)): merging the two CDFs' breakpoints
    # gives the 2l - 1 cells it occupies and their masses, instead of the reference's l x l table
    # of differences of min(F_i, X_j). The cell ending at merged breakpoint k lies in row k - col
    # and column col, col = the x breakpoints before it. Both CDFs end at 1: the last cell, (l - 1,
    # l - 1), ends at the smaller of their last values (the larger one's excess is round-off).
    x_cdf = ops.cumsum(x)
    f_cdf = fused.cdf
    breaks, from_x = ops.merge(f_cdf[:-1], x_cdf[:-1], _minimum(f_cdf[-1], x_cdf[-1]))
    col = ops.cumsum(from_x, exclusive=True)
    mass = ops.diff(breaks)
    # Covariance of the positions under the bound: E[row col] - E[row] E[col] over the cells
    # (row = k - col; the reference sums the equal Hoeffding form, bound_CDF(i, j) - F_i X_j).
    col_f = ops.to_float(col)
    row_col = ops.arange(2 * length - 1, col_f) - col_f
    row_col *= col_f
    cov = ops.dot(mass, row_col) - (df.mean - df.total) * _where(upper, dx.mean - dx.total, x_mean)
    spread = dx.spread * df.spread
    corr = cov / _where(spread > 0, spread, 1.0)
    degenerate = (spread == 0) | (corr == 0) | (upper & (c == 0))
    t = _where(degenerate, 0.0, abs(c) / _where(corr == 0, 1.0, corr))

    # Joint entropy of t * bound + (1 - t) f x^T: the product part in closed form over all l^2
    # cells, then the 2l - 1 cells the bound occupies corrected one by one.
    rest = 1.0 - t
    joint = -rest * (df.total * dx.total * _log2abs(rest) - dx.total * h_f - df.total * h_x)
    f_cells, x_cells = ops.cells(col)
    product = ops.take(df.pdf, f_cells) * ops.take(x, x_cells)
    product *= rest
    nonnegative = bool((rest >= 0).all())  # t <= 1: every entry of the joint is >= 0
    mass *= t
    mass += product
    joint -= _xlog2abs_sum(mass, nonnegative)
    joint += _xlog2abs_sum(product, nonnegative)

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


def _fmi_map(wa: Any, wb: Any, wf: Any, mode: str) -> Any:
    """Per-window FMI ``(NMI(A, F) + NMI(B, F)) / 2`` of feature windows ``(l, n)`` (positions in
    MATLAB's column-major order).

    In ``"reference"`` mode the B-F identical-window test compares B's raw window with the F window
    as ``fmi.m``'s A-F branch leaves it: raw where A's window equals F's, else normalised. Past that
    test both branches see the same normalised F, so the rest of the B-F computation is shared.
    """
    ops = _ops(wa)
    equal_a = (wa == wf).all(0)
    f_flat = ops.amin(wf) == ops.amax(wf)
    terms = []
    for xw in (wa, wb):
        low, high = ops.amin(xw), ops.amax(xw)
        if xw is wa:
            equal = equal_a
        elif mode == "symmetric":
            equal = (wb == wf).all(0)
        else:
            # Normalised F lies in [0, 1] with max 1: only B windows of that range can equal it.
            equal = _where(equal_a, (wb == wf).all(0), False)
            maybe = ops.nonzero(~equal_a & (high == 1.0) & ((low == 0.0) | (low == 1.0)))
            if maybe.shape[0]:
                seen = _normalised(ops.columns(wf, maybe))
                equal[maybe] = (ops.columns(wb, maybe) == seen).all(0)
        x_flat = low == high
        terms.append([xw, equal | (x_flat & f_flat), ~equal & ~x_flat & ~f_flat])
    out = [_where(ones, 1.0, 0.0 * wf[0]) for _, ones, _ in terms]
    idx = ops.nonzero(terms[0][2] | terms[1][2])
    on_gpu = not isinstance(wa, np.ndarray) and wa.device.type != "cpu"
    chunk = _GPU_CHUNK if on_gpu else _CPU_CHUNK
    for start in range(0, int(idx.shape[0]), chunk):
        sel = idx[start:start + chunk]
        first, last = int(sel[0]), int(sel[-1])
        if last - first + 1 == int(sel.shape[0]):  # a run of windows: views, no copies
            sel = slice(first, last + 1)
        fw = wf[:, sel] if isinstance(sel, slice) else ops.columns(wf, sel)
        fused = _fused(fw)
        for (xw, _, generic), values in zip(terms, out):
            need = generic[sel]
            xs = xw[:, sel] if isinstance(sel, slice) else ops.columns(xw, sel)
            if bool(need.all()):
                values[sel] = _generic_nmi(xs, fused)
                continue
            # Windows of this chunk that only the other term needs get F's window as a stand-in.
            nmi = _generic_nmi(_where(need, xs, fw), fused)
            values[sel] = _where(need, nmi, values[sel])
    return (out[0] + out[1]) / 2.0


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
    feats = [feature_image(x, feature) for x in (a, b, f)]
    # Bands of window rows, a few chunks of windows each: their arrays stay in cache, and the
    # windows that need the generic statistics still fill whole chunks.
    rows, cols = feats[0].shape[0] - window + 1, feats[0].shape[1] - window + 1
    band = max(1, _BAND_CHUNKS * _CPU_CHUNK // cols)
    total = 0.0
    for top in range(0, rows, band):
        bottom = min(rows, top + band) + window - 1
        wa, wb, wf = (_column_major_windows(x[top:bottom], window) for x in feats)
        total += float(_fmi_map(wa, wb, wf, mode).sum())
    return total / (rows * cols)


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
