"""Conventions: CDDFuse's and VIFB's tables reproduced under their names, and the registry's rules."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from pipeline.io import read_image, write_png
from pipeline.metrics import METRIC_NAMES, compute_metrics, get_spec
from pipeline.metrics.conventions import (
    CONVENTION_NAMES,
    CONVENTIONS,
    UnknownConventionError,
    get_convention,
    opencv_gray,
)
from tests.conftest import SHARED_DATA, shared_path

CDDFUSE_COLUMNS = ("EN", "SD", "SF", "MI", "SCD", "VIF", "Qabf", "SSIM")
VIFB_COLUMNS = ("Avg_gradient", "Cross_entropy", "Edge_intensity", "Entropy", "Mutinf", "Psnr", "Qabf", "Qcb",
                "Qcv", "Rmse", "Spatial_frequency", "Ssim", "Variance")
VIFB_CASES = [(name, method) for name in ("fight", "kettle", "manlight") for method in ("GFF", "CNN")]
#: The brief's bound for every CDDFuse column.
CDDFUSE_TOLERANCE = 1e-4


def _cddfuse_keys() -> list[str]:
    """The golden entries, read at collection time; one placeholder (which skips) without the data."""
    path = SHARED_DATA / "golden" / "cddfuse_evaluator.json"
    return list(json.loads(path.read_text())["pairs"]) if path.is_file() else ["no shared data"]


def _protocol_fused(a: np.ndarray, b: np.ndarray, kind: str) -> np.ndarray:
    """The golden file's fused images: 'max' = elementwise max, 'wa' = floor((A + B) / 2 + 0.5)."""
    fused = np.maximum(a, b) if kind == "max" else np.floor((a + b) / 2.0 + 0.5)
    return fused.astype(np.uint8)


# ----------------------------------------------------------------------------- CDDFuse golden values


@pytest.mark.shared_data
@pytest.mark.parametrize("key", _cddfuse_keys())
def test_cddfuse_golden(key: str, tmp_path: Path) -> None:
    entry = json.loads(shared_path("golden", "cddfuse_evaluator.json").read_text())["pairs"][key]
    conv = get_convention("cddfuse")
    a = conv.read(shared_path("harvard", entry["a"]))
    b = conv.read(shared_path("harvard", entry["b"]))
    # Written as 8-bit PNG and read back like any fused image, as the protocol says.
    write_png(tmp_path / "fused.png", _protocol_fused(a, b, entry["fused"]))
    f = conv.read(tmp_path / "fused.png")
    values = compute_metrics(a, b, f, convention="cddfuse")
    assert tuple(values) == CDDFUSE_COLUMNS == tuple(entry["values"])
    off = {k: values[k] - v for k, v in entry["values"].items() if abs(values[k] - v) > CDDFUSE_TOLERANCE}
    assert not off, f"{key}: columns off by more than {CDDFUSE_TOLERANCE}: {off}"


@pytest.mark.shared_data
def test_cddfuse_reads_colour_sources_as_opencv_gray() -> None:
    pet = read_image(shared_path("harvard", "PET-MRI", "PET", "25015.png"))
    assert pet.ndim == 3
    gray = get_convention("cddfuse").read(shared_path("harvard", "PET-MRI", "PET", "25015.png"))
    np.testing.assert_array_equal(gray, opencv_gray(pet))
    assert gray.shape == pet.shape[:2] and gray.dtype == np.float64


# ----------------------------------------------------------------------------- VIFB golden values


def _half_unit_of_fifth_digit(value: float) -> float:
    """values.json prints 5 significant digits: half a unit of the last one is its rounding bound."""
    return 0.5 * 10.0 ** (math.floor(math.log10(abs(value))) - 4)


@pytest.mark.shared_data
@pytest.mark.parametrize("name,method", VIFB_CASES)
def test_vifb_golden(name: str, method: str) -> None:
    # The per-metric tests (test_metrics_statistics/information/perceptual/gradient/structural)
    # check each function to 1e-3 relative; this checks the whole table through the convention
    # (names, order, reading, per-channel colour) at the printed precision.
    folder = shared_path("golden", "vifb")
    expected = json.loads((folder / "values.json").read_text())["values"][name][method]
    conv = get_convention("vifb")
    vi, ir, fused = (conv.read(folder / f"{name}_{s}.jpg") for s in ("VI", "IR", method))
    values = compute_metrics(vi, ir, fused, convention="vifb")
    assert tuple(values) == VIFB_COLUMNS and set(expected) == set(VIFB_COLUMNS)
    off = {k: (values[k], v) for k, v in expected.items()
           if abs(values[k] - v) > _half_unit_of_fifth_digit(v)}
    assert not off, f"{name}/{method}: not equal to the printed 5 significant digits: {off}"


# ----------------------------------------------------------------------------- OpenCV's gray


def test_opencv_gray_known_values() -> None:
    # Outputs of OpenCV 5.0's cvtColor(BGR2GRAY) on float32 (vector path), then np.round:
    # pure colours, a plain pixel, and exact .5 ties whose rounding depends on float32 steps.
    rgb = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (17, 200, 91), (0, 84, 28), (0, 194, 23), (1, 63, 230),
           (0, 0, 250), (0, 12, 4)]
    expected = [76, 150, 29, 133, 52, 116, 64, 28, 8]
    gray = opencv_gray(np.array([rgb], dtype=np.uint8))
    assert gray.tolist() == [[float(v) for v in expected]]


def test_opencv_gray_is_the_rounded_luma_except_at_ties(rng: np.random.Generator) -> None:
    rgb = rng.integers(0, 256, (64, 64, 3))
    exact = (299 * rgb[..., 0] + 587 * rgb[..., 1] + 114 * rgb[..., 2]) / 1000.0
    gray = opencv_gray(rgb.astype(np.uint8))
    assert np.all(np.abs(gray - exact) <= 0.5)
    not_tie = np.abs(exact - np.floor(exact) - 0.5) > 1e-6
    np.testing.assert_array_equal(gray[not_tie], np.floor(exact[not_tie] + 0.5))
    levels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    np.testing.assert_array_equal(opencv_gray(levels), levels)  # gray, read as three equal channels
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        opencv_gray(np.zeros((4, 4, 4)))


# ----------------------------------------------------------------------------- the registry


def test_registry_records() -> None:
    assert CONVENTION_NAMES == ("project", "cddfuse", "vifb")
    assert get_convention("cddfuse").names == CDDFUSE_COLUMNS
    assert get_convention("vifb").names == VIFB_COLUMNS
    assert get_convention("project").names == METRIC_NAMES
    for conv in CONVENTIONS.values():
        for column in conv.columns:
            spec = get_spec(column.metric)  # every column is computed by a registered metric
            assert conv.higher_is_better(column.name) is spec.higher_is_better  # and has its direction
        assert len({c.metric for c in conv.columns}) == len(conv.columns)
    assert get_convention("vifb").metric_of("Qcv") == "Q_CV"


def test_project_default_is_unchanged(texture: tuple) -> None:
    a, b, f = texture
    default = compute_metrics(a, b, f)
    assert list(default) == list(METRIC_NAMES)
    assert compute_metrics(a, b, f, convention="project") == default
    assert compute_metrics(a, b, f, colour="y") == default


def test_convention_maps_columns_to_metric_options(texture: tuple) -> None:
    a, b, f = texture
    values = compute_metrics(a, b, f, convention="cddfuse")
    project = compute_metrics(a, b, f, ["EN", "SD", "MI", "SCD", "VIF", "Q_ABF"])
    assert [values[k] for k in ("EN", "SD", "MI", "SCD", "VIF", "Qabf")] == list(project.values())
    sf = compute_metrics(a, b, f, ["SF"], options={"SF": {"average": "differences"}})["SF"]
    ssim = compute_metrics(a, b, f, ["SSIM"], options={"SSIM": {"variant": "skimage", "data_range": 2.0}})
    assert values["SF"] == sf and values["SSIM"] == ssim["SSIM"]
    assert compute_metrics(a, b, f, ["Qabf", "EN"], convention="cddfuse") == {"Qabf": values["Qabf"],
                                                                              "EN": values["EN"]}
    # options are keyed by the convention's column names
    wide = compute_metrics(a, b, f, ["SSIM"], convention="cddfuse", options={"SSIM": {"data_range": 255.0}})
    skimage_255 = compute_metrics(a, b, f, ["SSIM"], options={"SSIM": {"variant": "skimage"}})
    assert wide == skimage_255


def test_vifb_convention_averages_colour_channels(rng: np.random.Generator) -> None:
    vi = rng.integers(0, 256, (40, 40, 3)).astype(np.uint8)
    ir = rng.integers(0, 256, (40, 40)).astype(np.uint8)
    fused = ((vi.astype(float) + ir[..., None]) / 2).round().astype(np.uint8)
    values = compute_metrics(vi, ir, fused, ["Qabf", "Spatial_frequency"], convention="vifb")
    expected = compute_metrics(vi, ir, fused, ["Q_ABF", "SF"], colour="per-channel")
    assert values == {"Qabf": expected["Q_ABF"], "Spatial_frequency": expected["SF"]}


def test_errors(texture: tuple) -> None:
    a, b, f = texture
    with pytest.raises(UnknownConventionError, match="valid conventions: project, cddfuse, vifb"):
        compute_metrics(a, b, f, convention="matlab")
    with pytest.raises(ValueError, match="did you mean cddfuse"):
        get_convention("cdfuse")
    with pytest.raises(ValueError, match="Valid names: EN, SD, SF, MI, SCD, VIF, Qabf, SSIM"):
        compute_metrics(a, b, f, ["Q_ABF"], convention="cddfuse")
    with pytest.raises(ValueError, match="per-channel"):
        compute_metrics(a, b, f, ["Qabf"], convention="vifb", colour="y")
    with pytest.raises(ValueError, match="columns not requested: SSIM"):
        compute_metrics(a, b, f, ["EN"], convention="cddfuse", options={"SSIM": {}})


def test_cddfuse_mi_is_sklearns_on_gray_levels(texture: tuple) -> None:
    """CDDFuse's MI is sklearn's mutual_info_score on the raw levels; the project's MI stretches
    each image to 0..255 first, which is one-to-one on 8-bit levels, so the two agree."""
    skm = pytest.importorskip("sklearn.metrics")
    a, b, f = texture
    a = a // 3  # a narrow range of levels, which the stretch spreads out
    expected = skm.mutual_info_score(f.ravel(), a.ravel()) + skm.mutual_info_score(f.ravel(), b.ravel())
    assert compute_metrics(a, b, f, ["MI"], convention="cddfuse")["MI"] == pytest.approx(expected, abs=1e-12)
