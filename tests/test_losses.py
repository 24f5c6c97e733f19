"""SSIM-alpha loss: equality with MONAI's SSIM, gradients, the l/c/s terms, the role of alpha, clipping,
source weights and the added terms as the loss sums them (each term alone: tests/test_loss_terms.py)."""

from __future__ import annotations

import pytest
import torch
from monai.metrics import SSIMMetric

from pipeline.losses import TERMS, SSIMAlphaLoss, gaussian_window, legacy_terms, parse_terms, signed_power
from pipeline.losses.kernels import source_variance


def _images(seed: int = 0, n: int = 3, size: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    fused = torch.rand(n, 1, size, size, generator=g)
    sources = torch.rand(n, 2, size, size, generator=g)
    sources[:, 1] = 0.7 * fused[:, 0] + 0.3 * sources[:, 1]  # one correlated, one independent source
    return fused, sources


@pytest.mark.parametrize("win_size,sigma,data_range", [(11, 1.5, 1.0), (7, 1.0, 1.0), (11, 1.5, 2.0)])
def test_alpha_one_equals_monai_ssim(win_size: int, sigma: float, data_range: float) -> None:
    fused, sources = _images()
    loss = SSIMAlphaLoss(alpha=1, beta=1, gamma=1, win_size=win_size, sigma=sigma, data_range=data_range)
    monai = SSIMMetric(spatial_dims=2, data_range=data_range, win_size=win_size, kernel_sigma=sigma)
    ref = torch.stack([monai(fused, sources[:, i : i + 1])[:, 0] for i in range(2)], dim=1)
    ours = loss.ssim_per_source(fused, sources)
    assert torch.allclose(ours, ref, atol=1e-5)
    assert float(loss(fused, sources)) == pytest.approx(1 - float(ref.mean()), abs=1e-5)


def test_window_matches_monai_kernel() -> None:
    from monai.metrics.regression import _gaussian_kernel

    ref = _gaussian_kernel(2, 1, (11, 11), (1.5, 1.5))
    assert torch.allclose(gaussian_window(11, 1.5), ref, atol=1e-7)
    assert float(gaussian_window(11, 1.5).sum()) == pytest.approx(1.0, abs=1e-6)


def test_identical_images_give_zero_loss() -> None:
    _, sources = _images()
    same = SSIMAlphaLoss(weights=(1.0, 0.0))
    assert float(same(sources[:, :1], sources)) == pytest.approx(0.0, abs=1e-5)


def test_terms_multiply_to_ssim_and_are_bounded() -> None:
    fused, sources = _images(1)
    loss = SSIMAlphaLoss(alpha=1, beta=1, gamma=1)
    maps = loss._maps(fused, sources)
    assert torch.allclose(maps["l"] * maps["c"] * maps["s"], loss.ssim_map(fused, sources), atol=1e-6)
    terms = loss.ssim_terms(fused, sources)
    assert set(terms) == {"luminance", "contrast", "structure", "ssim_alpha"}
    for t in terms.values():
        assert t.shape == (2,)
    assert bool((terms["luminance"] <= 1).all() and (terms["contrast"] <= 1).all())
    assert bool((terms["contrast"] > 0).all())
    # the correlated source has a much higher structure term than the independent one
    assert float(terms["structure"][1]) > 0.8 > 0.2 > abs(float(terms["structure"][0]))


def test_weights_select_sources() -> None:
    fused, sources = _images(2)
    only_a, only_b = SSIMAlphaLoss(weights=(1, 0)), SSIMAlphaLoss(weights=(0, 3))
    per = SSIMAlphaLoss().ssim_per_source(fused, sources)
    assert float(only_a(fused, sources)) == pytest.approx(1 - float(per[:, 0].mean()), abs=1e-6)
    assert float(only_b(fused, sources)) == pytest.approx(1 - float(per[:, 1].mean()), abs=1e-6)
    assert float(SSIMAlphaLoss()(fused, sources)) == pytest.approx(1 - float(per.mean()), abs=1e-6)


def test_alpha_raises_the_weight_of_luminance() -> None:
    """A brightness error (l < 1, structure intact) costs far more with alpha = 4; a structural error
    at the right brightness (l ~ 1) costs about the same."""
    g = torch.Generator().manual_seed(3)
    src = 0.2 + 0.3 * torch.rand(2, 1, 48, 48, generator=g)
    sources = src.repeat(1, 2, 1, 1)
    darker = src - 0.15  # same contrast and structure, wrong luminance
    noisy = src + 0.05 * torch.randn(src.shape, generator=g)  # same mean, damaged structure
    plain, thesis = SSIMAlphaLoss(alpha=1), SSIMAlphaLoss(alpha=4)
    lum_ratio = float(thesis(darker, sources)) / float(plain(darker, sources))
    struct_ratio = float(thesis(noisy, sources)) / float(plain(noisy, sources))
    assert lum_ratio > 3.0
    assert struct_ratio == pytest.approx(1.0, abs=0.05)
    # and the gradient pushes the brightness back up harder
    x1, x4 = darker.clone().requires_grad_(), darker.clone().requires_grad_()
    plain(x1, sources).backward()
    thesis(x4, sources).backward()
    assert float(-x4.grad.sum()) > 2.0 * float(-x1.grad.sum()) > 0


def test_gradcheck_float64() -> None:
    g = torch.Generator().manual_seed(4)
    fused = torch.rand(2, 1, 14, 13, dtype=torch.float64, generator=g, requires_grad=True)
    sources = torch.rand(2, 2, 14, 13, dtype=torch.float64, generator=g)
    assert torch.autograd.gradcheck(lambda f: SSIMAlphaLoss(win_size=7)(f, sources), (fused,))
    # non-integer exponents and beta != gamma (the sqrt path) are differentiable too
    odd = SSIMAlphaLoss(alpha=2.5, beta=1.5, gamma=0.7, win_size=7)
    assert torch.autograd.gradcheck(lambda f: odd(f, sources), (fused,))


def test_flat_regions_have_finite_gradients() -> None:
    sources = torch.zeros(1, 2, 24, 24)
    sources[:, 1, 8:16, 8:16] = 0.8
    fused = torch.zeros(1, 1, 24, 24, requires_grad=True)
    loss = SSIMAlphaLoss()(fused, sources)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(fused.grad).all()


def test_negative_output_is_penalised_not_rewarded() -> None:
    """tanh can output negative values: a negative l must not turn into a reward under l^4."""
    _, sources = _images(5)
    loss = SSIMAlphaLoss()
    assert float(loss(-sources[:, :1], sources)) > 1.0 > float(loss(sources[:, :1], sources))
    assert torch.equal(signed_power(torch.tensor([-0.5, 0.5]), 2), torch.tensor([-0.25, 0.25]))


def test_autocast_keeps_float32() -> None:
    fused, sources = _images(6)
    ref = SSIMAlphaLoss()(fused, sources)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = SSIMAlphaLoss()(fused, sources)
    assert out.dtype == torch.float32 and float(out) == pytest.approx(float(ref), abs=1e-6)


@pytest.mark.parametrize(
    "fused,sources,match",
    [
        (torch.rand(1, 2, 20, 20), torch.rand(1, 2, 20, 20), "expects fused"),
        (torch.rand(1, 1, 20, 20), torch.rand(1, 3, 20, 20), "3 sources but 2 weights"),
        (torch.rand(1, 1, 20, 20), torch.rand(2, 2, 20, 20), "differ"),
        (torch.rand(1, 1, 8, 8), torch.rand(1, 2, 8, 8), "smaller than the 11x11 window"),
    ],
)
def test_bad_shapes(fused: torch.Tensor, sources: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SSIMAlphaLoss()(fused, sources)


@pytest.mark.parametrize("kwargs", [{"weights": (0, 0)}, {"weights": (-1, 2)}, {"alpha": -1}, {"sigma": 0}])
def test_bad_parameters(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        SSIMAlphaLoss(**kwargs)



# ---------------------------------------------------------------- clipping and source weights
def test_clip_scores_the_shipped_image() -> None:
    fused, sources = _images(5)
    raw = fused * 1.6 - 0.3  # values below 0 and above 1
    clipped_loss = SSIMAlphaLoss(clip=True)
    clamped = float(SSIMAlphaLoss()(raw.clamp(0, 1), sources))
    assert float(clipped_loss(raw, sources)) == pytest.approx(clamped, abs=1e-7)
    # a negative background costs nothing when clipped (the knife edge at 0 is gone) and feels no pull ...
    sources = torch.zeros(1, 2, 24, 24)
    sources[..., 8:16, 8:16] = 0.8
    a = sources[:, :1]
    out = torch.where(a > 0, a, torch.full_like(a, -0.2)).requires_grad_()
    clipped_loss(out, sources).backward()
    assert float(clipped_loss(out.detach(), sources)) == pytest.approx(0.0, abs=1e-6)
    assert float(out.grad[sources[:, :1] == 0].abs().max()) < 1e-7  # the optimum: round-off only
    # ... a grey one does, and without clipping the negative one costs too
    assert float(clipped_loss(out.detach().abs(), sources)) > 0.1
    assert float(SSIMAlphaLoss()(out.detach(), sources)) > 0.1
    # straight-through: an output below 0 everywhere (a black start) still gets a gradient
    # towards the bright sources, where a plain clamp would pass none
    inside = torch.full_like(out, -0.05).requires_grad_()
    clipped_loss(inside, sources).backward()
    assert float(inside.grad[sources[:, :1] > 0].max()) < 0  # descent raises them
    # the added terms score the clipped image too: a negative background is as good as 0 for "mean"
    anchored = SSIMAlphaLoss(clip=True, terms={"mean": 1.0})
    assert float(anchored(out.detach(), sources)) == pytest.approx(0.0, abs=1e-6)
    assert float(SSIMAlphaLoss(terms={"mean": 1.0})(out.detach().clamp(0, 1), sources)) == \
        pytest.approx(0.0, abs=1e-6)
    dead = torch.full_like(out, -0.05).requires_grad_()
    (1 - SSIMAlphaLoss().ssim(dead.clamp(0, 1), sources).mean()).backward()
    assert float(dead.grad.abs().max()) == 0.0


def test_variance_weights_follow_the_source_with_structure() -> None:
    fused, sources = _images(6)
    textured_a = sources.clone()
    textured_a[:, 1] = 0.4  # B flat everywhere: every window weighs A alone
    adaptive = SSIMAlphaLoss(weights="variance")
    only_a = SSIMAlphaLoss(weights=(1.0, 0.0))
    assert float(adaptive(fused, textured_a)) == pytest.approx(float(only_a(fused, textured_a)), abs=1e-6)
    # both flat: equal weights, as the fixed default
    flat = torch.stack([torch.full_like(sources[:, 0], 0.2), torch.full_like(sources[:, 0], 0.6)], dim=1)
    assert float(adaptive(fused, flat)) == pytest.approx(float(SSIMAlphaLoss()(fused, flat)), abs=1e-6)
    # the weights sum to 1 over the sources and follow the variance share
    _, m = adaptive._ssim_map_and_terms(fused, sources)
    w = adaptive.window_weights(m)
    assert torch.allclose(w.sum(dim=1), torch.ones_like(w[:, 0]))
    var = m["var_w"]
    assert torch.allclose(w[:, 0], var[:, 0] / var.sum(dim=1), atol=1e-6)
    loss_value = float(adaptive(fused, sources))
    assert float(adaptive.ssim(fused, sources).mean()) == pytest.approx(1 - loss_value, abs=1e-6)
    with pytest.raises(ValueError, match="variance"):
        SSIMAlphaLoss(weights="saliency")


def test_weight_sigma_narrows_the_window_of_the_variance_shares() -> None:
    # a strong step in A (the CT's skull edge) beside fine texture in B (the MRI's scalp)
    g = torch.Generator().manual_seed(5)
    a = torch.zeros(1, 1, 32, 32)
    a[..., :, :14] = 1.0
    b = 0.5 + 0.05 * torch.rand(1, 1, 32, 32, generator=g)
    sources = torch.cat([a, b], dim=1)
    wide, narrow = SSIMAlphaLoss(weights="variance"), SSIMAlphaLoss(weights="variance", weight_sigma=0.75)
    share_b = {}
    for name, loss in (("wide", wide), ("narrow", narrow)):
        _, m = loss._ssim_map_and_terms(b, sources)
        share_b[name] = loss.window_weights(m)[0, 1, :, 17 - 5]  # column 17: 3 pixels right of the step
    assert float(share_b["wide"].mean()) < 0.5 < float(share_b["narrow"].mean())
    # the narrower shares are those of the narrower Gaussian window
    var = source_variance(sources, gaussian_window(11, 0.75))
    _, m = narrow._ssim_map_and_terms(b, sources)
    assert torch.allclose(narrow.window_weights(m), var / var.sum(dim=1, keepdim=True), atol=1e-6)
    # sigma equal to the SSIM window's is the default; a non-positive one is refused
    fused = torch.rand(1, 1, 32, 32, generator=g)
    same = SSIMAlphaLoss(weights="variance", weight_sigma=1.5)
    assert float(same(fused, sources)) == float(wide(fused, sources))
    with pytest.raises(ValueError, match="weight_sigma"):
        SSIMAlphaLoss(weights="variance", weight_sigma=0.0)


# ---------------------------------------------------------------- added terms, as the loss sums them
#: the shipped model's loss (bundle 0.3.0, model card "Shipped hyperparameters")
SHIPPED = {"weights": "variance", "terms": {"gradient": 4.0, "wmean": 4.0}, "clip": True}


def _shipped_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(13)
    sources = torch.rand(2, 2, 32, 32, generator=g)
    return 1.4 * torch.rand(2, 1, 32, 32, generator=g) - 0.2, sources


def test_no_terms_is_the_thesis_loss() -> None:
    fused, sources = _images(2)
    thesis = SSIMAlphaLoss()
    assert thesis.term_weights == {} and SSIMAlphaLoss(terms={}).term_weights == {}
    zero = SSIMAlphaLoss(terms={"gradient": 0.0})
    assert torch.equal(zero(fused, sources), thesis(fused, sources))
    assert torch.equal(zero.weighted_terms(fused, sources), torch.zeros(3))


@pytest.mark.parametrize("name", sorted(TERMS))
def test_each_term_adds_its_weighted_mean(name: str) -> None:
    fused, sources = _images(3)
    base = float(SSIMAlphaLoss()(fused, sources))
    loss = SSIMAlphaLoss(terms={name: 2.0})
    extra = loss.term_values(fused, sources)[name]
    assert extra.shape == (3,) and bool((extra > 0).all())
    assert torch.equal(extra, TERMS[name](fused, sources, loss.window))
    assert float(loss(fused, sources)) == pytest.approx(base + 2.0 * float(extra.mean()), abs=1e-6)


def test_terms_have_their_own_weights() -> None:
    fused, sources = _images(4)
    loss = SSIMAlphaLoss(terms={"gradient": 1.5, "mean": 0.25})
    v = loss.term_values(fused, sources)
    expected = float(SSIMAlphaLoss()(fused, sources)) + float((1.5 * v["gradient"] + 0.25 * v["mean"]).mean())
    assert float(loss(fused, sources)) == pytest.approx(expected, abs=1e-6)


def test_shipped_loss_is_unchanged() -> None:
    """The shipped configuration: bit for bit the sum the loss made before terms had their own weights
    (``1 - ssim + 4 * mean(gradient + wmean)``; 4 is a power of two, so ``4a + 4b == 4 (a + b)``
    exactly), and the value that sum gave (recorded with bundle 0.3.0's loss, to CPU round-off)."""
    fused, sources = _shipped_inputs()
    loss = SSIMAlphaLoss(**SHIPPED)
    clipped = fused + (fused.clamp(0, 1) - fused).detach()
    v = loss.term_values(clipped, sources)
    old_sum = (1.0 - loss.ssim(clipped, sources).mean()) + 4.0 * (v["gradient"] + v["wmean"]).mean()
    value = loss(fused, sources)
    assert torch.equal(value, old_sum)
    assert float(value) == pytest.approx(float.fromhex("0x1.aaba900000000p+2"), abs=2e-6)  # 6.6676369
    fr = fused.clone().requires_grad_()
    loss(fr, sources).backward()
    grad_sum = float.fromhex("0x1.3c52240f45152p+4")  # 19.77
    assert float(fr.grad.double().abs().sum()) == pytest.approx(grad_sum, rel=1e-5)


def test_legacy_second_term_maps_onto_terms() -> None:
    assert legacy_terms("gradient+wmean", 4.0) == {"gradient": 4.0, "wmean": 4.0}
    assert legacy_terms("none", 5.0) == {} == legacy_terms(None, None) == legacy_terms("gradient", 0.0)
    assert legacy_terms("gradient + mean", 2) == {"gradient": 2.0, "mean": 2.0}
    fused, sources = _shipped_inputs()
    with pytest.warns(FutureWarning, match="terms"):
        old = SSIMAlphaLoss(weights="variance", clip=True, second_term="gradient+wmean", second_weight=4.0)
    assert old.term_weights == SHIPPED["terms"]
    assert torch.equal(old(fused, sources), SSIMAlphaLoss(**SHIPPED)(fused, sources))
    for bad in (("edges", 1.0), ("none+gradient", 1.0), ("gradient", -1.0), ("intensity", 1.0)):
        with pytest.raises(ValueError):
            legacy_terms(*bad)
    with pytest.raises(ValueError, match="both"), pytest.warns(FutureWarning):
        SSIMAlphaLoss(terms={"gradient": 1.0}, second_term="gradient", second_weight=1.0)


@pytest.mark.parametrize("terms,match", [({"edges": 1.0}, "unknown loss term"), ({"gradient": -1.0}, ">= 0"),
                                         ({"gradient": "x"}, "number"), ("gradient", "mapping"),
                                         ({"intensity": 1.0}, "unknown")])
def test_bad_terms(terms: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SSIMAlphaLoss(terms=terms)  # type: ignore[arg-type]


def test_parse_terms_normalises_names_and_weights() -> None:
    assert parse_terms({" Gradient ": 4, "wmean": "4.0"}) == {"gradient": 4.0, "wmean": 4.0}
    assert parse_terms(None) == {}


def test_terms_autocast_keeps_float32() -> None:
    g = torch.Generator().manual_seed(4)
    fused = 0.2 + 0.6 * torch.rand(1, 1, 14, 14, generator=g)
    sources = torch.rand(1, 2, 14, 14, generator=g)
    loss = SSIMAlphaLoss(terms={"gradient": 0.5, "wmean": 0.5})
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = loss(fused.to(torch.bfloat16), sources.to(torch.bfloat16))
    assert out.dtype == torch.float32
