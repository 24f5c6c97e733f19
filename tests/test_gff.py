"""GFF against the original code's published outputs, and its building blocks."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.baselines import fuse_pair, gff
from pipeline.io import read_image
from tests.conftest import shared_path


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
def test_reproduces_golden_mfif(n):
    folder = shared_path("golden", "mfif")
    a = read_image(folder / f"g_0{n}_1.tif") / 255.0
    b = read_image(folder / f"g_0{n}_2.tif") / 255.0
    golden = read_image(folder / f"g_0{n}_gff.tif").astype(int)
    ours = np.clip(np.rint(gff.fuse(a, b) * 255.0), 0, 255).astype(int)  # MATLAB's im2uint8
    diff = np.abs(ours - golden)
    assert diff.max() <= 1
    assert (diff == 0).mean() >= 0.999


@pytest.mark.parametrize("name", ["fight", "kettle", "manlight"])
def test_close_to_vifb_colour_outputs(name):
    """VIFB ran GFF on (VI, IR) RGB images and stored JPEG: JPEG loss bounds the match."""
    folder = shared_path("golden", "vifb")
    vi = read_image(folder / f"{name}_VI.jpg", mode="rgb") / 255.0
    ir = read_image(folder / f"{name}_IR.jpg", mode="rgb") / 255.0
    golden = read_image(folder / f"{name}_GFF.jpg", mode="rgb").astype(float)
    fused = fuse_pair("gff", vi, ir, colour="per-channel")
    assert np.abs(np.rint(fused * 255.0) - golden).mean() < 1.5


def test_box_filter_is_clipped_window_sum(rng):
    img = rng.random((13, 9))
    for r in (0, 1, 3, 20):  # r = 20 is larger than the image: every window is the whole image
        expected = np.array([[img[max(0, i - r):i + r + 1, max(0, j - r):j + r + 1].sum()
                              for j in range(9)] for i in range(13)])
        np.testing.assert_allclose(gff.box_filter(img, r), expected, rtol=1e-12)


def test_guided_filter_properties(rng):
    guide = rng.random((40, 40))
    # filtering the guide itself with a tiny eps returns it (edge-preserving identity)
    np.testing.assert_allclose(gff.guided_filter(guide, guide, 3, 1e-10), guide, atol=1e-5)
    # a constant input stays constant whatever the guide
    np.testing.assert_allclose(gff.guided_filter(guide, np.full_like(guide, 0.7), 5, 0.1), 0.7, atol=1e-12)


def test_weights_sum_to_one_and_ties_go_to_first(rng):
    a = rng.random((48, 48))
    base, detail = gff.saliency_weights([a, a])
    np.testing.assert_allclose(base[0] + base[1], 1.0, atol=1e-12)
    np.testing.assert_allclose(detail[0] + detail[1], 1.0, atol=1e-12)
    # identical sources tie everywhere: the first source takes all the weight
    assert base[0].min() > 0.99 and detail[0].min() > 0.99


def test_fuse_self_is_identity_and_focus_is_picked(rng):
    a = rng.random((64, 64))
    np.testing.assert_allclose(gff.fuse(a, a), a, atol=1e-9)
    blurred = np.full_like(a, a.mean())
    fused = gff.fuse(a, blurred)  # the sharp source is salient everywhere
    assert np.abs(fused - a).mean() < np.abs(fused - blurred).mean() / 5


def test_small_images_and_errors(rng):
    out = gff.fuse(rng.random((20, 30)), rng.random((20, 30)))  # smaller than the 45-pixel radius
    assert out.shape == (20, 30) and out.min() >= 0 and out.max() <= 1
    with pytest.raises(ValueError, match="gff expects"):
        gff.fuse(np.zeros((8, 8)), np.zeros((8, 9)))
