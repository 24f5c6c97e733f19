"""SSIM-alpha: the unsupervised fusion loss of the thesis (luminance, contrast, structure) and its options.

For a fused image ``x`` and a source ``y`` (float in [0, 1], the library's convention), local
statistics are taken under a normalised Gaussian window exactly as MONAI's
:class:`monai.metrics.SSIMMetric` does ('valid' convolution, biased local variances):

.. math::

    l = \\frac{2\\mu_x\\mu_y + C_1}{\\mu_x^2 + \\mu_y^2 + C_1},\\quad
    c = \\frac{2\\sigma_x\\sigma_y + C_2}{\\sigma_x^2 + \\sigma_y^2 + C_2},\\quad
    s = \\frac{\\sigma_{xy} + C_3}{\\sigma_x\\sigma_y + C_3}

with :math:`C_1 = (K_1 L)^2`, :math:`C_2 = (K_2 L)^2`, :math:`C_3 = C_2 / 2` and
``SSIM_alpha = l^alpha * c^beta * s^gamma``. The loss is ``1 - sum_i w_i mean(SSIM_alpha(x, y_i)) /
sum_i w_i`` over the sources ``y_i``. ``alpha > 1`` raises the weight of luminance agreement, which
plain SSIM (alpha = beta = gamma = 1) under-weights for the dark backgrounds of medical slices.

Signs and powers: ``c`` is always positive, but ``s`` is negative where the fused image is
anti-correlated with a source, and ``l`` is negative where the fused value is negative (the
network ends in ``tanh``). A plain power would turn ``l^4`` of a negative ``l`` into a reward and
is undefined for a negative base with a non-integer exponent, so the exponents of ``l`` and ``s``
are applied sign-preserving: ``sign(t) |t|^p``. For ``t >= 0`` this is the ordinary power. And
where both the luminance factor and the contrast-structure factor are negative (a fused image of
negative local mean that is also anti-correlated with the source: ``x = -y`` scores +1 in plain
SSIM), the product is taken negative, ``-|l^alpha (c s)|``, so such a window is penalised. For
fused images in [0, 1], ``l > 0`` everywhere and nothing differs from the textbook formula.

``c^beta * s^gamma`` is evaluated as ``(c s)^gamma * c^(beta - gamma)`` where
``c s = (2 sigma_xy + C2) / (sigma_x^2 + sigma_y^2 + C2)`` exactly (since ``C3 = C2 / 2``), so no
square root of a variance enters the loss when ``beta == gamma`` (the default) and the gradient
stays finite on flat regions. Everything is computed in float32 or wider even under autocast,
since local variances are differences of nearly equal numbers.

Added terms (none by default: the thesis's loss exactly). The thesis names an added term as
future work; ``terms={name: weight}`` adds ``weight * mean term`` for each term of the registry in
:mod:`pipeline.losses.terms` (edge, pattern and intensity terms, each documented there).

Clipping (``clip=True``). The fused image that inference writes is the network output clipped to
[0, 1], so with ``clip`` the SSIM_alpha term scores that clipped image. Without it the optimum on a
black background is an output of exactly 0, a knife edge: any drift above 0 shows as grey (and
``l^alpha`` has almost no gradient to bring a grey background back), while any value below 0 is
clipped away for free. Scored clipped, every value below 0 is a perfect black background, so the
background settles below 0 with a margin. The added terms score the same clipped image (on the
raw output, the ``mean`` term would pull a negative background back up to the knife edge). The
clip is differentiated straight-through (the gradient with respect to the clipped image is passed
to the raw output unchanged): a plain clamp would pass no gradient at all to a pixel below 0, so a
network whose first, near-zero output starts slightly negative (the thesis initialisation) would
never leave the black start.

Source weights. The thesis weighs the two sources equally everywhere (``weights=(0.5, 0.5)``), so
where one source has structure and the other is flat (a skull edge in CT over the MRI's dark
background) the optimum halves the edge. ``weights="variance"`` weighs the SSIM_alpha maps window
by window with each source's share of the local variance, ``w_i = sigma_i^2 / sum_j sigma_j^2``
(equal weights where every source is flat, local std below 1e-3 of the range), the saliency rule
of Yang's fusion metric Q_Y (Yang et al. 2008): the fused image then keeps the full structure of
whichever source carries it. The weights are computed from the sources alone and carry no gradient.
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch.nn.modules.loss import _Loss

from pipeline.losses.kernels import (LossWindow, gaussian_window, local_stats, signed_power, source_variance,
                                     variance_shares, working_dtype)
from pipeline.losses.terms import TERMS, legacy_terms, parse_terms

__all__ = ["SSIMAlphaLoss", "straight_through_clip"]


def straight_through_clip(fused: torch.Tensor) -> torch.Tensor:
    """``fused`` clipped to [0, 1] in value, differentiated as the identity (straight-through).

    Args:
        fused: the raw network output.

    Returns:
        tensor like ``fused``.
    """
    return fused + (fused.clamp(0, 1) - fused).detach()


class SSIMAlphaLoss(_Loss):
    """``1 - weighted mean over sources of mean SSIM_alpha(fused, source)`` plus the weighted added terms.

    See the module docstring. Inputs are float images in [0, 1] (``data_range`` 1.0), batch first:
    ``fused`` is ``(N, 1, H, W)`` and ``sources`` is ``(N, S, H, W)`` (the 2-channel network input,
    one channel per source). Both ``H`` and ``W`` must be at least ``win_size``.

    Args:
        alpha: exponent of the luminance term (4 in the thesis).
        beta: exponent of the contrast term.
        gamma: exponent of the structure term.
        win_size: side of the Gaussian window.
        sigma: standard deviation of the Gaussian window.
        k1: luminance constant, ``C1 = (k1 * data_range) ** 2``.
        k2: contrast constant, ``C2 = (k2 * data_range) ** 2``; ``C3 = C2 / 2``.
        data_range: dynamic range of the images (1.0 for the library's [0, 1] images).
        weights: weight of each source in the mean (normalised by their sum), or ``"variance"``:
            per-window weights from the sources' local variances (see the module docstring).
        terms: added terms, ``{name: weight}`` with names of :data:`pipeline.losses.terms.TERMS`
            (``None`` or ``{}``: the thesis's loss).
        clip: score the fused image clipped to [0, 1] (what inference ships), in the SSIM-alpha
            term and the added terms, with a straight-through gradient (see the module docstring).
        weight_sigma: for ``weights="variance"``, the standard deviation of the Gaussian window
            (same size) over which the variance shares are taken; ``None``: the SSIM window's
            ``sigma``. A narrower one keeps a strong edge of one source from claiming the windows
            of the other source's texture beside it.
        second_term: deprecated (bundle < 0.4.0): a ``+`` sum of term names, all at
            ``second_weight``; mapped onto ``terms`` by :func:`pipeline.losses.terms.legacy_terms`.
        second_weight: deprecated: the factor of ``second_term``.

    Raises:
        ValueError: bad parameters (non-positive window, sigma or range, negative or all-zero
            weights, negative exponents, an unknown term or a negative term weight, a term given
            both in ``terms`` and in ``second_term``).
    """

    def __init__(
        self,
        alpha: float = 4.0,
        beta: float = 1.0,
        gamma: float = 1.0,
        win_size: int = 11,
        sigma: float = 1.5,
        k1: float = 0.01,
        k2: float = 0.03,
        data_range: float = 1.0,
        weights: Sequence[float] | str = (0.5, 0.5),
        terms: Mapping[str, float] | None = None,
        clip: bool = False,
        weight_sigma: float | None = None,
        *,
        second_term: str | None = None,
        second_weight: float | None = None,
    ) -> None:
        super().__init__()
        if win_size < 1 or sigma <= 0 or data_range <= 0:
            raise ValueError(f"SSIMAlphaLoss: win_size ({win_size}), sigma ({sigma}) and data_range "
                             f"({data_range}) must be positive")
        if min(alpha, beta, gamma) < 0:
            raise ValueError(f"SSIMAlphaLoss: exponents must be >= 0, got alpha={alpha}, beta={beta}, "
                             f"gamma={gamma}")
        #: True for ``weights="variance"`` (per-window weights from the sources' local variances)
        self.adaptive = isinstance(weights, str)
        if self.adaptive and weights != "variance":
            raise ValueError(f"SSIMAlphaLoss: weights must be a sequence of numbers or 'variance', "
                             f"got {weights!r}")
        w = [0.5, 0.5] if self.adaptive else [float(x) for x in weights]
        if not w or min(w) < 0 or sum(w) <= 0:
            raise ValueError(f"SSIMAlphaLoss: weights must be non-negative with a positive sum, "
                             f"got {weights}")
        self.alpha, self.beta, self.gamma = float(alpha), float(beta), float(gamma)
        #: l, c, s and SSIM_alpha means per source of the last forward pass, and how many passes ran
        self.last_terms: dict[str, torch.Tensor] | None = None
        #: the batch mean of each added term (unweighted) of the last forward pass
        self.last_added: dict[str, torch.Tensor] = {}
        self.forward_count = 0
        self.window = LossWindow(int(win_size), float(sigma), float(k1), float(k2), float(data_range))
        self.win_size, self.sigma = self.window.win_size, self.window.sigma
        self.k1, self.k2, self.data_range = self.window.k1, self.window.k2, self.window.data_range
        self.c1, self.c2 = self.window.c1, self.window.c2
        self.c3 = self.c2 / 2
        self.weights = tuple(w)
        try:
            #: the added terms, name -> weight, in the order they are summed
            self.term_weights: dict[str, float] = parse_terms(terms)
        except ValueError as err:
            raise ValueError(f"SSIMAlphaLoss: {err}") from None
        if second_term is not None or second_weight is not None:
            warnings.warn("SSIMAlphaLoss: second_term/second_weight are deprecated; pass "
                          "terms={name: weight} (e.g. {'gradient': 4.0, 'wmean': 4.0})",
                          FutureWarning, stacklevel=2)
            try:
                old = legacy_terms(second_term, second_weight)
            except ValueError as err:
                raise ValueError(f"SSIMAlphaLoss: {err}") from None
            both = sorted(set(old) & set(self.term_weights))
            if both:
                raise ValueError(f"SSIMAlphaLoss: term(s) {both} given in both terms and second_term")
            self.term_weights = {**old, **self.term_weights}
        self.clip = bool(clip)
        if weight_sigma is not None and weight_sigma <= 0:
            raise ValueError(f"SSIMAlphaLoss: weight_sigma must be positive, got {weight_sigma}")
        self.weight_sigma = None if weight_sigma is None else float(weight_sigma)

    # ---------------------------------------------------------------- local statistics
    def _check(self, fused: torch.Tensor, sources: torch.Tensor) -> None:
        if fused.ndim != 4 or sources.ndim != 4 or fused.shape[1] != 1:
            raise ValueError(f"SSIMAlphaLoss expects fused (N, 1, H, W) and sources (N, S, H, W), "
                             f"got {tuple(fused.shape)} and {tuple(sources.shape)}")
        if fused.shape[0] != sources.shape[0] or fused.shape[2:] != sources.shape[2:]:
            raise ValueError(f"SSIMAlphaLoss: fused {tuple(fused.shape)} and sources {tuple(sources.shape)} "
                             "differ in batch size or image size")
        if not self.adaptive and sources.shape[1] != len(self.weights):
            raise ValueError(f"SSIMAlphaLoss: {sources.shape[1]} sources but {len(self.weights)} weights; "
                             "pass one weight per source channel")
        if min(fused.shape[2:]) < self.win_size:
            raise ValueError(f"SSIMAlphaLoss: images {tuple(fused.shape[2:])} are smaller than the "
                             f"{self.win_size}x{self.win_size} window; use larger patches or a smaller "
                             "win_size")

    def _maps(self, fused: torch.Tensor, sources: torch.Tensor) -> dict[str, torch.Tensor]:
        """The l, c, c*s, s maps and the variances of the source weights, ``(N, S, H', W')`` each."""
        with torch.autocast(device_type=sources.device.type, enabled=False):
            kernel = self.window.kernel(working_dtype(fused, sources), sources.device)
            mu_x, mu_y, var_x, var_y, cov = local_stats(fused, sources, kernel)
            lum = (2 * mu_x * mu_y + self.c1) / (mu_x * mu_x + mu_y * mu_y + self.c1)
            denom = var_x + var_y + self.c2
            cs = (2 * cov + self.c2) / denom  # = c * s exactly, because C3 = C2 / 2
            # sigma_x sigma_y without sqrt of a (possibly rounding-negative) variance; the clamp floor
            # keeps the derivative of sqrt finite and only matters where a window is flat.
            sxsy = torch.sqrt((var_x.clamp_min(0) * var_y.clamp_min(0)).clamp_min(1e-20))
            con = (2 * sxsy + self.c2) / denom
            var_w = var_y
            if self.adaptive and self.weight_sigma is not None and self.weight_sigma != self.sigma:
                var_w = source_variance(sources, gaussian_window(self.win_size, self.weight_sigma))
            return {"l": lum, "c": con, "cs": cs, "s": cs / con, "var_w": var_w.detach()}

    # ---------------------------------------------------------------- public API
    def ssim_map(self, fused: torch.Tensor, sources: torch.Tensor) -> torch.Tensor:
        """SSIM_alpha maps of the fused image against each source.

        Args:
            fused: ``(N, 1, H, W)``, float in [0, 1].
            sources: ``(N, S, H, W)``, float in [0, 1].

        Returns:
            ``(N, S, H - win + 1, W - win + 1)`` maps.
        """
        return self._ssim_map_and_terms(fused, sources)[0]

    def _ssim_map_and_terms(self, fused: torch.Tensor,
                            sources: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The SSIM_alpha maps and the l, c, s maps they were made of (one pass over the images)."""
        self._check(fused, sources)
        m = self._maps(fused, sources)
        lum = signed_power(m["l"], self.alpha)
        con_struct = signed_power(m["cs"], self.gamma)
        if self.beta != self.gamma:
            con_struct = con_struct * m["c"].pow(self.beta - self.gamma)
        out = lum * con_struct
        # negative luminance agreement times anti-correlated structure must not score as agreement
        return torch.where((lum < 0) & (con_struct < 0), -out, out), m

    @staticmethod
    def _term_means(ssim_map: torch.Tensor, m: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {name: m[key].detach().mean(dim=(0, 2, 3)) for name, key in
               (("luminance", "l"), ("contrast", "c"), ("structure", "s"))}
        out["ssim_alpha"] = ssim_map.detach().mean(dim=(0, 2, 3))
        return out

    def window_weights(self, m: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """Per-window source weights for ``weights="variance"``, else None (fixed weights).

        Args:
            m: the maps of one pass (``_maps``).

        Returns:
            ``(N, S, H', W')`` summing to 1 over S, or None.
        """
        if not self.adaptive:
            return None
        return variance_shares(m["var_w"], self.data_range)

    def _weighted_map_mean(self, ssim_map: torch.Tensor, m: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per image ``(N,)``: the source-weighted SSIM_alpha averaged over the map."""
        w = self.window_weights(m)
        if w is None:
            return self._weighted(ssim_map.mean(dim=(2, 3)))
        return (ssim_map * w).sum(dim=1).mean(dim=(1, 2))

    def ssim_per_source(self, fused: torch.Tensor, sources: torch.Tensor) -> torch.Tensor:
        """Mean SSIM_alpha per image and source.

        Args:
            fused: ``(N, 1, H, W)``.
            sources: ``(N, S, H, W)``.

        Returns:
            ``(N, S)``.
        """
        return self.ssim_map(fused, sources).mean(dim=(2, 3))

    def ssim(self, fused: torch.Tensor, sources: torch.Tensor) -> torch.Tensor:
        """Weighted mean SSIM_alpha over the sources, per image (``1 - ssim`` is the thesis's loss).

        Args:
            fused: ``(N, 1, H, W)``.
            sources: ``(N, S, H, W)``.

        Returns:
            ``(N,)``.
        """
        return self._weighted_map_mean(*self._ssim_map_and_terms(fused, sources))

    def _weighted(self, per: torch.Tensor) -> torch.Tensor:
        w = torch.tensor(self.weights, dtype=torch.float64).to(per.device)
        return (per * w.to(per.dtype)).sum(dim=1) / w.sum().to(per.dtype)

    def term_values(self, fused: torch.Tensor, sources: torch.Tensor,
                    names: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """The unweighted added terms per image, in float32 or wider even under autocast.

        Args:
            fused: ``(N, 1, H, W)``, float in [0, 1] (as scored: the caller clips).
            sources: ``(N, S, H, W)``, float in [0, 1].
            names: which terms (default: the configured ones, whatever their weight).

        Returns:
            term name -> ``(N,)``.
        """
        self._check(fused, sources)
        with torch.autocast(device_type=sources.device.type, enabled=False):
            dtype = working_dtype(fused, sources)
            x, y = fused.to(dtype), sources.to(dtype)
            return {name: TERMS[name](x, y, self.window) for name in (names or self.term_weights)}

    def weighted_terms(self, fused: torch.Tensor, sources: torch.Tensor) -> torch.Tensor:
        """``sum_k weight_k * term_k`` per image over the configured terms of positive weight.

        Args:
            fused: ``(N, 1, H, W)``, float in [0, 1].
            sources: ``(N, S, H, W)``, float in [0, 1].

        Returns:
            ``(N,)`` (zeros without terms).
        """
        return self._weighted_sum(fused, sources)[0]

    def _weighted_sum(self, fused: torch.Tensor,
                      sources: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``sum_k weight_k * term_k`` per image and the unweighted terms it was made of."""
        active = [name for name, w in self.term_weights.items() if w > 0]
        values = self.term_values(fused, sources, active) if active else {}
        total = torch.zeros(fused.shape[0], dtype=working_dtype(fused, sources), device=fused.device)
        for name in active:
            total = total + self.term_weights[name] * values[name]
        return total, values

    def forward(self, fused: torch.Tensor, sources: torch.Tensor) -> torch.Tensor:
        """The loss: ``1 - mean over the batch of the weighted SSIM_alpha`` plus the mean weighted terms.

        Args:
            fused: network output ``(N, 1, H, W)``.
            sources: the network input ``(N, S, H, W)`` in [0, 1] (the target is the input itself).

        Returns:
            scalar tensor (float32 or wider).
        """
        fused_scored = straight_through_clip(fused) if self.clip else fused
        ssim_map, m = self._ssim_map_and_terms(fused_scored, sources)
        # the terms of this pass, kept for SSIMAlphaTermsHandler so that logging costs no second pass
        self.last_terms = self._term_means(ssim_map, m)
        self.forward_count += 1
        loss = 1.0 - self._weighted_map_mean(ssim_map, m).mean()
        self.last_added = {}
        if any(w > 0 for w in self.term_weights.values()):
            total, values = self._weighted_sum(fused_scored, sources)
            self.last_added = {name: v.detach().mean() for name, v in values.items()}
            loss = loss + total.mean()
        return loss

    @torch.no_grad()
    def ssim_terms(self, fused: torch.Tensor, sources: torch.Tensor) -> dict[str, torch.Tensor]:
        """Mean luminance, contrast and structure terms per source (before the exponents).

        Args:
            fused: ``(N, 1, H, W)``.
            sources: ``(N, S, H, W)``.

        Returns:
            ``{"luminance": (S,), "contrast": (S,), "structure": (S,), "ssim_alpha": (S,)}``, each
            averaged over the batch and the map.
        """
        return self._term_means(*self._ssim_map_and_terms(fused.detach(), sources.detach()))

    def extra_repr(self) -> str:
        """The settings, for ``print(loss)``."""
        weights = "variance" if self.adaptive else self.weights
        settings: dict[str, Any] = {"alpha": self.alpha, "weights": weights, "terms": self.term_weights,
                                    "clip": self.clip}
        return ", ".join(f"{k}={v}" for k, v in settings.items())
