"""Shared pieces of the SSIM-alpha loss and its added terms: windows, local statistics, Sobel, shares.

Images are float tensors in [0, 1] (the library's convention), batch first, ``(N, C, H, W)``.
Every function keeps the operation order of the loss it was taken out of, so that the loss's value
does not change with the refactoring.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["LossWindow", "gaussian_window", "signed_power", "sobel_gradients", "sobel_magnitude",
           "local_stats", "source_variance", "variance_shares", "working_dtype"]


@dataclass(frozen=True)
class LossWindow:
    """The local-statistics settings that the SSIM-alpha loss and its added terms share.

    Args:
        win_size: side of the Gaussian window.
        sigma: standard deviation of the Gaussian window (pixels).
        k1: luminance constant, ``C1 = (k1 * data_range) ** 2``.
        k2: contrast constant, ``C2 = (k2 * data_range) ** 2``.
        data_range: dynamic range of the images (1.0 for [0, 1] images).
    """

    win_size: int = 11
    sigma: float = 1.5
    k1: float = 0.01
    k2: float = 0.03
    data_range: float = 1.0

    @property
    def c1(self) -> float:
        """``(k1 * data_range) ** 2``."""
        return (self.k1 * self.data_range) ** 2

    @property
    def c2(self) -> float:
        """``(k2 * data_range) ** 2``."""
        return (self.k2 * self.data_range) ** 2

    def kernel(self, dtype: torch.dtype = torch.float32,
               device: torch.device | str | None = None) -> torch.Tensor:
        """The normalised Gaussian window ``(1, 1, win, win)``.

        Args:
            dtype: tensor dtype.
            device: tensor device.

        Returns:
            the window, summing to 1.
        """
        return gaussian_window(self.win_size, self.sigma, dtype, device)


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


def working_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """The dtype the loss computes in: the inputs' promoted dtype, at least float32.

    Args:
        tensors: the inputs.

    Returns:
        float32 or wider.
    """
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(t.dtype, dtype)
    return dtype


def local_stats(fused: torch.Tensor, sources: torch.Tensor,
                window: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Local means, biased variances and covariance under a window, 'valid' border.

    Args:
        fused: ``(N, 1, H, W)`` (broadcast against every source).
        sources: ``(N, S, H, W)``.
        window: a normalised ``(1, 1, k, k)`` kernel.

    Returns:
        ``mu_x, mu_y, var_x, var_y, cov``, each ``(N, S, H - k + 1, W - k + 1)``, in
        :func:`working_dtype` of the inputs.
    """
    dtype = torch.promote_types(torch.promote_types(fused.dtype, sources.dtype), torch.float32)
    x = fused.to(dtype).expand_as(sources)
    y = sources.to(dtype)
    n_src = y.shape[1]
    win = window.to(dtype=dtype, device=y.device).expand(n_src, 1, -1, -1)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, win, groups=n_src)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x * mu_x
    var_y = blur(y * y) - mu_y * mu_y
    cov = blur(x * y) - mu_x * mu_y
    return mu_x, mu_y, var_x, var_y, cov


def source_variance(sources: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Local variance of each source over ``window``.

    Args:
        sources: ``(N, S, H, W)``.
        window: a normalised ``(1, 1, k, k)`` kernel.

    Returns:
        ``(N, S, H - k + 1, W - k + 1)``.
    """
    return local_stats(sources[:, :1], sources, window)[3]


def variance_shares(var: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Each source's share of the summed local variance, Q_Y's saliency rule.

    Where every source is flat (local std below 1e-3 of the range, far above the float32 round-off
    of a constant) the shares are equal.

    Args:
        var: local variances ``(N, S, ...)``.
        data_range: dynamic range of the images.

    Returns:
        tensor like ``var``, summing to 1 over S.
    """
    var = var.clamp_min(0)
    total = var.sum(dim=1, keepdim=True)
    floor = 1e-6 * data_range ** 2
    flat = total <= floor
    return torch.where(flat, torch.full_like(var, 1.0 / var.shape[1]), var / total.clamp_min(floor))
