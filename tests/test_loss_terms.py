"""The added loss terms of pipeline.losses.terms, each alone: reference values on small images."""

from __future__ import annotations

import pytest
import torch

from pipeline.losses import terms
from pipeline.losses.kernels import LossWindow, sobel_gradients, sobel_magnitude
from pipeline.losses.terms import GRADIENT_BAND, TERMS, register_term


def _edges() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    a = torch.zeros(1, 1, 16, 16)
    b = torch.zeros(1, 1, 16, 16)
    a[..., :, 8:] = 1.0  # vertical edge in A only
    b[..., 8:, :] = 0.5  # horizontal edge in B only
    return a, b, torch.cat([a, b], dim=1)


def test_registry_holds_the_documented_terms() -> None:
    assert set(TERMS) == {"gradient", "bgradient", "sgradient", "fine", "mean", "wmean", "maxint"}
    with pytest.raises(ValueError, match="exists"):
        register_term("gradient")(terms.gradient)
    with pytest.raises(ValueError, match="bad term name"):
        register_term("a+b")


def test_sobel_magnitude_of_a_ramp_and_a_flat_image() -> None:
    ramp = torch.arange(8.0).repeat(8, 1)[None, None] / 10  # d/dx = 0.1 per pixel
    mag = sobel_magnitude(ramp)
    assert mag.shape == (1, 1, 6, 6)
    assert torch.allclose(mag, torch.full_like(mag, 0.8), atol=1e-6)  # Sobel gain 8 x 0.1, d/dy = 0
    assert float(sobel_magnitude(torch.full((1, 2, 9, 9), 0.4)).abs().max()) < 1e-6  # flat: no edge


def test_sobel_gradients_of_a_ramp() -> None:
    ramp = torch.arange(8.0).repeat(8, 1)[None, None] / 8  # +1/8 per column
    g = sobel_gradients(ramp)
    assert g.shape == (1, 1, 2, 6, 6)
    assert torch.allclose(g[:, :, 0], torch.ones(1, 1, 6, 6))  # (1 + 2 + 1) x 2 px x slope 1/8
    assert torch.equal(g[:, :, 1], torch.zeros(1, 1, 6, 6))


def test_gradient_asks_for_every_edge_at_full_strength() -> None:
    a, b, sources = _edges()
    target = torch.maximum(sobel_magnitude(a), sobel_magnitude(b)).mean()
    assert float(terms.gradient(torch.zeros_like(a), sources)) == pytest.approx(float(target), rel=1e-6)
    assert 0 < float(terms.gradient((a + b) / 2, sources)) < float(target)  # the average halves each edge
    assert float(terms.gradient(a, torch.cat([a, torch.zeros_like(a)], dim=1))) == 0.0  # A's edges, whole


def test_gradient_is_differentiable() -> None:
    g = torch.Generator().manual_seed(4)
    fused = (0.2 + 0.6 * torch.rand(1, 1, 14, 14, generator=g, dtype=torch.float64)).requires_grad_()
    sources = torch.rand(1, 2, 14, 14, generator=g, dtype=torch.float64)
    terms.gradient(fused, sources).sum().backward()
    assert fused.grad is not None and bool(torch.isfinite(fused.grad).all())


def test_bgradient_is_free_inside_the_band_q_abf_barely_scores() -> None:
    a = torch.zeros(1, 1, 16, 16)
    a[..., :, 8:] = 0.8  # a vertical edge in A; B flat
    sources = torch.cat([a, torch.full_like(a, 0.3)], dim=1)
    edge = float(sobel_magnitude(a).mean())
    for scale, expected in ((1.0, 0.0), (0.8, 0.0), (GRADIENT_BAND, 0.0), (0.5, (GRADIENT_BAND - 0.5) * edge),
                            (0.0, GRADIENT_BAND * edge), (1.25, 0.25 * edge)):
        assert float(terms.bgradient(scale * a, sources)) == pytest.approx(expected, abs=1e-6), scale
    # "gradient" charges the 0.8-strength edge that "bgradient" lets pass
    assert float(terms.gradient(0.8 * a, sources)) == pytest.approx(0.2 * edge)


def test_sgradient_follows_the_dominant_source_with_signs() -> None:
    a = torch.zeros(1, 1, 16, 16)
    a[..., :, 8:] = 1.0  # vertical edge in A
    sources = torch.cat([a, torch.full((1, 1, 16, 16), 0.3)], dim=1)  # B flat: A dominates everywhere
    assert float(terms.sgradient(a, sources)) == 0.0
    assert float(terms.sgradient(a + 0.25, sources)) == 0.0  # gradients ignore the level
    # the inverted edge has the same magnitude ("gradient" does not see it) but the opposite sign
    assert float(terms.gradient(1 - a, sources)) == 0.0
    expected = 2 * sobel_gradients(a).abs().sum(dim=2).mean()
    assert float(terms.sgradient(1 - a, sources)) == pytest.approx(float(expected), rel=1e-6)


def test_fine_asks_for_the_dominant_source_pixel_by_pixel() -> None:
    g = torch.Generator().manual_seed(7)
    a = torch.rand(1, 1, 12, 12, generator=g)
    sources = torch.cat([a, torch.full_like(a, 0.5)], dim=1)  # B flat: A dominates every 3x3 window
    assert float(terms.fine(a, sources)) == pytest.approx(0.0, abs=1e-6)
    assert float(terms.fine(a + 0.2, sources)) == pytest.approx(0.0, abs=1e-6)  # level ignored
    shuffled = a.flatten()[torch.randperm(144, generator=g)].reshape_as(a)
    assert float(terms.fine(shuffled, sources)) > 0.5  # same values, other pattern: ~ 1 - 0
    assert float(terms.fine(1 - a, sources)) > 1.5  # inverted pattern: cs ~ -1


def test_mean_anchors_on_the_average() -> None:
    a, b, sources = _edges()
    average = sources.mean(dim=1, keepdim=True)
    assert float(terms.mean(average, sources)) == 0.0
    assert float(terms.mean(torch.zeros_like(a), sources)) == pytest.approx(float(average.mean()))


def test_maxint_keeps_the_brighter_source_at_its_level() -> None:
    a, b, sources = _edges()
    brighter = sources.amax(dim=1, keepdim=True)
    assert float(terms.maxint(brighter, sources)) == 0.0
    assert float(terms.maxint(torch.zeros_like(a), sources)) == pytest.approx(float(brighter.mean()), rel=1e-6)
    # the average loses half of every one-source bright region: exactly mean |A - B| / 2
    half = float((sources[:, 0] - sources[:, 1]).abs().mean()) / 2
    assert float(terms.maxint(sources.mean(dim=1, keepdim=True), sources)) == pytest.approx(half, rel=1e-6)


def test_wmean_anchors_on_the_source_that_carries_the_structure() -> None:
    g = torch.Generator().manual_seed(3)
    a = torch.rand(1, 1, 24, 24, generator=g)
    b = torch.full_like(a, 0.2)
    b[..., 12:, :] = torch.rand(1, 1, 12, 24, generator=g)  # B flat in the top half, textured below
    a[..., 12:, :] = 0.7  # A flat in the bottom half
    sources = torch.cat([a, b], dim=1)
    window = LossWindow(win_size=5, sigma=1.0)
    err = terms.wmean_error(a, sources, window)[0, 0]  # rows 2..21 of the 24x24 image
    assert err.shape == (20, 20)
    assert float(err[:8].abs().max()) < 1e-6  # rows 2-9: B flat in the whole window, target = A itself
    assert float(terms.wmean_error(b, sources, window)[0, 0, -8:].abs().max()) < 1e-6  # A flat: B itself
    # everything flat: equal weights, the target is the average (as "mean")
    flat = torch.cat([torch.full_like(a, 0.2), torch.full_like(a, 0.6)], dim=1)
    assert float(terms.wmean(torch.full_like(a, 0.4), flat, window)) < 1e-6
    # "mean" costs F = A where B is flat; "wmean" does not
    top = (slice(None), slice(None), slice(2, 10), slice(2, 22))
    assert float((a - sources.mean(dim=1, keepdim=True))[top].abs().mean()) > 0.1


@pytest.mark.parametrize("name", sorted(TERMS))
def test_every_term_is_per_image_non_negative_and_zero_on_a_copy_of_one_flat_source(name: str) -> None:
    g = torch.Generator().manual_seed(11)
    a = torch.rand(3, 1, 20, 20, generator=g)
    sources = torch.cat([a, torch.full_like(a, 0.4)], dim=1)
    value = TERMS[name](torch.rand(3, 1, 20, 20, generator=g), sources, LossWindow())
    assert value.shape == (3,) and bool((value >= 0).all())
    if name not in ("mean", "maxint"):  # their targets are the average and the maximum, not a source
        assert float(TERMS[name](a, sources, LossWindow()).abs().max()) < 1e-5
