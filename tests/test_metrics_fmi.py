"""FMI (Fast-FMI of Haghighat & Razian): the golden values of the reference ``fmi.m``, the
vectorised metric against a literal loop port of its window statistics in both modes, its
properties, its features, and the torch version."""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
import torch

from pipeline.metrics import fmi as F
from tests.conftest import MEDICAL_TRIPLES, medical_golden, medical_triple, shared_path

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


def _normalise(v: list[float]) -> list[float]:
    lo, hi = min(v), max(v)
    return [1.0] * len(v) if hi == lo else [(t - lo) / (hi - lo) for t in v]


def _oracle_window(xs: list[float], fs: list[float], seen: list[float] | None = None) -> float:
    """NMI of one window pair; ``seen`` is the F window the identical-window test compares with
    (default the raw ``fs``)."""
    l = len(xs)
    if xs == (fs if seen is None else seen):
        return 1.0

    def distribution(v: list[float]) -> list[float]:
        v = _normalise(v)
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


def _oracle_fmi(a: np.ndarray, b: np.ndarray, f: np.ndarray, feature: str, window: int = 3,
                mode: str = "reference") -> float:
    fa, fb, ff = (F.feature_image(x, feature) for x in (a, b, f))
    r = window // 2
    values = []
    for p in range(r, fa.shape[0] - r):
        for q in range(r, fa.shape[1] - r):
            def win(x: np.ndarray) -> list[float]:
                return list(x[p - r:p + r + 1, q - r:q + r + 1].T.ravel())  # MATLAB's column-major w(:)
            wa, wb, wf = win(fa), win(fb), win(ff)
            # fmi.m's A-F branch leaves its F window normalised unless A's window equals F's.
            seen = wf if mode == "symmetric" or wa == wf else _normalise(wf)
            values.append((_oracle_window(wa, wf) + _oracle_window(wb, wf, seen)) / 2)
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


# Tolerances: the vectorised code and the oracle compute the same sums in other orders (and the
# joint entropy through a closed form), so a window's NMI differs by a few ulps of the ~10 terms
# that make it up; 1e-12 on a mean of such values leaves a factor ~1000 of headroom. Against the
# golden values (Octave's own round-off, and its noise in degenerate windows, ~1e-13 in
# small_cases), 1e-10.


@pytest.mark.parametrize("mode", F.MODES)
@pytest.mark.parametrize("feature", F.FEATURES)
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_literal_reference(feature: str, seed: int, mode: str) -> None:
    a, b, f = _triple(seed)
    expected = _oracle_fmi(a, b, f, feature, mode=mode)
    assert F.fmi(a, b, f, feature, mode=mode) == pytest.approx(expected, abs=1e-12)


def test_window_option_matches_reference() -> None:
    a, b, f = _triple(3, (11, 12))
    value = F.fmi(a, b, f, "pixel", window=5)
    assert value == pytest.approx(_oracle_fmi(a, b, f, "pixel", window=5), abs=1e-12)
    assert value != pytest.approx(F.fmi(a, b, f, "pixel", window=3), abs=1e-3)


@pytest.mark.parametrize("mode", F.MODES)
def test_atlas_values_match_reference(mode: str) -> None:
    """Full atlas slice: values the literal oracle gave (pinned; it takes ~minutes to recompute).
    On this mean-fused slice no window takes a mode-dependent branch, so both modes give them."""
    from pipeline.io import read_image

    a = read_image(shared_path("harvard", "CT-MRI", "CT", "2010.png")).astype(np.float64)
    b = read_image(shared_path("harvard", "CT-MRI", "MRI", "2010.png")).astype(np.float64)
    f = np.round((a + b) / 2.0)
    for feature, expected in ATLAS_REFERENCE.items():
        assert F.fmi(a, b, f, feature, mode=mode) == pytest.approx(expected, abs=1e-12), feature


#: FMI of the atlas triple (CT-MRI 2010, fused = numpy's half-to-even rounded mean) by the literal
#: oracle above (about two minutes of pure-Python loops for the five features).
ATLAS_REFERENCE = {
    "pixel": 0.6960899046271062,
    "gradient": 0.6864756976437044,
    "edge": 0.873178657998019,
    "dct": 0.43025133322973,
    "wavelet": 0.5465856643408332,
}


# ----------------------------------------------------------------------------- golden values of fmi.m
# golden/medical/values.json: fmi.m run unmodified under Octave (see its facts_about_fmi_m).

_FEATURE_OF = {"FMI_pixel": "pixel", "FMI_gradient": "gradient"}  # fmi.m's 'none' and 'gradient'


@pytest.mark.parametrize("name", MEDICAL_TRIPLES)
def test_golden_triples(name: str) -> None:
    a, b, f = medical_triple(name)
    expected = medical_golden()["triples"][name]["values"]
    for metric, feature in _FEATURE_OF.items():
        assert F.fmi(a, b, f, feature) == pytest.approx(expected[metric], abs=1e-10), metric


def _crop(swapped: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    a, b, f = (x[48:80, 0:32] for x in medical_triple("ctmri_20010_max"))  # rows 49:80, cols 1:32
    return (b, a, f) if swapped else (a, b, f)


def _hot(corner: list[float]) -> np.ndarray:
    """3x3 zeros with the bottom row's last ``len(corner)`` entries set (MATLAB text of the cases)."""
    x = np.zeros((3, 3))
    x[2, 3 - len(corner):] = corner
    return x


def _small_case_inputs() -> list[list[tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """The (a, b, f) of each entry of ``small_cases``, in its order, built from its ``case`` and
    ``call`` texts (several calls where the value is a list)."""
    zeros, x = np.zeros((3, 3)), _hot([10.0])
    ones = np.ones((3, 3))
    return [
        [_crop(False)], [_crop(True)], [_crop(False)], [_crop(True)],
        [(zeros, _hot([10.0]), _hot([10.0]))],
        [(zeros, _hot([10.0, 32.0]), _hot([10.0, 32.0]))],
        [(zeros, _hot([1.0]), _hot([0.5]))],
        [(x, x / 10, x), (x / 10, x, x), (x, x, x)],
        [(5 * ones, 7 * ones, 6 * ones), (5 * ones, 6 * ones, 6 * ones), (5 * ones, ones, ones)],
    ]


def test_golden_small_cases() -> None:
    cases = medical_golden()["small_cases"]
    inputs = _small_case_inputs()
    assert len(cases) == len(inputs)
    for case, calls in zip(cases, inputs):
        expected = case["value"] if isinstance(case["value"], list) else [case["value"]]
        assert len(expected) == len(calls) and ("swapped" in case["case"]) == ("fmi(b,a" in case["call"])
        feature = _FEATURE_OF[case["metric"]]
        for (a, b, f), value in zip(calls, expected):
            assert F.fmi(a, b, f, feature) == pytest.approx(value, abs=1e-10), case["case"]


def test_golden_3x3_windows_are_the_slice_windows() -> None:
    """The 3x3 cases' text names the slice windows they were cut from: the transcription holds."""
    a, b, f = medical_triple("ctmri_20010_max")
    for cols, corner in (((112, 115), [10.0]), ((113, 116), [10.0, 32.0])):
        window = np.s_[20:23, cols[0]:cols[1]]
        assert not a[window].any()
        np.testing.assert_array_equal(b[window], _hot(corner))
        np.testing.assert_array_equal(f[window], _hot(corner))


@pytest.mark.parametrize("metric", list(_FEATURE_OF))
def test_swapping_the_sources(metric: str) -> None:
    """fmi.m is asymmetric exactly as the golden swapped crop says; the symmetric mode is not."""
    values = {case["call"]: case["value"] for case in medical_golden()["small_cases"]
              if case["metric"] == metric and "crop" in case["case"]}
    feature = _FEATURE_OF[metric]
    arg = "none" if feature == "pixel" else feature
    straight, swapped = F.fmi(*_crop(False), feature), F.fmi(*_crop(True), feature)
    assert straight == pytest.approx(values[f"fmi(a,b,f,'{arg}',3)"], abs=1e-10)
    assert swapped == pytest.approx(values[f"fmi(b,a,f,'{arg}',3)"], abs=1e-10)
    assert abs(straight - swapped) > 1e-2
    symmetric = [F.fmi(*_crop(s), feature, mode="symmetric") for s in (False, True)]
    assert symmetric[0] == pytest.approx(symmetric[1], abs=1e-15)


def test_swapping_the_sources_of_a_whole_slice() -> None:
    # facts_about_fmi_m quotes these two values to six decimals.
    a, b, f = medical_triple("ctmri_20010_max")
    assert F.fmi(a, b, f) == pytest.approx(0.747675, abs=5e-7)
    assert F.fmi(b, a, f) == pytest.approx(0.757114, abs=5e-7)


# ----------------------------------------------------------------------------- properties


@pytest.mark.parametrize("feature", F.FEATURES)
def test_identical_images_score_one(feature: str, rng: np.random.Generator) -> None:
    a = rng.integers(0, 256, (16, 16)).astype(np.float64)
    assert F.fmi(a, a, a, feature) == 1.0


@pytest.mark.parametrize("feature", F.FEATURES)
def test_symmetric_mode_is_symmetric_in_sources(feature: str) -> None:
    a, b, f = _triple(5)
    value = F.fmi(a, b, f, feature, mode="symmetric")
    assert value == pytest.approx(F.fmi(b, a, f, feature, mode="symmetric"), abs=1e-15)


def test_reference_mode_is_the_default_and_asymmetric() -> None:
    # A one-hot window copied from B into F: fmi.m compares B with the F window that its A-F branch
    # normalised, so B = F scores the point mass's 0 instead of 1; with A and B swapped it is 1.
    x = np.zeros((3, 3))
    x[2, 2] = 10.0
    ramp = np.arange(9.0).reshape(3, 3)
    assert F.fmi(ramp, x, x) == F.fmi(ramp, x, x, mode="reference") == pytest.approx(0.0, abs=1e-12)
    assert F.fmi(x, ramp, x) == 0.5
    assert F.fmi(ramp, x, x, mode="symmetric") == F.fmi(x, ramp, x, mode="symmetric") == 0.5
    signature = inspect.signature
    for fn in (F.fmi, F.fmi_pixel, F.fmi_gradient, F.fmi_edge, F.fmi_dct, F.fmi_wavelet, F.fmi_torch):
        assert signature(fn).parameters["mode"].default == "reference" == F.DEFAULT_MODE, fn.__name__


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


@pytest.mark.parametrize("mode", F.MODES)
def test_constant_window_rules(mode: str) -> None:
    zeros, fives = np.zeros((3, 3)), np.full((3, 3), 5.0)
    ramp = np.arange(9.0).reshape(3, 3)
    assert F.fmi(zeros, zeros, fives, mode=mode) == 1.0  # both constant, different levels: the reference's 1
    # One constant: 0. B = F: 1, by the identical-window rule (symmetric) or, in fmi.m's flow, as
    # the NMI of two equal distributions (B is compared with the normalised ramp, and differs).
    assert F.fmi(zeros, ramp, ramp, mode=mode) == pytest.approx(0.5, abs=1e-12)


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
    with pytest.raises(ValueError, match="unknown FMI mode"):
        F.fmi(a, a, a, mode="published")
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


# ----------------------------------------------------------------------------- window statistics


@pytest.mark.parametrize("length", [1, 2, 3, 5, 8, 24])
def test_merge_equals_a_stable_sort(length: int, rng: np.random.Generator) -> None:
    """The merging network (numpy) and the argsort merge (torch) of two sorted CDF sets, ties
    included: a stable sort of their concatenation, ``first`` before ``second`` on ties."""
    n = 500
    first = np.sort(rng.integers(0, 6, (length, n)) / 5.0, axis=0)  # many ties, values in [0, 1]
    second = np.sort(rng.integers(0, 6, (length, n)) / 5.0, axis=0)
    end = np.ones(n)
    merged = np.concatenate([first, second])
    order = np.argsort(merged, axis=0, kind="stable")
    expected = np.concatenate([np.take_along_axis(merged, order, 0), end[None]])
    expected_origin = np.concatenate([order >= length, np.ones((1, n), dtype=bool)])
    values, origin = F._NumpyOps.merge(first, second, end)
    np.testing.assert_array_equal(values, expected)
    np.testing.assert_array_equal(origin[:-1], expected_origin[:-1])
    values_t, origin_t = F._TorchOps.merge(*(torch.from_numpy(x) for x in (first, second, end)))
    np.testing.assert_array_equal(values_t.numpy(), expected)
    np.testing.assert_array_equal(origin_t.numpy()[:-1], expected_origin[:-1])


# ----------------------------------------------------------------------------- torch


@pytest.mark.parametrize("mode", F.MODES)
@pytest.mark.parametrize("feature", F.FEATURES)
def test_torch_equals_numpy(feature: str, mode: str) -> None:
    triples = [_triple(seed, (14, 12)) for seed in (10, 11, 12)]
    a, b, f = (torch.from_numpy(np.stack([t[k] for t in triples])[:, None]) for k in range(3))
    values = F.fmi_torch(a, b, f, feature=feature, mode=mode)
    assert values.dtype == torch.float64 and values.shape == (3,)
    expected = [F.fmi(*t, feature, mode=mode) for t in triples]
    np.testing.assert_allclose(values.numpy(), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("mode", F.MODES)
def test_torch_equals_numpy_on_a_golden_slice(mode: str) -> None:
    a, b, f = (torch.from_numpy(np.array(x))[None, None] for x in medical_triple("ctmri_20010_max"))
    for feature in _FEATURE_OF.values():
        expected = F.fmi(a[0, 0].numpy(), b[0, 0].numpy(), f[0, 0].numpy(), feature, mode=mode)
        assert F.fmi_torch(a, b, f, feature, mode=mode).item() == pytest.approx(expected, abs=1e-12)


def test_torch_accepts_uint8_and_checks_shapes() -> None:
    a, b, f = (torch.from_numpy(x.astype(np.uint8))[None, None] for x in _triple(4))
    assert F.fmi_torch(a, b, f).item() == pytest.approx(F.fmi(*_triple(4)), abs=1e-12)
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        F.fmi_torch(a[0], b[0], f[0])
