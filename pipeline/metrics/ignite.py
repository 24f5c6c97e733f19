"""Ignite metric wrappers: fusion metrics reported by the bundle's evaluator every validation epoch.

:class:`FusionMetric` accumulates the per-image values of one registered metric over an epoch and
returns their mean. Its ``output_transform`` must return ``(fused, sources)`` as the evaluator
provides them: ``fused`` ``(N, 1, H, W)`` and ``sources`` ``(N, 2, H, W)`` (A then B), float in
[0, 1] like every library tensor. At this boundary they are clipped to [0, 1], multiplied by 255
and (by default) rounded to 8-bit levels, so that the values equal those of
``python -m pipeline metrics`` on the saved PNGs.

Metrics with a batched torch implementation run on the tensors' device: ``Q_Y``
(``structural.q_y_torch``), ``SSIM`` (``structural.ssim_torch``), ``Q_ABF``
(``gradient.q_abf_torch``) and every ``FMI_*`` (:func:`pipeline.metrics.fmi.fmi_torch`). Any
other registered name (or one of these when its torch version cannot be imported) is computed
with the numpy function, image by image, on the CPU.

Example::

    from pipeline.metrics.ignite import FusionMetric
    for name in ("Q_Y", "FMI_pixel", "Q_ABF"):
        FusionMetric(name, output_transform=lambda out: (out["pred"], out["image"])).attach(evaluator, name)
"""

from __future__ import annotations

import importlib
import math
from typing import Any, Callable, Mapping, Sequence

import torch
from ignite.exceptions import NotComputableError
from ignite.metrics import Metric
from ignite.metrics.metric import reinit__is_reduced, sync_all_reduce

from pipeline.metrics import MetricValueError, get_metric, get_spec

__all__ = ["FusionMetric", "TORCH_IMPLEMENTATIONS", "batched_metric"]

#: Batched torch versions: name -> (module, function, fixed keyword arguments).
TORCH_IMPLEMENTATIONS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "Q_Y": ("pipeline.metrics.structural", "q_y_torch", {}),
    "SSIM": ("pipeline.metrics.structural", "ssim_torch", {}),
    "Q_ABF": ("pipeline.metrics.gradient", "q_abf_torch", {}),
    **{f"FMI_{feature}": ("pipeline.metrics.fmi", "fmi_torch", {"feature": feature})
       for feature in ("pixel", "gradient", "edge", "dct", "wavelet")},
}


BatchedMetric = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def batched_metric(name: str, **options: Any) -> BatchedMetric:
    """The metric ``name`` on batches ``(N, 1, H, W)`` in 0..255, returning a ``(N,)`` tensor.

    Uses the torch implementation when there is one and it imports; otherwise the numpy
    function per image (on the CPU; the result is put on the inputs' device).

    Raises:
        UnknownMetricError: ``name`` is not in the vocabulary.
    """
    get_spec(name)
    if name in TORCH_IMPLEMENTATIONS:
        module_name, func_name, fixed = TORCH_IMPLEMENTATIONS[name]
        try:
            fn = getattr(importlib.import_module(module_name), func_name)
        except (ImportError, AttributeError):
            fn = None
        if fn is not None:
            return lambda a, b, f: fn(a, b, f, **fixed, **options)
    metric = get_metric(name)

    def per_image(a: torch.Tensor, b: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        arrays = [x[:, 0].detach().cpu().to(torch.float64).numpy() for x in (a, b, f)]
        values = [metric(ai, bi, fi, **options) for ai, bi, fi in zip(*arrays)]
        return torch.tensor(values, dtype=torch.float64, device=f.device)

    return per_image


class FusionMetric(Metric):
    """Mean of one fusion metric over the images of an epoch.

    Args:
        name: a registered metric name (``"Q_Y"``, ``"FMI_pixel"``, ``"Q_ABF"``, ...).
        output_transform: maps the engine's output to ``(fused, sources)``: ``(N, 1, H, W)`` and
            ``(N, 2, H, W)`` tensors in [0, 1].
        device: where the running sum lives (for distributed reduction).
        options: keyword arguments of the metric (e.g. ``{"flat": "canonical"}`` for ``Q_Y``).
        quantize: round the 0..255 images to integer levels, as saving them as 8-bit PNGs would
            (default True).

    Raises:
        UnknownMetricError: ``name`` is not in the vocabulary.
    """

    def __init__(
        self,
        name: str,
        output_transform: Callable[[Any], Any] = lambda x: x,
        device: str | torch.device = torch.device("cpu"),
        options: Mapping[str, Any] | None = None,
        quantize: bool = True,
    ) -> None:
        self.name = name
        self._fn = batched_metric(name, **dict(options or {}))
        self._quantize = quantize
        super().__init__(output_transform=output_transform, device=device)

    @reinit__is_reduced
    def reset(self) -> None:
        self._sum = torch.tensor(0.0, dtype=torch.float64, device=self._device)
        self._count = 0

    def _to_levels(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().to(torch.float64).clamp(0.0, 1.0) * 255.0
        return torch.round(x) if self._quantize else x

    @reinit__is_reduced
    def update(self, output: Sequence[torch.Tensor]) -> None:
        """Add one batch: ``output = (fused (N, 1, H, W), sources (N, 2, H, W))`` in [0, 1].

        Raises:
            ValueError: the shapes are not as above.
            MetricValueError: the metric returned NaN for an image.
        """
        if not (isinstance(output, Sequence) and len(output) == 2):
            raise ValueError(f"{self.name}: output_transform must return (fused, sources), "
                             f"got {type(output)}")
        fused, sources = output
        if fused.ndim != 4 or fused.shape[1] != 1 or sources.ndim != 4 or sources.shape[1] != 2 \
                or fused.shape[0] != sources.shape[0] or fused.shape[-2:] != sources.shape[-2:]:
            raise ValueError(f"{self.name}: expected fused (N, 1, H, W) and sources (N, 2, H, W) on one "
                             f"grid, got {tuple(fused.shape)} and {tuple(sources.shape)}")
        with torch.no_grad():
            f = self._to_levels(fused)
            s = self._to_levels(sources)
            values = self._fn(s[:, 0:1], s[:, 1:2], f)
        if torch.isnan(values).any():
            bad = torch.nonzero(torch.isnan(values)).flatten().tolist()
            raise MetricValueError(f"{self.name} returned NaN for batch item(s) {bad}")
        self._sum += values.sum().to(self._device)
        self._count += int(values.shape[0])

    @sync_all_reduce("_sum", "_count")
    def compute(self) -> float:
        """Mean over the images seen since the last reset.

        Raises:
            NotComputableError: no image was seen.
        """
        if self._count == 0:
            raise NotComputableError(f"{self.name} must have at least one example before it can be computed")
        value = float(self._sum.item()) / self._count
        if math.isnan(value):  # pragma: no cover - update() refuses NaN already
            raise MetricValueError(f"{self.name}: mean is NaN")
        return value

