"""Q_CB, Q_CV and VIF against the reference toolboxes' own numbers, plus their invariants."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.io import read_image
from pipeline.metrics.perceptual import q_cb, q_cv, vif
from tests.conftest import MEDICAL_TRIPLES, assert_medical_golden, shared_path

MFIF_PAIRS = [f"g_0{n}" for n in range(1, 6)]
MFIF_METHODS = ["dwt", "nsct", "gff", "sr", "cnn"]
VIFB_CASES = [(name, method) for name in ("fight", "kettle", "manlight") for method in ("GFF", "CNN")]


@pytest.mark.parametrize("method", MFIF_METHODS)
@pytest.mark.parametrize("pair", MFIF_PAIRS)
def test_mfif_golden(pair: str, method: str) -> None:
    folder = shared_path("golden", "mfif")
    expected = json.loads((folder / "values.json").read_text())["values"][pair][method]
    a, b, f = (read_image(folder / f"{pair}_{suffix}.tif") for suffix in ("1", "2", method))
    assert q_cb(a, b, f) == pytest.approx(expected["Q_CB"], abs=1e-4)
    assert q_cv(a, b, f) == pytest.approx(expected["Q_CV"], rel=1e-3)


@pytest.mark.parametrize("name,method", VIFB_CASES)
def test_vifb_golden(name: str, method: str) -> None:
    # VIFB's metricsQcb / metricsQcv are the toolbox code run on each RGB channel and averaged;
    # its images are 332x452 and 460x630, so Q_CV's zero-padded partial 16x16 blocks are covered.
    folder = shared_path("golden", "vifb")
    expected = json.loads((folder / "values.json").read_text())["values"][name][method]
    vi, ir, fused = (read_image(folder / f"{name}_{s}.jpg", mode="rgb") for s in ("VI", "IR", method))
    for metric, key in ((q_cb, "Qcb"), (q_cv, "Qcv")):
        value = np.mean([metric(vi[..., c], ir[..., c], fused[..., c]) for c in range(3)])
        assert value == pytest.approx(expected[key], rel=1e-3), key


def _smooth_image(rng: np.random.Generator, size: int = 64, phase: float = 0.0) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = 120 + 80 * np.sin(6 * xx + phase) * np.cos(4 * yy)
    return np.clip(base + rng.normal(0, 10, (size, size)), 0, 255).round().astype(np.uint8)


def test_identical_images_reach_the_extremes(rng: np.random.Generator) -> None:
    a = _smooth_image(rng)
    assert q_cb(a, a, a) == pytest.approx(1.0, abs=1e-12)
    assert q_cv(a, a, a) == pytest.approx(0.0, abs=1e-12)
    big = _smooth_image(rng, size=96)
    assert vif(big, big, big) == pytest.approx(2.0, abs=1e-6)
    assert vif(big, big, big, variant="han") == pytest.approx(1.0, abs=1e-6)


def test_symmetry_and_ranges(rng: np.random.Generator) -> None:
    a, b = _smooth_image(rng, 96), _smooth_image(rng, 96, phase=1.0)
    f = (a.astype(float) + b) / 2
    for metric in (q_cb, q_cv, vif):
        assert metric(a, b, f) == pytest.approx(metric(b, a, f), rel=1e-12), metric.__name__
    assert 0.0 < q_cb(a, b, f) < 1.0
    assert q_cv(a, b, f) > 0.0
    assert 0.0 < vif(a, b, f) < 2.0
    # A fused image closer to the sources scores better on every metric.
    worse = np.clip(f + rng.normal(0, 25, f.shape), 0, 255)
    assert q_cb(a, b, worse) < q_cb(a, b, f)
    assert q_cv(a, b, worse) > q_cv(a, b, f)
    assert vif(a, b, worse) < vif(a, b, f)


def test_q_cv_partial_blocks_are_zero_padded(rng: np.random.Generator) -> None:
    # 40x40 holds 2x2 full 16x16 blocks plus partial ones; value must stay finite and symmetric.
    a, b = _smooth_image(rng, 40), _smooth_image(rng, 40, phase=2.0)
    f = (a.astype(float) + b) / 2
    assert np.isfinite(q_cv(a, b, f))
    assert q_cv(a, b, f) == pytest.approx(q_cv(b, a, f), rel=1e-12)


def test_flat_images_give_numbers_or_raise_in_strict_mode(rng: np.random.Generator) -> None:
    flat = np.zeros((64, 64))
    image = _smooth_image(rng)
    # No saliency anywhere: regions weighted equally, so A = B gives the plain mean distortion.
    assert np.isfinite(q_cv(flat, flat, image)) and q_cv(flat, flat, image) > 0.0
    assert q_cv(flat, flat, flat) == 0.0
    with pytest.raises(ValueError, match="flat"):
        q_cv(flat, flat, image, strict=True)
    value = q_cb(flat, image, image)
    assert np.isfinite(value) and 0.0 <= value <= 1.0
    with pytest.raises(ValueError, match="Q_CB is undefined"):
        q_cb(flat, flat, flat, strict=True)
    assert q_cb(flat, flat, flat) == 1.0
    big_flat, big = np.zeros((96, 96)), _smooth_image(rng, 96)
    assert vif(big_flat, big, big) == pytest.approx(2.0, abs=1e-6)  # the constant source counts 1
    with pytest.raises(ValueError, match="constant"):
        vif(big_flat, big, big, strict=True)


def test_vif_size_and_variant_checks(rng: np.random.Generator) -> None:
    a = _smooth_image(rng, 64)
    assert np.isfinite(vif(a, a, a))  # 64x64: the scales that fit, as MATLAB does
    with pytest.raises(ValueError, match="81x81"):
        vif(a, a, a, variant="han")
    with pytest.raises(ValueError, match="unknown VIF variant"):
        vif(a, a, a, variant="vifp")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="33x33"):
        vif(a[:20, :20], a[:20, :20], a[:20, :20])


@pytest.mark.parametrize("name", MEDICAL_TRIPLES)
def test_medical_golden(name: str) -> None:
    """golden/medical: the Liu toolbox copy (MFIF) on CT-MRI triples, within 1e-4."""
    assert_medical_golden(name, {"Q_CB": q_cb, "Q_CV": q_cv})
