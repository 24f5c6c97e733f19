"""FMI (Fast-FMI of Haghighat & Razian): the vectorised metric against a literal loop port of the
reference ``fmi.m`` window statistics, its properties, its features, and the torch version."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline.metrics import fmi as F
from tests.conftest import shared_path

# ----------------------------------------------------------------------------- literal oracle
# A direct, loop-by-loop transcription of the reference's per-window computation (including its
# sequential sums, whose round-off decides the both-windows-constant case), written to check the
# vectorised implementation. Slow: only for small images.


def _seq_sum(values: list[float]) -> float:
    total = 0.0
    for v in values:
        total += v
    return total


def _neg_xlog2(x: float) -> float:
    return -x * math.log2(abs(x)) if x != 0 else 0.0


def _oracle_window(xs: list[float], fs: list[float]) -> float:
    l = len(xs)
    if xs == fs:
        return 1.0

    def distribution(v: list[float]) -> list[float]:
        lo, hi = min(v), max(v)
        v = [1.0] * l if hi == lo else [(t - lo) / (hi - lo) for t in v]
        s = _seq_sum(v)
        return [t / s for t in v]

    a, f = distribution(xs), distribution(fs)
    ac, fc, sa, sf = [], [], 0.0, 0.0
    for i in range(l):
        sa, sf = sa + a[i], sf + f[i]
        ac.append(sa)
        fc.append(sf)
    ma, mf = _seq_sum(a) / l, _seq_sum(f) / l
    at, ft = [t - ma for t in a], [t - mf for t in f]
    num = _seq_sum([p * q for p, q in zip(at, ft)])
    c = 0.0 if num == 0 else num / math.sqrt(_seq_sum([p * p for p in at]) * _seq_sum([q * q for q in ft]))
    ea = e2a = ef = e2f = 0.0
    for i in range(1, l + 1):
        ea, e2a = ea + i * a[i - 1], e2a + i * i * a[i - 1]
        ef, e2f = ef + i * f[i - 1], e2f + i * i * f[i - 1]
    asd, fsd = math.sqrt(max(e2a - ea * ea, 0.0)), math.sqrt(max(e2f - ef * ef, 0.0))
    if c >= 0:
        def bound(x: float, y: float) -> float:
            return 0.5 * (x + y - abs(x - y))
        zero = c == 0 or asd == 0 or fsd == 0
    else:
        def bound(x: float, y: float) -> float:
            return 0.5 * (x + y - 1 + abs(x + y - 1))
        zero = asd == 0 or fsd == 0
    if zero:
        t = 0.0
    else:
        cov = _seq_sum([bound(fc[i], ac[j]) - fc[i] * ac[j] for i in range(l) for j in range(l)])
        t = c / (cov / (fsd * asd))

    def cdf(i: int, j: int) -> float:
        return 0.0 if i < 0 or j < 0 else bound(fc[i], ac[j])

    joint = 0.0
    for i in range(l):
        for j in range(l):
            mass = cdf(i, j) - cdf(i - 1, j) - cdf(i, j - 1) + cdf(i - 1, j - 1)
            joint += _neg_xlog2(t * mass + (1 - t) * f[i] * a[j])
    ha = _seq_sum([_neg_xlog2(p) for p in a if p != 0])
    hf = _seq_sum([_neg_xlog2(p) for p in f if p != 0])
    mi = ha + hf - joint
    return 0.0 if mi == 0 else 2 * mi / (ha + hf)


def _oracle_fmi(a: np.ndarray, b: np.ndarray, f: np.ndarray, feature: str, window: int = 3) -> float:
    fa, fb, ff = (F.feature_image(x, feature) for x in (a, b, f))
    r = window // 2
    values = []
    for p in range(r, fa.shape[0] - r):
        for q in range(r, fa.shape[1] - r):
            def win(x: np.ndarray) -> list[float]:
                return list(x[p - r:p + r + 1, q - r:q + r + 1].T.ravel())  # MATLAB's column-major w(:)
            values.append((_oracle_window(win(fa), win(ff)) + _oracle_window(win(fb), win(ff))) / 2)
    return float(np.mean(values))


def _triple(seed: int, shape: tuple[int, int] = (12, 13)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random 8-bit triple with the degenerate windows of real slices: black background in all
    three, constant patches at different levels, F equal to a source in places."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, shape).astype(np.float64)
    b = rng.integers(0, 256, shape).astype(np.float64)
    f = np.round(0.6 * a + 0.4 * b)
    a[:5, :5] = b[:5, :5] = 0
    f[:5, :5] = 3  # both windows constant, different levels
    f[8:, 8:] = 7
    a[7:, 7:] = 10
    b[2:6, 6:] = a[2:6, 6:]
    f[2:5, 6:] = a[2:5, 6:]  # F identical to both sources here
    return a, b, f


# ----------------------------------------------------------------------------- against the oracle


@pytest.mark.parametrize("feature", F.FEATURES)
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_literal_reference(feature: str, seed: int) -> None:
    a, b, f = _triple(seed)
    assert F.fmi(a, b, f, feature) == pytest.approx(_oracle_fmi(a, b, f, feature), abs=1e-12)


def test_window_option_matches_reference() -> None:
    a, b, f = _triple(3, (11, 12))
    value = F.fmi(a, b, f, "pixel", window=5)
    assert value == pytest.approx(_oracle_fmi(a, b, f, "pixel", window=5), abs=1e-12)
    assert value != pytest.approx(F.fmi(a, b, f, "pixel", window=3), abs=1e-3)


def test_atlas_values_match_reference() -> None:
    """Full atlas slice: values the literal oracle gave (pinned; it takes ~minutes to recompute)."""
    from pipeline.io import read_image

    a = read_image(shared_path("harvard", "CT-MRI", "CT", "2010.png")).astype(np.float64)
    b = read_image(shared_path("harvard", "CT-MRI", "MRI", "2010.png")).astype(np.float64)
    f = np.round((a + b) / 2.0)
    for feature, expected in ATLAS_REFERENCE.items():
        assert F.fmi(a, b, f, feature) == pytest.approx(expected, abs=1e-12), feature


#: FMI of the atlas triple (CT-MRI 2010, fused = rounded mean) by the literal oracle above
#: (about two minutes of pure-Python loops for the five features).
ATLAS_REFERENCE = {
    "pixel": 0.6960899046271062,
    "gradient": 0.6864756976437044,
    "edge": 0.873178657998019,
    "dct": 0.43025133322973,
    "wavelet": 0.5465856643408332,
}


# ----------------------------------------------------------------------------- properties


@pytest.mark.parametrize("feature", F.FEATURES)
def test_identical_images_score_one(feature: str, rng: np.random.Generator) -> None:
    a = rng.integers(0, 256, (16, 16)).astype(np.float64)
    assert F.fmi(a, a, a, feature) == 1.0


@pytest.mark.parametrize("feature", F.FEATURES)
def test_symmetric_in_sources(feature: str) -> None:
    a, b, f = _triple(5)
    assert F.fmi(a, b, f, feature) == pytest.approx(F.fmi(b, a, f, feature), abs=1e-15)


@pytest.mark.parametrize("feature", F.FEATURES)
def test_range_and_never_nan(feature: str, rng: np.random.Generator) -> None:
    for _ in range(3):
        a, b, f = (rng.integers(0, 3, (9, 10)).astype(np.float64) for _ in range(3))  # many ties
        value = F.fmi(a, b, f, feature)
        assert 0.0 <= value <= 1.0 + 1e-12 and not math.isnan(value)


def test_fused_equal_to_one_source_scores_at_least_half(rng: np.random.Generator) -> None:
    a = rng.integers(0, 256, (16, 16)).astype(np.float64)
    b = rng.integers(0, 256, (16, 16)).astype(np.float64)
    value = F.fmi(a, b, a)
    assert 0.5 < value < 1.0  # NMI(A, F) = 1 in every window, NMI(B, F) in (0, 1)


def test_constant_window_rules() -> None:
    zeros, fives = np.zeros((3, 3)), np.full((3, 3), 5.0)
    ramp = np.arange(9.0).reshape(3, 3)
    assert F.fmi(zeros, zeros, fives) == 1.0  # both constant, different levels: the reference's 1
    assert F.fmi(zeros, ramp, ramp) == 0.5  # one constant: 0; identical: 1


def test_scale_invariant(rng: np.random.Generator) -> None:
    a, b, f = _triple(7)
    assert F.fmi(a / 255, b / 255, f / 255) == pytest.approx(F.fmi(a, b, f), abs=1e-12)


# ----------------------------------------------------------------------------- features


def test_gradient_feature_is_matlab_gradient_along_rows() -> None:
    x = np.array([[0.0, 1.0, 4.0, 9.0], [2.0, 2.0, 2.0, 2.0]])
    expected = np.array([[1.0, 2.0, 4.0, 5.0], [0.0, 0.0, 0.0, 0.0]])
    np.testing.assert_array_equal(F.feature_image(x, "gradient"), expected)


def test_edge_feature_thins_a_step_to_one_column() -> None:
    # Step between columns 7 and 8: Sobel magnitude 2500 on both columns, automatic cutoff
    # 4 * mean = 1250; MATLAB's thinning keeps the column whose right neighbour is smaller.
    x = np.zeros((8, 16))
    x[:, 8:] = 100.0
    expected = np.zeros((8, 16))
    expected[:, 8] = 1.0
    np.testing.assert_array_equal(F.feature_image(x, "edge"), expected)


def test_dct_and_wavelet_features() -> None:
    from scipy.fft import dctn

    x = np.arange(64.0).reshape(8, 8) ** 1.5
    np.testing.assert_allclose(F.feature_image(x, "dct"), dctn(x, norm="ortho"))
    w = F.feature_image(np.zeros((16, 16)) + np.arange(16.0), "wavelet")
    assert w.min() == 0.0 and w.max() == 1.0 and w.shape[0] == w.shape[1] > 16  # [cA cH; cV cD]


def test_bad_arguments() -> None:
    a = np.zeros((8, 8))
    with pytest.raises(ValueError, match="unknown FMI feature"):
        F.fmi(a, a, a, "sift")
    with pytest.raises(ValueError, match="odd integer"):
        F.fmi(a, a, a, window=4)
    with pytest.raises(ValueError, match="at least 3x3"):
        F.fmi(a[:2], a[:2], a[:2])
    with pytest.raises(ValueError, match="one shape"):
        F.fmi(a, a, a[:7])
    with pytest.raises(ValueError, match="gray"):
        F.fmi(np.zeros((8, 8, 3)), a, a)


def test_named_convenience_functions() -> None:
    a, b, f = _triple(2)
    assert F.fmi_dct(a, b, f) == F.fmi(a, b, f, "dct")
    assert F.fmi_edge(a, b, f, window=5) == F.fmi(a, b, f, "edge", 5)
    assert F.fmi_pixel(a, b, f) != F.fmi_gradient(a, b, f) != F.fmi_wavelet(a, b, f)


# ----------------------------------------------------------------------------- torch


@pytest.mark.parametrize("feature", F.FEATURES)
def test_torch_equals_numpy(feature: str) -> None:
    triples = [_triple(seed, (14, 12)) for seed in (10, 11, 12)]
    a, b, f = (torch.from_numpy(np.stack([t[k] for t in triples])[:, None]) for k in range(3))
    values = F.fmi_torch(a, b, f, feature=feature)
    assert values.dtype == torch.float64 and values.shape == (3,)
    expected = [F.fmi(*t, feature) for t in triples]
    np.testing.assert_allclose(values.numpy(), expected, rtol=0, atol=1e-12)


def test_torch_accepts_uint8_and_checks_shapes() -> None:
    a, b, f = (torch.from_numpy(x.astype(np.uint8))[None, None] for x in _triple(4))
    assert F.fmi_torch(a, b, f).item() == pytest.approx(F.fmi(*_triple(4)), abs=1e-12)
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        F.fmi_torch(a[0], b[0], f[0])
