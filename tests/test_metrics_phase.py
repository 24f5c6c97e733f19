"""Q_P and the phase congruency behind it, against the TPAMI toolbox's numbers and invariants."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.io import read_image
from pipeline.metrics.phase import PhaseCongruencyParams, phase_congruency, q_p
from tests.conftest import MEDICAL_TRIPLES, assert_medical_golden, shared_path

MFIF_PAIRS = [f"g_0{n}" for n in range(1, 6)]
MFIF_METHODS = ["dwt", "nsct", "gff", "sr", "cnn"]


@pytest.mark.parametrize("pair", MFIF_PAIRS)
def test_mfif_golden(pair: str) -> None:
    folder = shared_path("golden", "mfif")
    expected = json.loads((folder / "values.json").read_text())["values"][pair]
    a, b = read_image(folder / f"{pair}_1.tif"), read_image(folder / f"{pair}_2.tif")
    for method in MFIF_METHODS:
        f = read_image(folder / f"{pair}_{method}.tif")
        assert q_p(a, b, f) == pytest.approx(expected[method]["Q_P"], abs=1e-4), method


def test_precisions_double_reproduces_the_toolbox_single_is_close() -> None:
    folder = shared_path("golden", "mfif")
    expected = json.loads((folder / "values.json").read_text())["values"]["g_05"]["gff"]["Q_P"]
    a, b = read_image(folder / "g_05_1.tif"), read_image(folder / "g_05_2.tif")
    f = read_image(folder / "g_05_gff.tif")
    double = q_p(a, b, f, precision="double")
    assert double == pytest.approx(expected, abs=1e-10)
    assert q_p(a, b, f) == pytest.approx(double, abs=1e-5)  # the default, single
    with pytest.raises(ValueError, match="precision"):
        q_p(a, b, f, precision="half")  # type: ignore[arg-type]


def _smooth_image(rng: np.random.Generator, size: int = 64, phase: float = 0.0) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = 120 + 80 * np.sin(6 * xx + phase) * np.cos(4 * yy)
    return np.clip(base + rng.normal(0, 10, (size, size)), 0, 255).round().astype(np.uint8)


def test_phase_congruency_marks_a_step_edge() -> None:
    step = np.zeros((64, 64))
    step[:, 32:] = 200.0
    pc, big_m, small_m = phase_congruency(step)
    assert pc.shape == big_m.shape == small_m.shape == (64, 64)
    assert ((pc >= 0) & (pc <= 1)).all()
    assert pc[:, 31:33].mean() > 0.5  # on the edge
    assert pc[:, 10:20].max() < 0.1  # flat and away from the edge (and its periodic twin)
    assert (big_m >= small_m).all()
    # Contrast invariance: scaling the image leaves PC unchanged (up to the 1e-4 epsilons).
    np.testing.assert_allclose(phase_congruency(step * 0.25)[0], pc, atol=1e-4)
    # A stack is processed like its slices.
    np.testing.assert_allclose(phase_congruency(np.stack([step, step.T]))[0][1], phase_congruency(step.T)[0])


def test_constant_image_has_zero_phase_congruency() -> None:
    pc, big_m, small_m = phase_congruency(np.full((32, 48), 9.0))
    assert np.isfinite(pc).all() and (pc == 0).all()
    assert np.isfinite(big_m).all() and np.isfinite(small_m).all()


def test_symmetry_bounds_and_ordering(rng: np.random.Generator) -> None:
    a, b = _smooth_image(rng), _smooth_image(rng, phase=1.5)
    f = (a.astype(float) + b) / 2
    value = q_p(a, b, f)
    assert value == pytest.approx(q_p(b, a, f), rel=1e-12)
    assert 0.0 < value <= 1.0 + 1e-9
    noisy = np.clip(f + rng.normal(0, 30, f.shape), 0, 255)
    assert q_p(a, b, noisy) < value
    # F equal to both sources scores best, yet below 1: the reference masks the sources' maps
    # to their feature pixels but not the fused map, so the local correlations are not 1.
    identical = q_p(a, a, a)
    assert value < identical < 1.0


def test_featureless_sources_give_zero_or_raise_in_strict_mode(rng: np.random.Generator) -> None:
    flat = np.full((64, 64), 50.0)
    assert q_p(flat, flat, _smooth_image(rng)) == 0.0
    with pytest.raises(ValueError, match="phase-congruency feature"):
        q_p(flat, flat, flat, strict=True)


def test_parameters_are_the_toolbox_defaults() -> None:
    p = PhaseCongruencyParams()
    assert (p.nscale, p.norient, p.min_wavelength, p.mult, p.sigma_on_f) == (4, 6, 3.0, 2.1, 0.55)
    assert (p.d_theta_on_sigma, p.k, p.cut_off, p.g) == (1.2, 2.0, 0.5, 10.0)


@pytest.mark.parametrize("name", MEDICAL_TRIPLES)
def test_medical_golden(name: str) -> None:
    """golden/medical: the Liu toolbox copy (MFIF) on CT-MRI triples, within 1e-4."""
    assert_medical_golden(name, {"Q_P": q_p})
