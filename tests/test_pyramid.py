"""Pyramids with Mertens' conventions: hand-computed values, sizes, exact reconstruction."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.baselines.pyramid import (
    PYRAMID_FILTER,
    default_levels,
    downsample,
    gaussian_pyramid,
    laplacian_pyramid,
    reconstruct_laplacian,
    upsample,
)


def _ramp_rows(values: list[float], rows: int = 6) -> np.ndarray:
    return np.tile(np.asarray(values, dtype=np.float64), (rows, 1))


def test_filter_is_burt_adelson():
    np.testing.assert_array_equal(PYRAMID_FILTER, np.array([1, 4, 6, 4, 1]) / 16)


def test_downsample_symmetric_border_by_hand():
    # row 0..7: col 0 sees [1 0 | 0 1 2] (symmetric: edge repeated), col 6 sees [4 5 6 7 | 7]
    out = downsample(_ramp_rows(list(range(8))))
    np.testing.assert_allclose(out, _ramp_rows([0.4375, 2.0, 4.0, 5.9375], rows=3), atol=1e-15)


def test_upsample_replicate_pad_zero_filter_by_hand():
    out = upsample(_ramp_rows([0.0, 2.0, 4.0, 6.0], rows=3), (6, 8))
    np.testing.assert_allclose(out, _ramp_rows([0.25, 1, 2, 3, 4, 5, 5.75, 6]), atol=1e-15)


def test_upsample_keeps_constants_and_rejects_wrong_sizes():
    np.testing.assert_allclose(upsample(np.full((4, 5), 0.3), (7, 10)), 0.3, atol=1e-15)
    with pytest.raises(ValueError, match="cannot upsample"):
        upsample(np.zeros((4, 4)), (10, 8))


@pytest.mark.parametrize("shape", [(64, 64), (63, 50), (17, 9), (32, 40, 3)])
def test_laplacian_round_trip_and_sizes(shape, rng):
    img = rng.random(shape)
    pyr = laplacian_pyramid(img)
    assert len(pyr) == default_levels(shape)
    for finer, coarser in zip(pyr, pyr[1:]):
        assert coarser.shape[:2] == ((finer.shape[0] + 1) // 2, (finer.shape[1] + 1) // 2)
        assert coarser.shape[2:] == finer.shape[2:]
    np.testing.assert_allclose(reconstruct_laplacian(pyr), img, atol=1e-12)


def test_pyramid_levels_and_top(rng):
    img = rng.random((64, 48))
    gp = gaussian_pyramid(img, 3)
    lp = laplacian_pyramid(img, 3)
    assert [g.shape for g in gp] == [(64, 48), (32, 24), (16, 12)]
    np.testing.assert_array_equal(gp[0], img)
    np.testing.assert_allclose(lp[-1], gp[-1])  # the top of the Laplacian pyramid is the low-pass
    np.testing.assert_allclose(lp[0], img - upsample(gp[1], img.shape))
    assert len(laplacian_pyramid(img, 1)) == 1 and np.array_equal(laplacian_pyramid(img, 1)[0], img)


def test_default_levels_is_matlab_floor_log2():
    assert default_levels((256, 256)) == 8
    assert default_levels((255, 300)) == 7
    assert default_levels((480, 640)) == 8


def test_bad_input():
    with pytest.raises(ValueError, match="at least 1 level"):
        laplacian_pyramid(np.zeros((8, 8)), 0)
    with pytest.raises(ValueError, match="empty"):
        reconstruct_laplacian([])
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        gaussian_pyramid(np.zeros(8))
