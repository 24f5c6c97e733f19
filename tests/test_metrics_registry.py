"""The metric registry: names, lazy loading, unknown names, colour modes, NaN policy.

Uses only metrics implemented in fmi.py and statistics.py (the other families are tested in their
own files), plus a deliberately broken metric registered for the NaN tests.
"""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest

import pipeline.metrics as M
from pipeline.colour import rgb_to_ycbcr
from pipeline.metrics import fmi as F
from pipeline.metrics import statistics as S

#: The documented vocabulary (DESIGN, CSV columns, MLflow keys): a contract, so spelled out here.
VOCABULARY = ("Q_MI Q_NCIE Q_G Q_P Q_E Q_Y Q_CB Q_CV Q_ABF FMI_pixel FMI_gradient FMI_edge FMI_dct "
              "FMI_wavelet MI EN SD SF AG EI SCD VIF SSIM PSNR RMSE CE").split()


def nan_metric(a: np.ndarray, b: np.ndarray, f: np.ndarray) -> float:
    """A metric that cannot score anything (for the NaN-policy tests)."""
    return float("nan")


@pytest.fixture
def gray(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    a = rng.integers(0, 256, (24, 24)).astype(np.uint8)
    b = rng.integers(0, 256, (24, 24)).astype(np.uint8)
    return a, b, ((a.astype(np.float64) + b) / 2).round().astype(np.uint8)


def test_vocabulary_is_registered_in_order() -> None:
    # Every documented name is registered, in the documented order; a new metric may join them.
    assert [name for name in M.METRIC_NAMES if name in VOCABULARY] == VOCABULARY
    assert M.DEFAULT_METRICS == list(M.METRIC_NAMES)
    for name, spec in M.METRICS.items():
        assert spec.name == name
        for target in filter(None, (spec.target, spec.torch)):
            module, _, func = target.partition(":")
            assert module.startswith("pipeline.metrics.") and func
        assert spec.summary and spec.reference and isinstance(spec.higher_is_better, bool)
        assert spec.direction == ("higher" if spec.higher_is_better else "lower")
        assert not spec.torch_options or spec.torch, f"{name}: torch options without a torch version"


def test_own_targets_resolve() -> None:
    own = ("pipeline.metrics.fmi:", "pipeline.metrics.statistics:")
    names = [name for name, spec in M.METRICS.items() if spec.target.startswith(own)]
    assert names
    for name in names:
        assert callable(M.get_spec(name).load())


def test_import_is_lazy() -> None:
    # Only the registry is imported: no family module and no torch until a metric is computed.
    code = ("import sys, pipeline.metrics as m; m.get_metric('Q_Y'); "
            "print(sorted(k for k in sys.modules if k.startswith('pipeline.metrics.')), "
            "'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['pipeline.metrics.registry'] False"


def test_public_names_stay_in_the_package() -> None:
    from pipeline.metrics import registry

    for name in M.__all__:
        assert getattr(M, name) is getattr(registry, name, getattr(M, name))
    assert M.METRICS is registry.METRICS  # one registry: patching the package's patches the computation


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(M.UnknownMetricError) as info:
        M.get_metric("FMI_pixl")
    message = str(info.value)
    assert "Did you mean FMI_pixel?" in message and all(name in message for name in M.METRIC_NAMES)
    assert isinstance(info.value, ValueError)
    with pytest.raises(M.UnknownMetricError):  # checked before anything is computed
        M.compute_metrics(np.zeros((8, 8)), np.zeros((8, 8)), np.zeros((8, 8)), ["EN", "QY"])


def test_get_metric_uniform_signature(gray: tuple) -> None:
    a, b, f = gray
    assert M.get_metric("EN")(a, b, f) == S.entropy(f)
    assert M.get_metric("PSNR")(a, b, f, definition="standard") == S.psnr(a, b, f, definition="standard")
    assert M.get_metric("FMI_dct")(a, b, f) == F.fmi(a, b, f, "dct")


def test_compute_metrics_gray(gray: tuple) -> None:
    a, b, f = gray
    names = ["SD", "FMI_pixel", "SCD"]
    values = M.compute_metrics(a, b, f, names)
    assert list(values) == names
    assert values == {"SD": S.standard_deviation(f), "FMI_pixel": F.fmi(a, b, f), "SCD": S.scd(a, b, f)}
    # Gray images: the colour mode does not matter.
    assert M.compute_metrics(a, b, f, names, colour="per-channel") == values


def test_options_reach_the_metric(gray: tuple) -> None:
    a, b, f = gray
    values = M.compute_metrics(a, b, f, ["PSNR", "FMI_pixel"], options={"PSNR": {"definition": "standard"},
                                                                         "FMI_pixel": {"window": 5}})
    assert values["PSNR"] == S.psnr(a, b, f, definition="standard")
    assert values["FMI_pixel"] == F.fmi(a, b, f, window=5)
    with pytest.raises(ValueError, match="not requested"):
        M.compute_metrics(a, b, f, ["EN"], options={"SD": {}})


def test_colour_y_mode(rng: np.random.Generator, gray: tuple) -> None:
    _, mri, _ = gray
    pet = rng.integers(0, 256, (24, 24, 3)).astype(np.uint8)
    fused = rng.integers(0, 256, (24, 24, 3)).astype(np.uint8)
    y_pet = np.rint(rgb_to_ycbcr(pet / 255.0)[..., 0] * 255.0)
    y_fused = np.rint(rgb_to_ycbcr(fused / 255.0)[..., 0] * 255.0)
    np.testing.assert_array_equal(M.to_gray_y(pet), y_pet)
    np.testing.assert_array_equal(M.to_gray_y(mri), mri)
    values = M.compute_metrics(pet, mri, fused, ["FMI_pixel", "SF"])
    assert values == {"FMI_pixel": F.fmi(y_pet, mri, y_fused), "SF": S.spatial_frequency(y_fused)}


def test_colour_per_channel_mode(rng: np.random.Generator, gray: tuple) -> None:
    _, mri, _ = gray
    pet = rng.integers(0, 256, (24, 24, 3)).astype(np.uint8)
    fused = rng.integers(0, 256, (24, 24, 3)).astype(np.uint8)
    values = M.compute_metrics(pet, mri, fused, ["FMI_pixel", "SF", "PSNR"], colour="per-channel")
    # Not colour-aware: averaged over R, G, B with the gray source standing for each channel.
    per_channel = [F.fmi(pet[..., k], mri, fused[..., k]) for k in range(3)]
    assert values["FMI_pixel"] == pytest.approx(np.mean(per_channel))
    # VIFB statistics get the RGB arrays and apply VIFB's own rule (SF: planes side by side).
    assert values["SF"] == S.spatial_frequency(fused)
    mri_rgb = np.repeat(mri[..., None], 3, axis=2)
    assert values["PSNR"] == S.psnr(pet, mri_rgb, fused)
    with pytest.raises(ValueError, match="colour mode"):
        M.compute_metrics(pet, mri, fused, ["SF"], colour="rgb")


def test_nan_is_never_silent(monkeypatch: pytest.MonkeyPatch, gray: tuple) -> None:
    a, b, f = gray
    monkeypatch.setitem(M.METRICS, "EN", M.MetricSpec("EN", f"{__name__}:nan_metric"))
    with pytest.raises(M.MetricValueError, match="EN returned NaN"):
        M.compute_metrics(a, b, f, ["SD", "EN"])
    with pytest.warns(RuntimeWarning, match="EN returned NaN"):
        values = M.compute_metrics(a, b, f, ["SD", "EN"], nan_policy="warn")
    assert np.isnan(values["EN"]) and values["SD"] == S.standard_deviation(f)


def test_inf_psnr_is_a_value() -> None:
    a = np.full((8, 8), 9.0)
    assert M.compute_metrics(a, a, a, ["PSNR"]) == {"PSNR": float("inf")}


def test_bad_images(gray: tuple) -> None:
    a, b, f = gray
    with pytest.raises(ValueError, match="grid"):
        M.compute_metrics(a, b, f[:20], ["EN"])
    with pytest.raises(ValueError, match="NaN or Inf"):
        M.compute_metrics(a, b, np.full(f.shape, np.nan), ["EN"])
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        M.compute_metrics(a, b, np.zeros((24, 24, 4)), ["EN"])
    with pytest.warns(RuntimeWarning, match="0..255"):
        M.compute_metrics(a / 255.0, b / 255.0, f / 255.0, ["EN"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        M.compute_metrics(a, b, f, ["EN"])  # uint8 in 0..255: no warning
