"""pipeline.colour: YCbCr transform and colour-preserving fusion."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.colour import fuse_with_colour, rgb_to_ycbcr, ycbcr_to_rgb


def test_ycbcr_round_trip(rng: np.random.Generator) -> None:
    rgb = rng.random((32, 32, 3))
    np.testing.assert_allclose(ycbcr_to_rgb(rgb_to_ycbcr(rgb)), rgb, atol=1e-12)


def test_known_values_bt601_full_range() -> None:
    ycc = rgb_to_ycbcr(np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 1.0]]))
    np.testing.assert_allclose(ycc[0], [0.299, 0.5 - 0.168736, 1.0], atol=1e-6)
    np.testing.assert_allclose(ycc[1], [0.114, 1.0, 0.5 - 0.081312], atol=1e-6)
    np.testing.assert_allclose(ycc[2], [1.0, 0.5, 0.5], atol=1e-6)


def test_gray_maps_to_neutral_chroma(rng: np.random.Generator) -> None:
    g = rng.random((16, 16))
    ycc = rgb_to_ycbcr(np.stack([g, g, g], axis=-1))
    np.testing.assert_allclose(ycc[..., 0], g, atol=1e-12)
    np.testing.assert_allclose(ycc[..., 1:], 0.5, atol=1e-12)


def test_ycbcr_to_rgb_clips_out_of_gamut() -> None:
    out = ycbcr_to_rgb(np.array([1.0, 1.0, 1.0]))
    assert out.min() >= 0.0 and out.max() <= 1.0


def _mean_rule(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (x + y) / 2.0


def test_gray_pair_goes_straight_to_the_rule(rng: np.random.Generator) -> None:
    a, b = rng.random((8, 8)), rng.random((8, 8))
    out = fuse_with_colour(a, b, _mean_rule)
    assert out.shape == (8, 8)
    np.testing.assert_allclose(out, (a + b) / 2)


@pytest.mark.parametrize("colour_first", [True, False])
def test_colour_source_keeps_chroma_and_fuses_y(rng: np.random.Generator, colour_first: bool) -> None:
    # a mid-saturation colour image stays in gamut after its Y is changed a little
    colour = 0.3 + 0.4 * rng.random((16, 16, 3))
    gray = 0.3 + 0.4 * rng.random((16, 16))
    calls: list[tuple[np.ndarray, np.ndarray]] = []

    def rule(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        calls.append((x, y))
        return 0.5 * x + 0.5 * y

    a, b = (colour, gray) if colour_first else (gray, colour)
    fused = fuse_with_colour(a, b, rule)
    assert fused.shape == (16, 16, 3)
    y_colour = rgb_to_ycbcr(colour)
    # the rule saw the colour source's Y and the gray image, in the pair's order
    x, y = calls[0]
    np.testing.assert_allclose(x if colour_first else y, y_colour[..., 0])
    np.testing.assert_allclose(y if colour_first else x, gray)
    ycc = rgb_to_ycbcr(fused)
    np.testing.assert_allclose(ycc[..., 1:], y_colour[..., 1:], atol=1e-9)
    np.testing.assert_allclose(ycc[..., 0], 0.5 * y_colour[..., 0] + 0.5 * gray, atol=1e-9)


def test_two_colour_sources_keep_the_more_saturated_chroma(rng: np.random.Generator) -> None:
    g = 0.5 * np.ones((4, 4))
    pale = np.stack([g + 0.02, g, g - 0.02], axis=-1)
    vivid = np.stack([g + 0.2, g, g - 0.2], axis=-1)
    fused = fuse_with_colour(pale, vivid, lambda x, y: np.maximum(x, y))
    np.testing.assert_allclose(rgb_to_ycbcr(fused)[..., 1:], rgb_to_ycbcr(vivid)[..., 1:], atol=1e-9)
