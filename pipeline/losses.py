"""SSIM-alpha: the unsupervised fusion loss of the thesis, with its luminance, contrast and structure terms.

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

Second term (off by default, ``second_term="none"``: the thesis's loss exactly). The thesis names
an added term as future work; two are available, each scaled by ``second_weight`` and added to the
SSIM-alpha loss:

- ``"gradient"`` (edge preservation, as the texture loss of SwinFusion, Ma et al. 2022): the mean
  absolute difference between the Sobel gradient magnitude of the fused image and the per-pixel
  maximum of the sources' magnitudes, ``mean | |grad F| - max_i |grad S_i| |`` with
  ``|grad| = |G_x| + |G_y|`` (3x3 Sobel, 'valid' border). It asks every edge of either source to
  appear in the fused image at its full strength, which SSIM against each source separately does
  not: SSIM-alpha is maximised by a compromise that halves an edge present in one source only.
- ``"bgradient"`` (edge preservation as Q_ABF scores it): zero while ``|grad F|`` lies between
  ``GRADIENT_BAND`` (3/4) of ``max_i |grad S_i|`` and that maximum, the shortfall or excess beyond
  otherwise. Q_ABF's edge-strength factor is a steep sigmoid of the ratio of the two magnitudes
  (0.98 at a ratio of 3/4): an edge at three quarters of its strength scores almost as well as a
  full one, and ``"gradient"``'s demand for the full step is what turns the MRI's scalp beside the
  CT's white skull black.
- ``"sgradient"`` (pattern preservation): the mean absolute difference between the Sobel
  derivatives ``(G_x, G_y)`` of the fused image and those of the source whose gradient is the
  larger at that pixel, signs kept: ``mean |G_x F - G_x S_k| + |G_y F - G_y S_k|`` with
  ``k = argmax_i |grad S_i|``. Unlike ``"gradient"`` (magnitudes only) it asks for the dominant
  source's pixel-level pattern, which the 3x3 windows of FMI score.
- ``"fine"`` (pixel-scale structure): ``mean (1 - sum_i w_i cs_i)`` where ``cs_i`` is SSIM's
  contrast-structure factor of F against source i over *3x3 uniform* windows and ``w_i`` that
  source's share of the 3x3 variance. The 11x11 Gaussian SSIM barely sees a pattern of a few
  pixels; this term asks F to follow the locally dominant source pixel by pixel (the scale at
  which FMI compares images).
- ``"intensity"``: ``mean | F - max_i S_i |``, which keeps the brighter source's intensity (bone in
  CT, tracer in PET/SPECT) where an average would dim it.
- ``"mean"``: ``mean | F - mean_i S_i |``, an intensity anchor on the sources' average; it keeps
  flat regions (the background) at the sources' level, where the SSIM luminance term saturates
  (``l = C1 / (mu_F^2 + C1)`` is flat in ``mu_F`` once a dark background has drifted grey).
- ``"wmean"``: ``mean | F - sum_i w_i S_i |`` with ``w_i`` each source's share of the local
  variance over the loss's Gaussian window (the weights of ``weights="variance"``; pixels within
  half a window of the border are left out): the same anchor, but where one source is flat it
  anchors F on the other source itself, not on a half-strength copy. ``"mean"`` pulls such regions
  to the average while the SSIM term (with variance weights) and ``"gradient"`` pull them to the
  textured source; ``"wmean"`` agrees with both.

Terms combine with ``+`` (``"gradient+mean"``: their sum, times ``second_weight``).

Clipping (``clip=True``). The fused image that inference writes is the network output clipped to
[0, 1], so with ``clip`` the SSIM_alpha term scores that clipped image. Without it the optimum on a
black background is an output of exactly 0, a knife edge: any drift above 0 shows as grey (and
``l^alpha`` has almost no gradient to bring a grey background back), while any value below 0 is
clipped away for free. Scored clipped, every value below 0 is a perfect black background, so the
background settles below 0 with a margin. The second term scores the same clipped image (on the
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

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch.nn.modules.loss import _Loss

__all__ = ["SSIMAlphaLoss", "SECOND_TERMS", "GRADIENT_BAND", "gaussian_window", "signed_power",
           "sobel_gradients", "sobel_magnitude"]

#: ``"bgradient"``: the fraction of the sources' largest gradient magnitude to which the fused
#: image's may fall at no cost (Q_ABF's edge-strength sigmoid is 0.98 there).
GRADIENT_BAND = 0.75

#: Names of the optional second loss term (``"none"``: the thesis's SSIM-alpha loss alone).
SECOND_TERMS = ("none", "gradient", "bgradient", "intensity", "mean", "wmean", "sgradient", "fine")


def gaussian_window(win_size: int, sigma: float, dtype: torch.dtype = torch.float32,
                    device: torch.device | str | None = None) -> torch.Tensor:
    """The normalised 2D Gaussian window that MONAI's SSIM uses, shaped ``(1, 1, win, win)``.

    Args:
        win_size: window side (odd or even; MONAI centres it at ``(1 - win) / 2 .. (win - 1) / 2``).
        sigma: standard deviation in pixels.
        dtype: tensor dtype.
        device: tensor device.

    Returns:
        the window, summing to 1.
    """
    dist = torch.arange((1 - win_size) / 2, (1 + win_size) / 2, 1.0, dtype=torch.float64)
    g = torch.exp(-((dist / sigma) ** 2) / 2)
    g = g / g.sum()
    return torch.outer(g, g).to(dtype=dtype, device=device)[None, None]


def signed_power(t: torch.Tensor, p: float) -> torch.Tensor:
    """``sign(t) * |t| ** p``: the ordinary power for ``t >= 0``, sign-preserving below zero.

    Args:
        t: base.
        p: exponent (``p == 1`` returns ``t`` itself, keeping the graph minimal).

    Returns:
        tensor like ``t``.
    """
    if p == 1:
        return t
    return torch.sign(t) * t.abs().pow(p)


def sobel_gradients(images: torch.Tensor) -> torch.Tensor:
    """Sobel derivatives ``(G_x, G_y)`` of every channel, 'valid' border.

    Args:
        images: ``(N, C, H, W)`` float images (H, W >= 3).

    Returns:
        ``(N, C, 2, H - 2, W - 2)``: d/dx then d/dy.
    """
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=images.dtype,
                      device=images.device)
    kernels = torch.stack([kx, kx.T])[:, None]  # (2, 1, 3, 3)
    n, c, h, w = images.shape
    return F.conv2d(images.reshape(n * c, 1, h, w), kernels).reshape(n, c, 2, h - 2, w - 2)


def sobel_magnitude(images: torch.Tensor) -> torch.Tensor:
    """L1 Sobel gradient magnitude ``|G_x| + |G_y|`` of every channel, 'valid' border.

    Args:
        images: ``(N, C, H, W)`` float images in [0, 1] (H, W >= 3).

    Returns:
        ``(N, C, H - 2, W - 2)``; 0 on flat regions, at most 8 for images in [0, 1].
    """
    return sobel_gradients(images).abs().sum(dim=2)


class SSIMAlphaLoss(_Loss):
    """``1 - weighted mean over sources of mean SSIM_alpha(fused, source)``; see the module docstring.

    Inputs are float images in [0, 1] (``data_range`` 1.0), batch first:
    ``fused`` is ``(N, 1, H, W)`` and ``sources`` is ``(N, S, H, W)`` (the 2-channel network input, one
    channel per source). Both ``H`` and ``W`` must be at least ``win_size``.

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
        weight_sigma: for ``weights="variance"``, the standard deviation of the Gaussian window
            (same size) over which the variance shares are taken; ``None``: the SSIM window's
            ``sigma``. A narrower one keeps a strong edge of one source from claiming the windows
            of the other source's texture beside it.
        second_term: optional added term, one of :data:`SECOND_TERMS` or a ``+`` combination
            (see the module docstring); ``"none"`` (default) is the thesis's loss.
        second_weight: factor of the second term (ignored for ``"none"``).
        clip: score the fused image clipped to [0, 1] (what inference ships), in both terms, with a
            straight-through gradient (see the module docstring).

    Raises:
        ValueError: bad parameters (non-positive window, sigma or range, negative or all-zero
            weights, negative exponents, unknown second term or negative second weight).
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
        second_term: str = "none",
        second_weight: float = 0.0,
        clip: bool = False,
        weight_sigma: float | None = None,
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
        self.forward_count = 0
        self.win_size, self.sigma = int(win_size), float(sigma)
        self.k1, self.k2, self.data_range = float(k1), float(k2), float(data_range)
        self.c1 = (self.k1 * self.data_range) ** 2
        self.c2 = (self.k2 * self.data_range) ** 2
        self.c3 = self.c2 / 2
        self.weights = tuple(w)
        second_term = str(second_term).lower().replace(" ", "") if second_term is not None else "none"
        parts = tuple(dict.fromkeys(second_term.split("+")))
        if any(p not in SECOND_TERMS for p in parts) or ("none" in parts and len(parts) > 1):
            raise ValueError(f"SSIMAlphaLoss: second_term must be one of {SECOND_TERMS} or a '+' "
                             f"combination of them, got {second_term!r}")
        self._second_parts = () if parts == ("none",) else parts
        if second_weight < 0:
            raise ValueError(f"SSIMAlphaLoss: second_weight must be >= 0, got {second_weight}")
        self.second_term, self.second_weight = second_term, float(second_weight)
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

    def _stats(self, fused: torch.Tensor, sources: torch.Tensor,
               window: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """Local means, biased variances and covariance, each ``(N, S, H', W')`` ('valid' window).

        ``window`` is a normalised ``(1, 1, k, k)`` kernel; default the loss's Gaussian window.
        """
        dtype = torch.promote_types(torch.promote_types(fused.dtype, sources.dtype), torch.float32)
        x = fused.to(dtype).expand_as(sources)
        y = sources.to(dtype)
        n_src = y.shape[1]
        if window is None:
            window = gaussian_window(self.win_size, self.sigma, dtype, y.device)
        win = window.to(dtype=dtype, device=y.device).expand(n_src, 1, -1, -1)

        def blur(t: torch.Tensor) -> torch.Tensor:
            return F.conv2d(t, win, groups=n_src)

        mu_x, mu_y = blur(x), blur(y)
        var_x = blur(x * x) - mu_x * mu_x
        var_y = blur(y * y) - mu_y * mu_y
        cov = blur(x * y) - mu_x * mu_y
        return mu_x, mu_y, var_x, var_y, cov

    def _maps(self, fused: torch.Tensor, sources: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.autocast(device_type=sources.device.type, enabled=False):
            mu_x, mu_y, var_x, var_y, cov = self._stats(fused, sources)
            lum = (2 * mu_x * mu_y + self.c1) / (mu_x * mu_x + mu_y * mu_y + self.c1)
            denom = var_x + var_y + self.c2
            cs = (2 * cov + self.c2) / denom  # = c * s exactly, because C3 = C2 / 2
            # sigma_x sigma_y without sqrt of a (possibly rounding-negative) variance; the clamp floor
            # keeps the derivative of sqrt finite and only matters where a window is flat.
            sxsy = torch.sqrt((var_x.clamp_min(0) * var_y.clamp_min(0)).clamp_min(1e-20))
            con = (2 * sxsy + self.c2) / denom
            var_w = var_y
            if self.adaptive and self.weight_sigma is not None and self.weight_sigma != self.sigma:
                var_w = self._source_variance(sources, gaussian_window(self.win_size, self.weight_sigma))
            return {"l": lum, "c": con, "cs": cs, "s": cs / con, "var_w": var_w.detach()}

    def _source_variance(self, sources: torch.Tensor, window: torch.Tensor | None = None) -> torch.Tensor:
        """Local variance of each source ``(N, S, H', W')`` over ``window`` (default the loss's)."""
        return self._stats(sources[:, :1], sources, window)[3]

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

    def _ssim_map_and_terms(self, fused: torch.Tensor, sources: torch.Tensor) -> tuple[torch.Tensor, dict]:
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
    def _term_means(ssim_map: torch.Tensor, m: dict) -> dict[str, torch.Tensor]:
        out = {name: m[key].detach().mean(dim=(0, 2, 3)) for name, key in
               (("luminance", "l"), ("contrast", "c"), ("structure", "s"))}
        out["ssim_alpha"] = ssim_map.detach().mean(dim=(0, 2, 3))
        return out

    def window_weights(self, m: dict) -> torch.Tensor | None:
        """Per-window source weights ``(N, S, H', W')`` summing to 1 over S for ``weights="variance"``,
        else None (fixed weights)."""
        if not self.adaptive:
            return None
        return self._variance_shares(m["var_w"])

    def _variance_shares(self, var: torch.Tensor) -> torch.Tensor:
        """Each source's share of the summed local variance ``(N, S, ...)``, summing to 1 over S."""
        var = var.clamp_min(0)
        total = var.sum(dim=1, keepdim=True)
        # every source flat in the window (std below 1e-3 of the range: float32 round-off of a
        # constant is ~1e-8): equal weights
        floor = 1e-6 * self.data_range ** 2
        flat = total <= floor
        return torch.where(flat, torch.full_like(var, 1.0 / var.shape[1]), var / total.clamp_min(floor))

    def _fine_cs(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Contrast-structure of F against each source over 3x3 uniform windows, averaged over the
        sources with their 3x3 variance shares: ``(N, 1, H-2, W-2)``."""
        _, _, vx, vy, cov = self._stats(x, y, torch.full((1, 1, 3, 3), 1.0 / 9))
        vy = vy.clamp_min(0)
        cs = (2 * cov + self.c2) / (vx + vy + self.c2)
        return (self._variance_shares(vy.detach()) * cs).sum(dim=1, keepdim=True)

    def _wmean_error(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``F - sum_i w_i S_i`` per pixel with Gaussian-window variance shares ``w_i`` (no gradient
        through them), on the pixels whose window lies inside the image: ``(N, 1, H', W')``."""
        vy = self._source_variance(y.detach())
        r = self.win_size // 2
        h, w = vy.shape[-2:]
        target = (self._variance_shares(vy) * y[..., r:r + h, r:r + w]).sum(dim=1, keepdim=True)
        return x[..., r:r + h, r:r + w] - target

    def _weighted_map_mean(self, ssim_map: torch.Tensor, m: dict) -> torch.Tensor:
        """Per image ``(N,)``: the source-weighted SSIM_alpha averaged over the map."""
        w = self.window_weights(m)
        if w is None:
            return self._weighted(ssim_map.mean(dim=(2, 3)))
        return (ssim_map * w).sum(dim=1).mean(dim=(1, 2))

    def ssim_per_source(self, fused: torch.Tensor, sources: torch.Tensor) -> torch.Tensor:
        """Mean SSIM_alpha per image and source, ``(N, S)``."""
        return self.ssim_map(fused, sources).mean(dim=(2, 3))

    def ssim(self, fused: torch.Tensor, sources: torch.Tensor) -> torch.Tensor:
        """Weighted mean SSIM_alpha over the sources, per image, ``(N,)`` (``1 - ssim`` is the loss)."""
        return self._weighted_map_mean(*self._ssim_map_and_terms(fused, sources))

    def _weighted(self, per: torch.Tensor) -> torch.Tensor:
        w = torch.tensor(self.weights, dtype=torch.float64).to(per.device)
        return (per * w.to(per.dtype)).sum(dim=1) / w.sum().to(per.dtype)

    def second(self, fused: torch.Tensor, sources: torch.Tensor) -> torch.Tensor:
        """The unweighted second term per image, ``(N,)`` (zeros for ``second_term="none"``).

        Args:
            fused: ``(N, 1, H, W)``, float in [0, 1].
            sources: ``(N, S, H, W)``, float in [0, 1].

        Returns:
            per image, the sum of the configured terms: mean absolute error of the gradient
            magnitude (``"gradient"``) or the intensity (``"intensity"``) against the per-pixel
            maximum of the sources, or of the intensity against their mean (``"mean"``) or their
            variance-weighted mean (``"wmean"``); see the module docstring for each term.
        """
        self._check(fused, sources)
        with torch.autocast(device_type=sources.device.type, enabled=False):
            dtype = torch.promote_types(torch.promote_types(fused.dtype, sources.dtype), torch.float32)
            x, y = fused.to(dtype), sources.to(dtype)
            total = torch.zeros(x.shape[0], dtype=dtype, device=x.device)
            for part in self._second_parts:
                if part == "gradient":
                    err = sobel_magnitude(x) - sobel_magnitude(y).amax(dim=1, keepdim=True)
                elif part == "bgradient":
                    gf, gmax = sobel_magnitude(x), sobel_magnitude(y).amax(dim=1, keepdim=True)
                    err = F.relu(GRADIENT_BAND * gmax - gf) + F.relu(gf - gmax)
                elif part == "sgradient":
                    gf, gs = sobel_gradients(x), sobel_gradients(y)  # (N, C, 2, H', W')
                    pick = gs.abs().sum(dim=2, keepdim=True).argmax(dim=1, keepdim=True)
                    target = torch.gather(gs, 1, pick.expand(-1, 1, 2, -1, -1))
                    err = (gf - target).abs().sum(dim=2)
                elif part == "fine":
                    err = 1.0 - self._fine_cs(x, y)
                elif part == "intensity":
                    err = x - y.amax(dim=1, keepdim=True)
                elif part == "wmean":
                    err = self._wmean_error(x, y)
                else:  # "mean"
                    err = x - y.mean(dim=1, keepdim=True)
                total = total + err.abs().mean(dim=(1, 2, 3))
            return total

    def forward(self, fused: torch.Tensor, sources: torch.Tensor) -> torch.Tensor:
        """The loss, a scalar: ``1 - mean over the batch of the weighted SSIM_alpha``, plus
        ``second_weight`` times the mean second term when one is configured.

        Args:
            fused: network output ``(N, 1, H, W)``.
            sources: the network input ``(N, S, H, W)`` in [0, 1] (the target is the input itself).

        Returns:
            scalar tensor (float32 or wider).
        """
        if self.clip:  # scored clipped, differentiated as if not (straight-through): no dead pixels
            fused_scored = fused + (fused.clamp(0, 1) - fused).detach()
        else:
            fused_scored = fused
        ssim_map, m = self._ssim_map_and_terms(fused_scored, sources)
        # the terms of this pass, kept for SSIMAlphaTermsHandler so that logging costs no second pass
        self.last_terms = self._term_means(ssim_map, m)
        self.forward_count += 1
        loss = 1.0 - self._weighted_map_mean(ssim_map, m).mean()
        if self._second_parts and self.second_weight > 0:
            loss = loss + self.second_weight * self.second(fused_scored, sources).mean()
        return loss

    @torch.no_grad()
    def terms(self, fused: torch.Tensor, sources: torch.Tensor) -> dict[str, torch.Tensor]:
        """Mean luminance, contrast and structure terms per source (before the exponents).

        Args:
            fused: ``(N, 1, H, W)``.
            sources: ``(N, S, H, W)``.

        Returns:
            ``{"luminance": (S,), "contrast": (S,), "structure": (S,), "ssim_alpha": (S,)}``, each
            averaged over the batch and the map.
        """
        return self._term_means(*self._ssim_map_and_terms(fused.detach(), sources.detach()))
