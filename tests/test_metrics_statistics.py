"""VIFB statistics (EN, SD, SF, AG, EI, PSNR, RMSE) against VIFB's own values, SCD, and known cases."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from pipeline.io import read_image
from pipeline.metrics import statistics as S
from tests.conftest import shared_path

# VIFB's metric names in golden/vifb/values.json -> how we compute them (fused-only or with sources).
GOLDEN = {
    "Entropy": lambda vi, ir, f: S.entropy(f),
    "Variance": lambda vi, ir, f: S.standard_deviation(f),
    "Spatial_frequency": lambda vi, ir, f: S.spatial_frequency(f),
    "Avg_gradient": lambda vi, ir, f: S.average_gradient(f),
    "Edge_intensity": lambda vi, ir, f: S.edge_intensity(f),
    "Psnr": lambda vi, ir, f: S.psnr(vi, ir, f),
    "Rmse": lambda vi, ir, f: S.rmse(vi, ir, f),
}


def _golden_cases() -> list[tuple[str, str]]:
    return [(image, method) for image in ("fight", "kettle", "manlight") for method in ("GFF", "CNN")]


@pytest.mark.parametrize("image,method", _golden_cases())
def test_vifb_golden_values(image: str, method: str) -> None:
    folder = shared_path("golden", "vifb")
    expected = json.loads((folder / "values.json").read_text())["values"][image][method]
    # VIFB reads its JPEGs as stored (RGB, the IR image replicated) and averages over channels.
    vi = read_image(folder / f"{image}_VI.jpg", mode="rgb")
    ir = read_image(folder / f"{image}_IR.jpg", mode="rgb")
    fused = read_image(folder / f"{image}_{method}.jpg", mode="rgb")
    for name, compute in GOLDEN.items():
        assert compute(vi, ir, fused) == pytest.approx(expected[name], rel=1e-3), name


def test_spatial_frequency_colour_follows_vifb_layout(rng: np.random.Generator) -> None:
    rgb = rng.integers(0, 256, (20, 30, 3)).astype(np.float64)
    side_by_side = np.concatenate([rgb[..., 0], rgb[..., 1], rgb[..., 2]], axis=1)
    assert S.spatial_frequency(rgb) == pytest.approx(S.spatial_frequency(side_by_side), rel=1e-12)
    channel_mean = np.mean([S.spatial_frequency(rgb[..., k]) for k in range(3)])
    assert S.spatial_frequency(rgb) != pytest.approx(channel_mean, rel=1e-3)


def test_other_statistics_average_colour_channels(rng: np.random.Generator) -> None:
    rgb = rng.integers(0, 256, (16, 16, 3)).astype(np.float64)
    for fn in (S.entropy, S.standard_deviation, S.average_gradient, S.edge_intensity):
        assert fn(rgb) == pytest.approx(np.mean([fn(rgb[..., k]) for k in range(3)]), rel=1e-12)


def test_known_values() -> None:
    half = np.zeros((4, 8))
    half[:, 4:] = 255.0
    assert S.entropy(half) == pytest.approx(1.0)
    assert S.entropy(np.full((5, 5), 17.9)) == 0.0  # floor: one bin
    assert S.standard_deviation(half) == pytest.approx(127.5)
    flat = np.full((6, 7), 40.0)
    for fn in (S.spatial_frequency, S.edge_intensity, S.average_gradient):
        assert fn(flat) == 0.0
    ramp = np.tile(np.arange(8.0), (5, 1))  # d/dx = 1 everywhere, d/dy = 0
    assert S.average_gradient(ramp) == pytest.approx(40 * math.sqrt(0.5) / (4 * 7))
    assert S.spatial_frequency(ramp) == pytest.approx(math.sqrt(5 * 7 / 40))
    # CDDFuse's form: the mean squared difference along each axis (here 1 and 0).
    assert S.spatial_frequency(ramp, average="differences") == pytest.approx(1.0)
    assert S.spatial_frequency(np.arange(6.0)[None], average="differences") == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unknown average"):
        S.spatial_frequency(ramp, average="mean")
    # Sobel (not /8) on a unit ramp: |gx| = 8 inside, 4 at the replicated left/right borders.
    assert S.edge_intensity(ramp) == pytest.approx((6 * 8 + 2 * 4) / 8)


def test_scd(rng: np.random.Generator) -> None:
    a = rng.normal(100, 20, (16, 16))
    b = rng.normal(100, 20, (16, 16))
    assert S.scd(a, b, a + b) == pytest.approx(2.0)  # F - B = A and F - A = B
    assert S.scd(a, b, a + b) == pytest.approx(S.scd(b, a, a + b))
    flat = np.full((16, 16), 3.0)
    assert S.scd(flat, flat, flat) == 0.0  # zero-variance correlations count as 0, not NaN


def test_error_metrics_definitions() -> None:
    a = np.zeros((10, 10))
    b = np.zeros((10, 10))
    f = np.full((10, 10), 10.0)
    assert S.rmse(a, b, f, definition="standard") == pytest.approx(10.0)
    assert S.rmse(a, b, f) == pytest.approx(10.0 / 10.0)  # VIFB: sqrt(sum sq) / pixel count = 100/100
    assert S.psnr(a, b, f, definition="standard") == pytest.approx(10 * math.log10(255.0**2 / 100.0))
    assert S.psnr(a, b, f) == pytest.approx(20 * math.log10(255.0 / 1.0))
    assert S.rmse(f, f, f) == 0.0 and S.psnr(f, f, f) == math.inf
    with pytest.raises(ValueError, match="unknown definition"):
        S.rmse(a, b, f, definition="textbook")


def test_bad_input() -> None:
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        S.entropy(np.zeros((4, 4, 2)))
    with pytest.raises(ValueError, match="grid"):
        S.psnr(np.zeros((4, 4)), np.zeros((4, 4)), np.zeros((4, 5)))
    with pytest.raises(ValueError, match="2 x 2"):
        S.average_gradient(np.zeros((1, 5)))
