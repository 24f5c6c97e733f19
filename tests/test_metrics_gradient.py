"""Q_G (toolbox metricXydeas) and Q_ABF (VIFB metricsQabf): golden values, properties, torch."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from pipeline.io import read_image
from pipeline.metrics.gradient import Q_G_MAX, q_abf, q_abf_torch, q_g
from tests.conftest import MEDICAL_TRIPLES, assert_medical_golden, shared_path

MFIF_PAIRS = [f"g_0{n}" for n in range(1, 6)]
MFIF_METHODS = ["dwt", "nsct", "gff", "sr", "cnn"]
VIFB_CASES = [(name, method) for name in ("fight", "kettle", "manlight") for method in ("GFF", "CNN")]
#: Q_ABF of A = B = F with integer-valued images: the G = g_F quirk of VIFB lets strong edges
#: reach Tg * Ta-sigmoid(1) = 0.975333, edges of strength 1 give Q_G_MAX.
Q_ABF_IDENTITY_MAX = 0.9994 * 0.9879 / (1.0 + np.exp(-22.0 * 0.2))


def _mfif(pair: str, method: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    values = json.loads(shared_path("golden", "mfif", "values.json").read_text())["values"]
    a = read_image(shared_path("golden", "mfif", f"{pair}_1.tif"))
    b = read_image(shared_path("golden", "mfif", f"{pair}_2.tif"))
    f = read_image(shared_path("golden", "mfif", f"{pair}_{method}.tif"))
    return a, b, f, values[pair][method]


def _vifb(name: str, method: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """VIFB's order (VI, IR, fused), all as RGB: a gray IR is replicated, as VIFB's b1 == 1 branch."""
    values = json.loads(shared_path("golden", "vifb", "values.json").read_text())["values"]
    vi = read_image(shared_path("golden", "vifb", f"{name}_VI.jpg"), mode="rgb")
    ir = read_image(shared_path("golden", "vifb", f"{name}_IR.jpg"), mode="rgb")
    f = read_image(shared_path("golden", "vifb", f"{name}_{method}.jpg"), mode="rgb")
    return vi, ir, f, values[name][method]


# ----------------------------------------------------------------------------- golden values


@pytest.mark.shared_data
@pytest.mark.parametrize("pair", MFIF_PAIRS)
@pytest.mark.parametrize("method", MFIF_METHODS)
def test_q_g_matches_toolbox_golden(pair: str, method: str) -> None:
    a, b, f, expected = _mfif(pair, method)
    assert q_g(a, b, f) == pytest.approx(expected["Q_G"], abs=1e-4)


@pytest.mark.shared_data
@pytest.mark.parametrize("name,method", VIFB_CASES)
def test_q_abf_matches_vifb_golden(name: str, method: str) -> None:
    vi, ir, f, expected = _vifb(name, method)
    value = np.mean([q_abf(vi[..., c], ir[..., c], f[..., c]) for c in range(3)])
    assert value == pytest.approx(expected["Qabf"], rel=1e-3)


# ----------------------------------------------------------------------------- properties


def test_identical_images_give_the_known_maximum(texture) -> None:
    a = texture[0]
    assert q_g(a, a, a) == pytest.approx(Q_G_MAX, abs=1e-12)
    assert Q_G_MAX == pytest.approx(0.9747936, abs=1e-7)
    value = q_abf(a, a, a)
    assert Q_G_MAX - 1e-12 <= value <= Q_ABF_IDENTITY_MAX


def test_fused_copy_of_one_source_beats_noise(texture, rng) -> None:
    a, b, _ = texture
    noise = rng.integers(0, 256, a.shape)
    for metric in (q_g, q_abf):
        assert metric(a, b, a) > metric(a, b, noise) + 0.1


@pytest.mark.parametrize("metric", [q_g, q_abf])
def test_symmetric_in_the_sources(metric, texture) -> None:
    a, b, f = texture
    assert metric(a, b, f) == pytest.approx(metric(b, a, f), abs=1e-12)


@pytest.mark.parametrize("metric", [q_g, q_abf])
def test_uint8_and_float_inputs_agree(metric, texture) -> None:
    a, b, f = texture
    assert metric(a, b, f) == metric(a.astype(np.float32), b.astype(float), f.astype(float))


def test_q_g_is_finite_on_flat_images_and_q_abf_warns() -> None:
    flat = np.zeros((16, 16))
    assert q_g(flat, flat, flat) == pytest.approx(Q_G_MAX, abs=1e-12)  # every pixel G = A = 1
    with pytest.warns(RuntimeWarning, match="neither source has any gradient"):
        assert np.isnan(q_abf(flat, flat, flat))


def test_mostly_black_slice_gives_numbers(rng) -> None:
    a = np.zeros((64, 64), np.uint8)
    b = np.zeros((64, 64), np.uint8)
    a[16:48, 16:48] = rng.integers(40, 220, (32, 32))
    b[20:44, 20:44] = rng.integers(0, 256, (24, 24))
    f = np.maximum(a, b)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for metric in (q_g, q_abf):
            assert 0.0 < metric(a, b, f) < Q_ABF_IDENTITY_MAX


@pytest.mark.parametrize("metric", [q_g, q_abf])
def test_bad_inputs_are_refused(metric) -> None:
    img = np.zeros((8, 8))
    with pytest.raises(ValueError, match="2D grayscale"):
        metric(np.zeros((8, 8, 3)), img, img)
    with pytest.raises(ValueError, match="same shape"):
        metric(img, img, np.zeros((8, 9)))
    with pytest.raises(ValueError, match="NaN"):
        metric(img, img, np.full((8, 8), np.nan))


# ----------------------------------------------------------------------------- torch


def test_q_abf_torch_equals_numpy(texture, rng) -> None:
    a, b, f = texture
    batch = [(a, b, f), (b, a, a), (f, a, rng.integers(0, 256, a.shape).astype(np.uint8))]
    stack = [torch.from_numpy(np.stack([t[i] for t in batch]).astype(np.float32))[:, None] for i in range(3)]
    values = q_abf_torch(*stack)
    assert values.shape == (3,) and values.dtype == torch.float64
    expected = [q_abf(*t) for t in batch]
    np.testing.assert_allclose(values.numpy(), expected, rtol=0, atol=1e-10)


def test_q_abf_torch_flags_flat_samples() -> None:
    x = torch.zeros(2, 1, 16, 16)
    x[0, 0, 4:8, 4:8] = 100.0
    with pytest.warns(RuntimeWarning, match=r"samples \[1\]"):
        values = q_abf_torch(x, x, x)
    assert torch.isfinite(values[0]) and torch.isnan(values[1])


def test_q_abf_torch_refuses_bad_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        q_abf_torch(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))


@pytest.mark.parametrize("name", MEDICAL_TRIPLES)
def test_medical_golden(name: str) -> None:
    """golden/medical: the Liu toolbox copy (MFIF) on CT-MRI triples, within 1e-4."""
    assert_medical_golden(name, {"Q_G": q_g})
