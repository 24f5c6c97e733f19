"""The method registry, the classic methods and the colour modes."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from pipeline.baselines import COLOUR_MODES, METHODS, UnknownMethodError, fuse_pair, get_method
from pipeline.baselines import dwt, lp, maximum, wa
from pipeline.colour import rgb_to_ycbcr
from tests.conftest import shared_path

CLASSICS = ("wa", "max", "gff", "dwt", "lp")


def _method_params(method: str) -> dict:
    """What lpcnn/cnn need to run; skips the test when it is not available."""
    if method == "lpcnn":
        return {"weights": str(shared_path("lpcnn", "cnnmodel.mat")), "device": "cpu"}
    if method == "cnn":
        from pipeline.baselines.cnn import DEFAULT_CHECKPOINT

        if not DEFAULT_CHECKPOINT.is_file():
            pytest.skip(f"no trained checkpoint at {DEFAULT_CHECKPOINT}")
        return {"device": "cpu"}
    return {}


def test_registry_names_and_errors():
    assert METHODS == ("wa", "max", "gff", "lpcnn", "dwt", "lp", "cnn")
    assert COLOUR_MODES == ("ycbcr", "per-channel")
    assert get_method("wa") is wa.fuse
    with pytest.raises(UnknownMethodError, match="choose one of: wa, max, gff"):
        get_method("sift")
    with pytest.raises(ValueError, match="unknown colour mode"):
        fuse_pair("wa", np.zeros((4, 4)), np.zeros((4, 4)), colour="hsv")


def test_registry_imports_lazily():
    code = ("import sys, pipeline.baselines as b; b.get_method('wa'); "
            "print(any(m in sys.modules for m in ('pipeline.baselines.lpcnn', 'pipeline.baselines.cnn', 'torch')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_wa_is_exact(rng):
    a, b = rng.random((16, 16)), rng.random((16, 16))
    np.testing.assert_array_equal(wa.fuse(a, b), 0.5 * a + 0.5 * b)
    np.testing.assert_array_equal(fuse_pair("wa", a, b, weight_a=1, weight_b=3), 0.25 * a + 0.75 * b)
    np.testing.assert_array_equal(wa.fuse(a, b, weight_a=0.2, weight_b=0.8), 0.2 * a + 0.8 * b)
    with pytest.raises(ValueError, match=">= 0"):
        wa.fuse(a, b, weight_a=-1)
    with pytest.raises(ValueError, match="differ in shape"):
        wa.fuse(a, b[:4])


def test_max_keeps_the_brighter_source(rng):
    a, b = rng.random((16, 16)), rng.random((16, 16))
    fused = maximum.fuse(a, b)
    np.testing.assert_array_equal(fused, np.where(a >= b, a, b))
    np.testing.assert_array_equal(maximum.fuse(a, np.zeros_like(a)), a)
    with pytest.raises(ValueError, match="differ in shape"):
        maximum.fuse(a, b[:4])


@pytest.mark.parametrize("method", CLASSICS)
def test_self_fusion_returns_the_image(method, rng):
    a = rng.random((64, 48))
    np.testing.assert_allclose(fuse_pair(method, a, a), a, atol=1e-9)


@pytest.mark.parametrize("method", ["dwt", "lp"])
def test_multiscale_picks_details_and_averages_means(method):
    y, x = np.mgrid[0:64, 0:64]
    texture = 0.5 + 0.4 * np.sign(np.sin(x / 2.0))  # strong detail
    flat = np.full((64, 64), 0.3)
    fused = fuse_pair(method, flat, texture)
    assert np.corrcoef(fused.ravel(), texture.ravel())[0, 1] > 0.95  # the details come from the texture
    assert abs(fused.mean() - (flat.mean() + texture.mean()) / 2) < 0.05  # the low-pass is the mean


def test_dwt_and_lp_options(rng):
    a, b = rng.random((37, 50)), rng.random((37, 50))
    for wavelet in ("db1", "db2", "sym4"):
        assert dwt.fuse(a, b, wavelet=wavelet, levels=9).shape == (37, 50)  # levels capped
    assert lp.fuse(a, b, levels=20).shape == (37, 50)
    np.testing.assert_allclose(lp.fuse(a, b, levels=1), (a + b) / 2)  # no band-pass: the mean
    with pytest.raises(ValueError, match="unknown wavelet"):
        dwt.fuse(a, b, wavelet="nope")
    with pytest.raises(ValueError, match="levels"):
        lp.fuse(a, b, levels=0)


@pytest.mark.parametrize("method", METHODS)
def test_gray_pair_sizes_and_dtypes(method, rng):
    params = _method_params(method)
    a, b = rng.random((64, 64)), rng.random((64, 64))
    fused = fuse_pair(method, a, b, **params)
    assert fused.shape == (64, 64) and fused.dtype == np.float64
    assert 0.0 <= fused.min() and fused.max() <= 1.0


@pytest.mark.parametrize("colour", COLOUR_MODES)
@pytest.mark.parametrize("method", METHODS)
def test_colour_pairs_in_both_modes(method, colour, rng):
    params = _method_params(method)
    pet, mri = rng.random((64, 64, 3)), rng.random((64, 64))
    for a, b in ((pet, mri), (mri, pet)):
        fused = fuse_pair(method, a, b, colour=colour, **params)
        assert fused.shape == (64, 64, 3) and fused.dtype == np.float64
        assert 0.0 <= fused.min() and fused.max() <= 1.0


def test_ycbcr_mode_fuses_luma_and_keeps_chroma(rng):
    pet = 0.25 + 0.5 * rng.random((32, 32, 3))  # mid-range so no channel clips
    mri = 0.25 + 0.5 * rng.random((32, 32))
    fused = fuse_pair("wa", pet, mri)
    ycc_f, ycc_p = rgb_to_ycbcr(fused), rgb_to_ycbcr(pet)
    np.testing.assert_allclose(ycc_f[..., 0], 0.5 * ycc_p[..., 0] + 0.5 * mri, atol=1e-12)
    np.testing.assert_allclose(ycc_f[..., 1:], ycc_p[..., 1:], atol=1e-12)


def test_per_channel_mode(rng):
    pet, mri = rng.random((48, 48, 3)), rng.random((48, 48))
    np.testing.assert_allclose(fuse_pair("wa", pet, mri, colour="per-channel"), 0.5 * pet + 0.5 * mri[..., None])
    # GFF has its own colour rule: one weight map from both grays, applied to every channel
    from pipeline.baselines import gff

    fused = fuse_pair("gff", pet, mri, colour="per-channel")
    np.testing.assert_array_equal(fused, gff.fuse_per_channel(pet, mri))
    for c in range(3):  # one weight map for all channels, not channel-by-channel GFF
        naive = gff.fuse(pet[..., c], mri)
        assert not np.allclose(fused[..., c], naive)


def test_bad_sources():
    with pytest.raises(ValueError, match="differ in size"):
        fuse_pair("wa", np.zeros((8, 8)), np.zeros((9, 8)))
    with pytest.raises(ValueError, match="gray or"):
        fuse_pair("wa", np.zeros((8, 8, 4)), np.zeros((8, 8)))
    with pytest.raises(ValueError, match="NaN"):
        fuse_pair("wa", np.full((8, 8), np.nan), np.zeros((8, 8)))
