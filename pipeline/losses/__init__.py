"""The fusion loss: SSIM-alpha (the thesis) and a registry of added terms, one small function each.

- :mod:`pipeline.losses.ssim_alpha`: :class:`SSIMAlphaLoss`, ``1 - SSIM_alpha`` against each
  source, with its options (source weights, clipped scoring) and ``terms={name: weight}``.
- :mod:`pipeline.losses.terms`: the added terms (:data:`TERMS`) and :func:`register_term`.
- :mod:`pipeline.losses.kernels`: windows, local statistics, Sobel, variance shares.

Images are float tensors in [0, 1].
"""

from __future__ import annotations

from pipeline.losses.kernels import (LossWindow, gaussian_window, local_stats, signed_power, sobel_gradients,
                                     sobel_magnitude, variance_shares)
from pipeline.losses.ssim_alpha import SSIMAlphaLoss, straight_through_clip
from pipeline.losses.terms import GRADIENT_BAND, TERMS, legacy_terms, parse_terms, register_term

__all__ = ["SSIMAlphaLoss", "TERMS", "GRADIENT_BAND", "LossWindow", "register_term", "parse_terms",
           "legacy_terms", "straight_through_clip", "gaussian_window", "local_stats", "signed_power",
           "sobel_gradients", "sobel_magnitude", "variance_shares"]
