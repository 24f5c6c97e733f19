"""Fusion quality metrics by name: the registry shared by the CLI, the benchmark and the evaluator.

Every metric scores a fused image F against its two sources A and B and returns a float. Names
are the project vocabulary (CLI, CSV columns, MLflow keys)::

    Q_MI Q_NCIE Q_G Q_P Q_E Q_Y Q_CB Q_CV Q_ABF FMI_pixel FMI_gradient FMI_edge FMI_dct
    FMI_wavelet MI EN SD SF AG EI SCD VIF SSIM PSNR RMSE CE

Images are **0..255** (``uint8`` or float), as in the reference MATLAB toolboxes; the library's
images are float in [0, 1] and must be multiplied by 255 at this boundary. Each name maps to a
``"module:function"`` string imported only when the metric is first used, so importing this
package is cheap and a family module can be absent until it is needed.

Layers: :mod:`pipeline.metrics.registry` holds the records (:class:`MetricSpec`: function,
direction, torch version, reference, colour rule, options) and the project's computation;
:mod:`pipeline.metrics.conventions` builds other evaluators' tables on it; this package re-exports
the registry's public names and dispatches :func:`compute_metrics` to one or the other.

Adding a metric takes three files: its function (a new module here, or a family module), one
``_spec(...)`` entry in :data:`pipeline.metrics.registry.METRICS` (target, summary, reference,
direction, and a torch version if it has one), and one test. The CLI's ``--help``, the
benchmark's best-of rule and the evaluator's ``FusionMetric`` then know it.

Colour (``compute_metrics(..., colour=...)``):

- ``"y"`` (default; the medical fusion papers): a colour ``(H, W, 3)`` image (PET/SPECT source, or
  a colour fused image) is reduced to the Y channel of :func:`pipeline.colour.rgb_to_ycbcr`
  (full-range BT.601), rounded to 8-bit levels 0..255; gray images are used as they are.
- ``"per-channel"`` (VIFB): when any image is colour, each metric is computed on the R, G and B
  channels (a gray image standing for all three) and the three values averaged, as VIFB's
  MATLAB code does. The VIFB statistics (``EN SD SF AG EI SCD PSNR RMSE``) receive the RGB arrays
  themselves and apply VIFB's own rule, which for ``SF`` is not a channel average (see
  :func:`pipeline.metrics.statistics.spatial_frequency`).

Conventions (``compute_metrics(..., convention=...)``): ``"project"`` (default) is the vocabulary
above; ``"cddfuse"`` and ``"vifb"`` print another evaluator's columns, under its names and in its
order, computed its way (image reading, colour, units): see :mod:`pipeline.metrics.conventions`.

NaN is never silent: a metric value that is NaN raises :class:`MetricValueError` naming the metric
(``nan_policy="warn"`` keeps it with a warning instead). ``PSNR`` may be ``inf`` (F equals both
sources), which is a perfect score, not a missing one.
"""

from __future__ import annotations

from typing import Any, Literal, Mapping, Sequence

import numpy as np

from pipeline.metrics.registry import (
    COLOUR_MODES,
    DEFAULT_METRICS,
    METRIC_NAMES,
    METRICS,
    ColourMode,
    MetricSpec,
    MetricValueError,
    UnknownMetricError,
    compute_project,
    get_metric,
    get_spec,
    to_gray_y,
)

__all__ = [
    "METRICS",
    "METRIC_NAMES",
    "DEFAULT_METRICS",
    "COLOUR_MODES",
    "MetricSpec",
    "UnknownMetricError",
    "MetricValueError",
    "get_metric",
    "get_spec",
    "compute_metrics",
    "to_gray_y",
]


def compute_metrics(
    a: np.ndarray,
    b: np.ndarray,
    f: np.ndarray,
    names: Sequence[str] | None = None,
    colour: ColourMode | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    nan_policy: Literal["raise", "warn"] = "raise",
    convention: str = "project",
) -> dict[str, float]:
    """Compute several metrics of one fused image.

    Args:
        a: first source, ``(H, W)`` or ``(H, W, 3)``, 0..255 (``uint8`` or float).
        b: second source, same height and width.
        f: fused image, same height and width.
        names: metric names (default :data:`DEFAULT_METRICS`, the whole vocabulary); with another
            convention, its column names (default: all of them, in its order).
        colour: ``"y"`` (default) or ``"per-channel"`` (see the module docstring); irrelevant when
            all three images are gray. Another convention fixes its own colour handling: leave
            this ``None`` (or give that same mode).
        options: per-metric keyword arguments, e.g. ``{"Q_Y": {"flat": "canonical"}}`` (with
            another convention: keyed by its column names).
        nan_policy: ``"raise"`` (default) raises :class:`MetricValueError` on a NaN value;
            ``"warn"`` keeps the NaN and emits a RuntimeWarning.
        convention: ``"project"`` (default), ``"cddfuse"`` or ``"vifb"``; see
            :mod:`pipeline.metrics.conventions`.

    Returns:
        ``{name: value}`` in the order of ``names``.

    Raises:
        UnknownMetricError: a name is not in the vocabulary (checked before any computation).
        ValueError: bad images (shape, grid, NaN pixels), bad colour mode, options or convention
            (:class:`pipeline.metrics.conventions.UnknownConventionError` lists the valid names).
        MetricValueError: a metric returned NaN and ``nan_policy`` is ``"raise"``.
    """
    if convention != "project":
        from pipeline.metrics.conventions import compute_convention, get_convention

        conv = get_convention(convention)
        if colour is not None and colour != conv.colour:
            raise ValueError(f"the {conv.name} convention scores colour its own way ({conv.colour!r}); "
                             f"leave colour unset instead of {colour!r}")
        return compute_convention(a, b, f, conv.name, names, options, nan_policy)
    return compute_project(a, b, f, names, "y" if colour is None else colour, options, nan_policy)
