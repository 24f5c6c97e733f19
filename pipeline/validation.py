"""The validation metric of the bundle: mean SSIM-alpha of the fused image against both sources.

An Ignite metric, so that MONAI's evaluators can use it as ``key_val_metric``; it reads the
engine output (``pred`` the network output, ``label`` the 2-channel input, both float in [0, 1]),
clips the prediction to [0, 1] as inference does, and averages the per-image weighted SSIM-alpha
of :class:`pipeline.losses.SSIMAlphaLoss` over the data set (``1 - loss`` on whole images).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from ignite.metrics import Metric
from ignite.metrics.metric import reinit__is_reduced, sync_all_reduce

from pipeline.losses import SSIMAlphaLoss

__all__ = ["SSIMAlphaMetric", "pred_and_sources"]


def pred_and_sources(output: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(pred, sources)`` as batched tensors from a MONAI engine output.

    Accepts the batched dict (``decollate=False``), a decollated list of per-image dicts, or a
    ``(pred, sources)`` pair.

    Returns:
        ``pred`` ``(N, 1, H, W)`` and ``sources`` ``(N, S, H, W)``.

    Raises:
        ValueError: the output holds neither form.
    """
    if isinstance(output, Mapping):
        pred, src = output["pred"], output["label"]
    elif isinstance(output, Sequence) and output and isinstance(output[0], Mapping):
        pred = torch.stack([torch.as_tensor(o["pred"]) for o in output])
        src = torch.stack([torch.as_tensor(o["label"]) for o in output])
    elif isinstance(output, Sequence) and len(output) == 2:
        pred, src = output
        if isinstance(pred, Sequence):
            pred, src = torch.stack(list(pred)), torch.stack(list(src))
    else:
        raise ValueError(f"cannot find pred and label in an engine output of type {type(output).__name__}")
    pred, src = torch.as_tensor(pred), torch.as_tensor(src)
    if pred.ndim == 3:  # one decollated image
        pred, src = pred[None], src[None]
    return pred, src


class SSIMAlphaMetric(Metric):
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
        super().__init__(output_transform=output_transform, device=device)

    @reinit__is_reduced
    def reset(self) -> None:
        self._sum = torch.tensor(0.0, dtype=torch.float64, device=self._device)
        self._count = 0

    @reinit__is_reduced
    def update(self, output: Any) -> None:
        pred, src = pred_and_sources(output)
        if self.clip:
            pred = pred.clamp(0.0, 1.0)
        with torch.no_grad():
            values = self.loss.ssim(pred.float(), src.float())
        self._sum += values.double().sum().to(self._device)
        self._count += int(values.numel())

    @sync_all_reduce("_sum", "_count")
    def compute(self) -> float:
        if self._count == 0:
            raise RuntimeError("SSIMAlphaMetric: no images were seen; is the validation split empty?")
        return float(self._sum.item() / self._count)
