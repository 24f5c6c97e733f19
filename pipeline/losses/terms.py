"""Added loss terms: a registry of small functions, each weighted on its own in the loss.

The thesis names an added term as future work. Each term here is one function
``term(fused, sources, window) -> (N,)``: the unweighted value per image of a fused image
``(N, 1, H, W)`` against its sources ``(N, S, H, W)``, float in [0, 1], computed with the
:class:`~pipeline.losses.kernels.LossWindow` of the loss it belongs to. :class:`SSIMAlphaLoss`
adds ``sum_k weight_k * mean_N term_k`` to the SSIM-alpha loss, for ``terms={name: weight}``.

Adding a term: one function decorated with ``@register_term("name")``, one test.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F

from pipeline.losses.kernels import (LossWindow, local_stats, sobel_gradients, sobel_magnitude,
                                     source_variance, variance_shares)

__all__ = ["TermFn", "TERMS", "GRADIENT_BAND", "register_term", "parse_terms", "legacy_terms", "gradient",
           "bgradient", "sgradient", "fine", "mean", "wmean", "wmean_error", "maxint"]

#: A term: ``(fused (N, 1, H, W), sources (N, S, H, W), window) -> (N,)``, unweighted, per image.
TermFn = Callable[[torch.Tensor, torch.Tensor, LossWindow], torch.Tensor]

#: The registry: term name -> function.
TERMS: dict[str, TermFn] = {}

#: ``bgradient``: the fraction of the sources' largest gradient magnitude to which the fused
#: image's may fall at no cost (Q_ABF's edge-strength sigmoid is 0.98 there).
GRADIENT_BAND = 0.75


def register_term(name: str) -> Callable[[TermFn], TermFn]:
    """Decorator: add a term function to :data:`TERMS` under ``name``.

    Args:
        name: the name used in ``terms={name: weight}`` (lower case, no ``+``).

    Returns:
        the decorator, which returns the function unchanged.

    Raises:
        ValueError: the name is taken or malformed.
    """
    if not name or name != name.strip().lower() or "+" in name or name == "none":
        raise ValueError(f"register_term: bad term name {name!r}")

    def add(fn: TermFn) -> TermFn:
        if name in TERMS:
            raise ValueError(f"register_term: a term named {name!r} exists already")
        TERMS[name] = fn
        return fn

    return add


def parse_terms(terms: Mapping[str, Any] | None) -> dict[str, float]:
    """Validate ``{name: weight}`` against the registry.

    Args:
        terms: term name -> non-negative weight; ``None`` or ``{}`` for none (the thesis's loss).

    Returns:
        a new dict of float weights, in the given order.

    Raises:
        ValueError: not a mapping, an unknown name, or a negative or non-numeric weight.
    """
    if terms is None:
        return {}
    if not isinstance(terms, Mapping):
        raise ValueError(f"terms must be a mapping of term name to weight, e.g. {{'gradient': 4.0}}, "
                         f"got {terms!r}")
    out: dict[str, float] = {}
    for name, weight in terms.items():
        key = str(name).strip().lower()
        if key not in TERMS:
            raise ValueError(f"unknown loss term {name!r}; registered terms: {sorted(TERMS)}")
        try:
            value = float(weight)
        except (TypeError, ValueError):
            raise ValueError(f"the weight of loss term {name!r} must be a number, got {weight!r}") from None
        if not value >= 0:
            raise ValueError(f"the weight of loss term {name!r} must be >= 0, got {weight!r}")
        out[key] = value
    return out


def legacy_terms(second_term: str | None, second_weight: float | None) -> dict[str, float]:
    """The ``terms`` of a configuration written before bundle 0.4.0.

    Those configurations (and the MLflow parameters of their runs) name a ``+`` sum of terms with
    one factor, ``second_term="gradient+wmean", second_weight=4.0``; that is every named term at
    that weight, ``{"gradient": 4.0, "wmean": 4.0}``. The sum of the weighted terms equals the old
    factor times the summed terms to float round-off, exactly for a power-of-two weight like 4.

    Args:
        second_term: ``"none"``, a term name or a ``+`` combination (``None``: none).
        second_weight: the common factor (``None``: 0).

    Returns:
        term name -> weight (empty for ``"none"`` or a zero weight).

    Raises:
        ValueError: an unknown term name or a negative weight.
    """
    text = "none" if second_term is None else str(second_term).lower().replace(" ", "")
    parts = [p for p in dict.fromkeys(text.split("+")) if p != "none"]
    weight = 0.0 if second_weight is None else float(second_weight)
    if weight < 0:
        raise ValueError(f"second_weight must be >= 0, got {second_weight}")
    if "none" in text.split("+") and parts:
        raise ValueError(f"second_term {second_term!r} combines 'none' with terms")
    if not parts or weight == 0:
        parse_terms(dict.fromkeys(parts, 0.0))  # still refuse unknown names
        return {}
    return parse_terms(dict.fromkeys(parts, weight))


def _per_image(err: torch.Tensor) -> torch.Tensor:
    """Mean absolute value per image ``(N,)`` of an error map ``(N, C, H, W)``."""
    return err.abs().mean(dim=(1, 2, 3))


@register_term("gradient")
def gradient(fused: torch.Tensor, sources: torch.Tensor, window: LossWindow = LossWindow()) -> torch.Tensor:
    """Edge preservation: ``mean | |grad F| - max_i |grad S_i| |`` (Sobel L1 magnitude, 'valid' border).

    Every edge of either source is asked for at full strength in the fused image; SSIM against
    each source separately is maximised by a compromise that halves an edge present in one
    source only (the texture loss of SwinFusion, Ma et al. 2022).

    Args:
        fused: ``(N, 1, H, W)``, float in [0, 1].
        sources: ``(N, S, H, W)``, float in [0, 1].
        window: unused (the Sobel kernel is fixed).

    Returns:
        ``(N,)``.
    """
    return _per_image(sobel_magnitude(fused) - sobel_magnitude(sources).amax(dim=1, keepdim=True))


@register_term("bgradient")
def bgradient(fused: torch.Tensor, sources: torch.Tensor, window: LossWindow = LossWindow()) -> torch.Tensor:
    """Edge preservation as Q_ABF scores it: ``gradient`` with a free band.

    Zero while ``|grad F|`` lies between :data:`GRADIENT_BAND` of ``max_i |grad S_i|`` and that
    maximum, the shortfall or excess beyond. Q_ABF scores an edge at three quarters of its
    strength almost as well as a full one; the full step that ``gradient`` asks for is what
    darkens the MRI's scalp beside the CT's white skull.

    Args:
        fused: ``(N, 1, H, W)``, float in [0, 1].
        sources: ``(N, S, H, W)``, float in [0, 1].
        window: unused.

    Returns:
        ``(N,)``.
    """
    gf, gmax = sobel_magnitude(fused), sobel_magnitude(sources).amax(dim=1, keepdim=True)
    return _per_image(F.relu(GRADIENT_BAND * gmax - gf) + F.relu(gf - gmax))


@register_term("sgradient")
def sgradient(fused: torch.Tensor, sources: torch.Tensor, window: LossWindow = LossWindow()) -> torch.Tensor:
    """Pattern preservation: ``mean |G_x F - G_x S_k| + |G_y F - G_y S_k|``, ``k = argmax_i |grad S_i|``.

    Unlike ``gradient`` (magnitudes only) the signed Sobel derivatives of the locally dominant
    source are asked for: its pixel-level pattern, which the 3x3 windows of FMI compare.

    Args:
        fused: ``(N, 1, H, W)``, float in [0, 1].
        sources: ``(N, S, H, W)``, float in [0, 1].
        window: unused.

    Returns:
        ``(N,)``.
    """
    gf, gs = sobel_gradients(fused), sobel_gradients(sources)  # (N, C, 2, H', W')
    pick = gs.abs().sum(dim=2, keepdim=True).argmax(dim=1, keepdim=True)
    target = torch.gather(gs, 1, pick.expand(-1, 1, 2, -1, -1))
    return _per_image((gf - target).abs().sum(dim=2))


@register_term("fine")
def fine(fused: torch.Tensor, sources: torch.Tensor, window: LossWindow = LossWindow()) -> torch.Tensor:
    """Pixel-scale structure: ``mean (1 - sum_i w_i cs_i)`` over 3x3 uniform windows.

    ``cs_i`` is SSIM's contrast-structure factor of F against source i and ``w_i`` that source's
    share of the 3x3 variance (no gradient through it). The 11x11 Gaussian SSIM barely sees a
    pattern of a few pixels; FMI compares images at this scale.

    Args:
        fused: ``(N, 1, H, W)``, float in [0, 1].
        sources: ``(N, S, H, W)``, float in [0, 1].
        window: its ``c2`` and ``data_range``.

    Returns:
        ``(N,)``.
    """
    _, _, vx, vy, cov = local_stats(fused, sources, torch.full((1, 1, 3, 3), 1.0 / 9))
    vy = vy.clamp_min(0)
    cs = (2 * cov + window.c2) / (vx + vy + window.c2)
    shared = (variance_shares(vy.detach(), window.data_range) * cs).sum(dim=1, keepdim=True)
    return _per_image(1.0 - shared)


@register_term("mean")
def mean(fused: torch.Tensor, sources: torch.Tensor, window: LossWindow = LossWindow()) -> torch.Tensor:
    """Intensity anchor on the sources' average: ``mean | F - mean_i S_i |``.

    It keeps flat regions (the background) at the sources' level, where the SSIM luminance term
    saturates (``l = C1 / (mu_F^2 + C1)`` is flat in ``mu_F`` once a dark background drifted grey).

    Args:
        fused: ``(N, 1, H, W)``, float in [0, 1].
        sources: ``(N, S, H, W)``, float in [0, 1].
        window: unused.

    Returns:
        ``(N,)``.
    """
    return _per_image(fused - sources.mean(dim=1, keepdim=True))


def wmean_error(fused: torch.Tensor, sources: torch.Tensor,
                window: LossWindow = LossWindow()) -> torch.Tensor:
    """``F - sum_i w_i S_i`` per pixel, ``w_i`` the Gaussian-window variance shares (no gradient).

    Args:
        fused: ``(N, 1, H, W)``.
        sources: ``(N, S, H, W)``.
        window: the Gaussian window of the shares.

    Returns:
        ``(N, 1, H', W')``: the pixels whose window lies inside the image.
    """
    dtype = torch.promote_types(torch.promote_types(fused.dtype, sources.dtype), torch.float32)
    vy = source_variance(sources.detach(), window.kernel(dtype, sources.device))
    r = window.win_size // 2
    h, w = vy.shape[-2:]
    inner = sources[..., r:r + h, r:r + w]
    target = (variance_shares(vy, window.data_range) * inner).sum(dim=1, keepdim=True)
    return fused[..., r:r + h, r:r + w] - target


@register_term("wmean")
def wmean(fused: torch.Tensor, sources: torch.Tensor, window: LossWindow = LossWindow()) -> torch.Tensor:
    """Intensity anchor on the variance-weighted mean: ``mean | F - sum_i w_i S_i |``.

    ``w_i`` are the shares of ``weights="variance"`` over the loss's Gaussian window (pixels within
    half a window of the border left out). Where one source is flat it anchors F on the other
    source itself, not on a half-strength copy, in agreement with variance-weighted SSIM and
    ``gradient``, where ``mean`` pulls such regions to the average.

    Args:
        fused: ``(N, 1, H, W)``, float in [0, 1].
        sources: ``(N, S, H, W)``, float in [0, 1].
        window: the loss's window.

    Returns:
        ``(N,)``.
    """
    return _per_image(wmean_error(fused, sources, window))


@register_term("maxint")
def maxint(fused: torch.Tensor, sources: torch.Tensor, window: LossWindow = LossWindow()) -> torch.Tensor:
    """Intensity of the brighter source: ``mean | F - max_i S_i |``.

    The intensity term of CDDFuse's and SwinFusion's losses. It keeps what is bright in either
    source at its own level (CT bone, PET/SPECT uptake) where SSIM against each source lets a
    bright region fall to a grey interior inside a bright rim.

    Args:
        fused: ``(N, 1, H, W)``, float in [0, 1].
        sources: ``(N, S, H, W)``, float in [0, 1].
        window: unused.

    Returns:
        ``(N,)``.
    """
    return _per_image(fused - sources.amax(dim=1, keepdim=True))
