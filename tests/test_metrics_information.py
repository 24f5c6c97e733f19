"""Q_MI, Q_NCIE, MI and CE against the reference toolboxes' own numbers, plus their invariants."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.io import read_image
from pipeline.metrics.information import (
    cross_entropy,
    matlab_round,
    mutual_information,
    q_mi,
    q_ncie,
    stretch_to_gray_levels,
)
from tests.conftest import MEDICAL_TRIPLES, assert_medical_golden, shared_path

MFIF_PAIRS = [f"g_0{n}" for n in range(1, 6)]
MFIF_METHODS = ["dwt", "nsct", "gff", "sr", "cnn"]
VIFB_CASES = [(name, method) for name in ("fight", "kettle", "manlight") for method in ("GFF", "CNN")]


def _mfif_triple(pair: str, method: str):
    folder = shared_path("golden", "mfif")
    expected = json.loads((folder / "values.json").read_text())["values"][pair][method]
    images = [read_image(folder / f"{pair}_{suffix}.tif") for suffix in ("1", "2", method)]
    return images, expected


def _vifb_per_channel(metric, name: str, method: str) -> tuple[float, float]:
    """VIFB's colour rule: metric(VI, IR, F) on each RGB channel, averaged (IR gray: repeated)."""
    folder = shared_path("golden", "vifb")
    expected = json.loads((folder / "values.json").read_text())["values"][name][method]
    vi, ir, fused = (read_image(folder / f"{name}_{s}.jpg", mode="rgb") for s in ("VI", "IR", method))
    value = float(np.mean([metric(vi[..., c], ir[..., c], fused[..., c]) for c in range(3)]))
    return value, expected


@pytest.mark.parametrize("method", MFIF_METHODS)
@pytest.mark.parametrize("pair", MFIF_PAIRS)
def test_mfif_golden(pair: str, method: str) -> None:
    (a, b, f), expected = _mfif_triple(pair, method)
    assert q_mi(a, b, f) == pytest.approx(expected["Q_MI"], abs=1e-4)
    assert q_ncie(a, b, f) == pytest.approx(expected["Q_NCIE"], abs=1e-4)


@pytest.mark.parametrize("name,method", VIFB_CASES)
def test_vifb_golden(name: str, method: str) -> None:
    value, expected = _vifb_per_channel(mutual_information, name, method)
    assert value == pytest.approx(expected["Mutinf"], rel=1e-3)
    value, expected = _vifb_per_channel(cross_entropy, name, method)
    assert value == pytest.approx(expected["Cross_entropy"], rel=1e-3)


def _smooth_image(rng: np.random.Generator, size: int = 64) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = 120 + 80 * np.sin(6 * xx) * np.cos(4 * yy)
    return np.clip(base + rng.normal(0, 10, (size, size)), 0, 255).round().astype(np.uint8)


def test_identical_images_reach_the_extremes(rng: np.random.Generator) -> None:
    a = _smooth_image(rng)
    assert q_mi(a, a, a) == pytest.approx(2.0, abs=1e-12)
    assert cross_entropy(a, a, a) == 0.0
    # MI(A, A) = H(A) in nats after VIFB's stretch, twice.
    levels = stretch_to_gray_levels(a.astype(float)).astype(int)
    p = np.bincount(levels.ravel(), minlength=256) / levels.size
    entropy = -(p[p > 0] * np.log(p[p > 0])).sum()
    assert mutual_information(a, a, a) == pytest.approx(2 * entropy, rel=1e-12)


def test_ncie_is_one_for_identical_images_with_a_flat_histogram(rng: np.random.Generator) -> None:
    # Each of the 256 levels 16 times: the nonlinear correlations are all 1, R is singular,
    # and the 0 log 0 = 0 rule gives the limit 1 where the MATLAB code gives NaN.
    a = rng.permutation(np.repeat(np.arange(256, dtype=np.uint8), 16)).reshape(64, 64)
    assert q_ncie(a, a, a) == pytest.approx(1.0, abs=1e-12)


def test_ranges_and_symmetry(rng: np.random.Generator) -> None:
    a, b = _smooth_image(rng), _smooth_image(rng)[::-1]
    f = ((a.astype(float) + b) / 2).round()
    for metric in (q_mi, q_ncie, mutual_information, cross_entropy):
        assert metric(a, b, f) == pytest.approx(metric(b, a, f), rel=1e-12), metric.__name__
    assert 0.0 < q_mi(a, b, f) < 2.0
    assert 0.0 < q_ncie(a, b, f) < 1.0
    assert cross_entropy(a, b, f) > 0.0
    # uint8 and float inputs are the same numbers.
    assert q_mi(a, b, f) == q_mi(a.astype(float), b.astype(np.float32), f)


def test_constant_images_give_numbers_or_raise_in_strict_mode() -> None:
    flat = np.full((32, 32), 7, dtype=np.uint8)
    assert q_mi(flat, flat, flat) == 0.0
    with pytest.raises(ValueError, match="constant"):
        q_mi(flat, flat, flat, strict=True)
    for metric in (q_ncie, mutual_information, cross_entropy):
        assert np.isfinite(metric(flat, flat, flat)), metric.__name__


def test_matlab_round_rounds_half_away_from_zero() -> None:
    x = np.array([0.5, 1.5, 2.5, -0.5, -2.5, 0.49999999999999994, 254.5])
    np.testing.assert_array_equal(matlab_round(x), [1, 2, 3, -1, -3, 0, 255])


def test_bad_inputs_are_refused_with_a_clear_message() -> None:
    a = np.zeros((8, 8))
    with pytest.raises(ValueError, match="one shape"):
        q_mi(a, a, np.zeros((8, 9)))
    with pytest.raises(ValueError, match="2D grayscale"):
        q_ncie(np.zeros((8, 8, 3)), a, a)
    with pytest.raises(ValueError, match="NaN or Inf"):
        mutual_information(a, a, np.full((8, 8), np.nan))
    with pytest.raises(ValueError, match="0..255"):
        cross_entropy(a, a, np.full((8, 8), 300.0))


@pytest.mark.parametrize("name", MEDICAL_TRIPLES)
def test_medical_golden(name: str) -> None:
    """golden/medical: the Liu toolbox copy (MFIF) on CT-MRI triples, within 1e-4."""
    assert_medical_golden(name, {"Q_MI": q_mi, "Q_NCIE": q_ncie})
