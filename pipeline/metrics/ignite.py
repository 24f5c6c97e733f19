"""Ignite metrics: per-image values averaged over an epoch, for the bundle's trainer and evaluator.

:class:`EpochMean` is the one base: it reads ``(fused, sources)`` from the engine output
(:func:`pred_and_sources`), asks its subclass for one value per image, keeps a float64 running sum
and count (reduced over processes by ``sync_all_reduce``) and returns their mean, raising
``NotComputableError`` when no image was seen. Two metrics build on it: :class:`FusionMetric`
here, and the bundle's validation metric :class:`pipeline.validation.SSIMAlphaMetric`.

:class:`FusionMetric` averages one registered metric. The engine output gives ``fused``
``(N, 1, H, W)`` and ``sources`` ``(N, 2, H, W)`` (A then B), float in [0, 1] like every library
tensor. At this boundary they are clipped to [0, 1], multiplied by 255 and (by default) rounded to
8-bit levels, so that the values equal those of ``python -m pipeline metrics`` on the saved PNGs.

A metric whose spec names a batched torch version (:attr:`pipeline.metrics.MetricSpec.torch`:
``Q_Y``, ``SSIM``, ``Q_ABF`` and every ``FMI_*`` today) runs on the tensors' device. Any other
registered name (or one of these when its torch version cannot be imported) is computed with the
numpy function, image by image, on the CPU.

Example::

    from pipeline.metrics.ignite import FusionMetric
    for name in ("Q_Y", "FMI_pixel", "Q_ABF"):
        FusionMetric(name, output_transform=lambda out: (out["pred"], out["image"])).attach(evaluator, name)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from ignite.exceptions import NotComputableError
from ignite.metrics import Metric
from ignite.metrics.metric import reinit__is_reduced, sync_all_reduce

from pipeline.metrics.registry import MetricValueError, get_metric, get_spec

__all__ = ["EpochMean", "FusionMetric", "batched_metric", "pred_and_sources"]

BatchedMetric = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def pred_and_sources(output: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(pred, sources)`` as batched tensors from a MONAI engine output.

    Accepts the batched dict (``decollate=False``), a decollated list of per-image dicts, or a
    ``(pred, sources)`` pair (of tensors, or of lists of per-image tensors).

    Args:
        output: the engine output, or what an ``output_transform`` made of it.

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


class EpochMean(Metric):
    """Mean over the images of an epoch of a value per image; subclasses define the value.

    The running sum is float64 and lives on ``device``; ``compute`` reduces sum and count over
    the processes of a distributed run before dividing, so every rank reports the mean over all
    images, not over its shard.

    Args:
        label: the metric's name in error messages.
        output_transform: from the engine output to something :func:`pred_and_sources` reads
            (default: the engine output itself).
        device: where the running sum lives.
    """

    def __init__(
        self,
        label: str,
        output_transform: Callable[[Any], Any] = pred_and_sources,
        device: str | torch.device = "cpu",
    ) -> None:
        self.label = label
        super().__init__(output_transform=output_transform, device=device)

    def per_image(self, fused: torch.Tensor, sources: torch.Tensor) -> torch.Tensor:
        """The value of each image of a batch (called without gradients).

        Args:
            fused: ``(N, 1, H, W)`` network output or fused image, float in [0, 1] (unclipped).
            sources: ``(N, S, H, W)`` sources, float in [0, 1].

        Returns:
            ``(N,)`` tensor of values.
        """
        raise NotImplementedError

    @reinit__is_reduced
    def reset(self) -> None:
        """Start an epoch: no image seen."""
        self._sum = torch.tensor(0.0, dtype=torch.float64, device=self._device)
        self._count = 0

    @reinit__is_reduced
    def update(self, output: Any) -> None:
        """Add one batch of the engine output (see :func:`pred_and_sources` for its forms).

        Args:
            output: what ``output_transform`` returned for one iteration.
        """
        fused, sources = pred_and_sources(output)
        with torch.no_grad():
            values = self.per_image(fused, sources)
        self._sum += values.detach().to(torch.float64).sum().to(self._device)
        self._count += int(values.numel())

    @sync_all_reduce("_sum", "_count")
    def compute(self) -> float:
        """Mean over the images seen since the last reset, over every process.

        Returns:
            the mean.

        Raises:
            NotComputableError: no image was seen (a ``RuntimeError``).
        """
        if self._count == 0:
            raise NotComputableError(f"{self.label}: no images were seen since the last reset; "
                                     "is the validation split empty?")
        return float(self._sum.item()) / self._count


def batched_metric(name: str, **options: Any) -> BatchedMetric:
    """The metric ``name`` on batches ``(N, 1, H, W)`` in 0..255, returning a ``(N,)`` tensor.

    Uses the spec's torch version when there is one and it imports; otherwise the numpy
    function per image (on the CPU; the result is put on the inputs' device).

    Args:
        name: a registered metric name.
        options: keyword arguments of the metric, over the spec's defaults.

    Returns:
        ``fn(a, b, f) -> values``.

    Raises:
        UnknownMetricError: ``name`` is not in the vocabulary.
    """
    spec = get_spec(name)
    try:
        fn = spec.load_torch()
    except ImportError:
        fn = None
    if fn is not None:
        kwargs = {**spec.options, **spec.torch_options, **options}
        return lambda a, b, f: fn(a, b, f, **kwargs)
    metric = get_metric(name)

    def per_image(a: torch.Tensor, b: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        arrays = [x[:, 0].detach().cpu().to(torch.float64).numpy() for x in (a, b, f)]
        values = [metric(ai, bi, fi, **options) for ai, bi, fi in zip(*arrays)]
        return torch.tensor(values, dtype=torch.float64, device=f.device)

    return per_image


class FusionMetric(EpochMean):
    """Mean of one registered fusion metric over the images of an epoch.

    Args:
        name: a registered metric name (``"Q_Y"``, ``"FMI_pixel"``, ``"Q_ABF"``, ...).
        output_transform: maps the engine's output to ``(fused, sources)``: ``(N, 1, H, W)`` and
            ``(N, 2, H, W)`` tensors in [0, 1] (or any form :func:`pred_and_sources` reads).
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
        output_transform: Callable[[Any], Any] = pred_and_sources,
        device: str | torch.device = torch.device("cpu"),
        options: Mapping[str, Any] | None = None,
        quantize: bool = True,
    ) -> None:
        self.name = name
        self._fn = batched_metric(name, **dict(options or {}))
        self._quantize = quantize
        super().__init__(name, output_transform=output_transform, device=device)

    def _to_levels(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 1] tensor -> 0..255 (rounded to 8-bit levels unless ``quantize`` is off)."""
        x = x.detach().to(torch.float64).clamp(0.0, 1.0) * 255.0
        return torch.round(x) if self._quantize else x

    def per_image(self, fused: torch.Tensor, sources: torch.Tensor) -> torch.Tensor:
        """The metric of each fused image against its two sources, on 8-bit levels.

        Args:
            fused: ``(N, 1, H, W)`` in [0, 1].
            sources: ``(N, 2, H, W)`` in [0, 1], A then B, on the same grid.

        Returns:
            ``(N,)`` float64 values.

        Raises:
            ValueError: the shapes are not as above.
            MetricValueError: the metric returned NaN for an image.
        """
        if fused.ndim != 4 or fused.shape[1] != 1 or sources.ndim != 4 or sources.shape[1] != 2 \
                or fused.shape[0] != sources.shape[0] or fused.shape[-2:] != sources.shape[-2:]:
            raise ValueError(f"{self.name}: expected fused (N, 1, H, W) and sources (N, 2, H, W) on one "
                             f"grid, got {tuple(fused.shape)} and {tuple(sources.shape)}")
        f = self._to_levels(fused)
        s = self._to_levels(sources)
        values = self._fn(s[:, 0:1], s[:, 1:2], f)
        if torch.isnan(values).any():
            bad = torch.nonzero(torch.isnan(values)).flatten().tolist()
            raise MetricValueError(f"{self.name} returned NaN for batch item(s) {bad}")
        return values
