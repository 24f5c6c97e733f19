"""The validation metric of the bundle: mean SSIM-alpha of the fused image against both sources.

An Ignite metric, so that MONAI's evaluators can use it as ``key_val_metric``; it reads the
engine output (``pred`` the network output, ``label`` the 2-channel input, both float in [0, 1]),
clips the prediction to [0, 1] as inference does, and averages the per-image weighted SSIM-alpha
of :class:`pipeline.losses.SSIMAlphaLoss` over the data set (``1 - loss`` on whole images). The
epoch mean, its distributed reduction and the engine-output forms it reads are those of every
project metric (:class:`pipeline.metrics.ignite.EpochMean`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from pipeline.losses import SSIMAlphaLoss
from pipeline.metrics.ignite import EpochMean, pred_and_sources

__all__ = ["SSIMAlphaMetric", "pred_and_sources"]


class SSIMAlphaMetric(EpochMean):
    """Mean over images of the weighted SSIM-alpha of the (clipped) fused image against its sources.

    Args:
        loss: the SSIM-alpha definition to use (its alpha, window, weights); default thesis settings.
        output_transform: from the engine output to ``(pred, sources)`` (see :func:`pred_and_sources`).
        clip: clip the prediction to [0, 1] first, as the fused image that inference writes.
        device: where the running sums live.
    """

    def __init__(
        self,
        loss: SSIMAlphaLoss | None = None,
        output_transform: Callable[[Any], Any] = pred_and_sources,
        clip: bool = True,
        device: str | torch.device = "cpu",
    ) -> None:
        self.loss = loss if loss is not None else SSIMAlphaLoss()
        self.clip = clip
        super().__init__("SSIMAlphaMetric", output_transform=output_transform, device=device)

    def per_image(self, fused: torch.Tensor, sources: torch.Tensor) -> torch.Tensor:
        """SSIM-alpha of each (clipped) prediction against its sources.

        Args:
            fused: ``(N, 1, H, W)`` network output, float.
            sources: ``(N, S, H, W)`` sources in [0, 1].

        Returns:
            ``(N,)`` values (float32, as the loss computes them).
        """
        pred = fused.clamp(0.0, 1.0) if self.clip else fused
        return self.loss.ssim(pred.float(), sources.float())
