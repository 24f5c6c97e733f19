"""Fusion quality metrics by name: the registry shared by the CLI, the benchmark and the evaluator.

Every metric scores a fused image F against its two sources A and B and returns a float. Names
are the project vocabulary (CLI, CSV columns, MLflow keys)::

    Q_MI Q_NCIE Q_G Q_P Q_E Q_Y Q_CB Q_CV Q_ABF FMI_pixel FMI_gradient FMI_edge FMI_dct
    FMI_wavelet MI EN SD SF AG EI SCD VIF SSIM PSNR RMSE CE

Images are **0..255** (``uint8`` or float), as in the reference MATLAB toolboxes; the library's
images are float in [0, 1] and must be multiplied by 255 at this boundary. Each name maps to a
``"module:function"`` string imported only when the metric is first used, so importing this
package is cheap and a family module can be absent until it is needed.

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

import difflib
import importlib
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping, Sequence

import numpy as np

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

ColourMode = Literal["y", "per-channel"]
#: Accepted values of ``compute_metrics(..., colour=...)``.
COLOUR_MODES: tuple[str, ...] = ("y", "per-channel")


class UnknownMetricError(ValueError):
    """A metric name outside the vocabulary; the message lists the valid names."""


class MetricValueError(ValueError):
    """A metric returned NaN (never passed on silently)."""


@dataclass(frozen=True)
class MetricSpec:
    """One registered metric.

    Attributes:
        name: the vocabulary name (``"Q_Y"``).
        target: ``"package.module:function"``, imported on first use.
        uses_sources: False for no-reference statistics called as ``fn(fused)``; True for
            ``fn(a, b, fused)``.
        rgb_native: in ``"per-channel"`` colour mode the function takes the ``(H, W, 3)`` arrays
            and applies VIFB's own colour rule, instead of being averaged over channels here.
        options: default keyword arguments passed to the function.
        summary: one line for help texts.
    """

    name: str
    target: str
    uses_sources: bool = True
    rgb_native: bool = False
    options: Mapping[str, Any] = field(default_factory=dict)
    summary: str = ""

    def load(self) -> Callable[..., float]:
        """Import and return the implementing function.

        Raises:
            ImportError: the module or function is missing (message names the target).
        """
        module_name, _, func_name = self.target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise ImportError(f"metric {self.name}: cannot import {module_name} ({err})") from err
        try:
            return getattr(module, func_name)
        except AttributeError as err:
            raise ImportError(f"metric {self.name}: {module_name} has no function {func_name}") from err


def _spec(name: str, target: str, summary: str, **kwargs: Any) -> tuple[str, MetricSpec]:
    return name, MetricSpec(name, f"pipeline.metrics.{target}", summary=summary, **kwargs)


#: The registry, in vocabulary order.
METRICS: dict[str, MetricSpec] = dict(
    [
        _spec("Q_MI", "information:q_mi", "Hossny's normalised mutual information (Liu toolbox)"),
        _spec("Q_NCIE", "information:q_ncie", "Wang's nonlinear correlation information entropy"),
        _spec("Q_G", "gradient:q_g", "Xydeas-Petrovic gradient metric (Liu toolbox)"),
        _spec("Q_P", "phase:q_p", "Zhao's phase-congruency metric"),
        _spec("Q_E", "structural:q_e", "Piella's edge-dependent fusion quality, window 3"),
        _spec("Q_Y", "structural:q_y", "Yang's SSIM-based metric"),
        _spec("Q_CB", "perceptual:q_cb", "Chen-Blum human-perception metric"),
        _spec("Q_CV", "perceptual:q_cv", "Chen-Varshney metric (lower is better)"),
        _spec("Q_ABF", "gradient:q_abf", "Xydeas-Petrovic Q^AB/F as in VIFB"),
        _spec("FMI_pixel", "fmi:fmi_pixel", "feature mutual information, raw pixels, window 3"),
        _spec("FMI_gradient", "fmi:fmi_gradient", "feature mutual information, gradient feature"),
        _spec("FMI_edge", "fmi:fmi_edge", "feature mutual information, edge feature (fmi.m's default)"),
        _spec("FMI_dct", "fmi:fmi_dct", "feature mutual information, DCT feature"),
        _spec("FMI_wavelet", "fmi:fmi_wavelet", "feature mutual information, discrete Meyer wavelet"),
        _spec("MI", "information:mutual_information", "MI(A,F) + MI(B,F) as in VIFB (nats)"),
        _spec("EN", "statistics:entropy", "entropy of F (bits)", uses_sources=False, rgb_native=True),
        _spec("SD", "statistics:standard_deviation", "standard deviation of F", uses_sources=False,
              rgb_native=True),
        _spec("SF", "statistics:spatial_frequency", "spatial frequency of F", uses_sources=False,
              rgb_native=True),
        _spec("AG", "statistics:average_gradient", "average gradient of F", uses_sources=False,
              rgb_native=True),
        _spec("EI", "statistics:edge_intensity", "edge intensity (mean Sobel magnitude) of F",
              uses_sources=False, rgb_native=True),
        _spec("SCD", "statistics:scd", "sum of the correlations of differences", rgb_native=True),
        _spec("VIF", "perceptual:vif", "visual information fidelity"),
        _spec("SSIM", "structural:ssim", "SSIM(A,F) + SSIM(B,F) as in VIFB"),
        _spec("PSNR", "statistics:psnr", "PSNR as VIFB computes it (dB)", rgb_native=True),
        _spec("RMSE", "statistics:rmse", "RMSE as VIFB computes it", rgb_native=True),
        _spec("CE", "information:cross_entropy", "cross entropy as in VIFB (lower is better)"),
    ]
)

#: Every registered name, in vocabulary order.
METRIC_NAMES: tuple[str, ...] = tuple(METRICS)
#: What ``compute_metrics`` (and ``python -m pipeline metrics``) computes when no names are given:
#: the whole vocabulary.
DEFAULT_METRICS: list[str] = list(METRIC_NAMES)


def get_spec(name: str) -> MetricSpec:
    """The :class:`MetricSpec` registered under ``name``.

    Raises:
        UnknownMetricError: ``name`` is not in the vocabulary (the message lists the valid names).
    """
    try:
        return METRICS[name]
    except (KeyError, TypeError):
        close = difflib.get_close_matches(str(name), METRIC_NAMES, n=1, cutoff=0.6)
        hint = f" Did you mean {close[0]}?" if close else ""
        raise UnknownMetricError(
            f"unknown metric {name!r}.{hint} Valid names: {', '.join(METRIC_NAMES)}"
        ) from None


def get_metric(name: str) -> Callable[..., float]:
    """The metric ``name`` as a callable ``fn(a, b, f, **options) -> float``.

    No-reference statistics (``EN``, ``SD``, ...) accept and ignore ``a`` and ``b`` here, so every
    metric has the same signature. Images are gray ``(H, W)`` arrays in 0..255 (the statistics
    also take ``(H, W, 3)``); use :func:`compute_metrics` for colour handling and NaN checks.

    Raises:
        UnknownMetricError: ``name`` is not in the vocabulary.
    """
    spec = get_spec(name)

    def metric(a: np.ndarray, b: np.ndarray, f: np.ndarray, **options: Any) -> float:
        fn = spec.load()
        kwargs = {**spec.options, **options}
        value = fn(a, b, f, **kwargs) if spec.uses_sources else fn(f, **kwargs)
        return float(value)

    metric.__name__ = spec.name
    metric.__doc__ = f"{spec.name}: {spec.summary} (implemented by {spec.target})."
    return metric


def to_gray_y(image: np.ndarray) -> np.ndarray:
    """Gray image for the ``"y"`` colour mode: Y of a colour image rounded to 0..255, else as is.

    Args:
        image: ``(H, W)`` or ``(H, W, 3)`` array in 0..255.

    Returns:
        float64 ``(H, W)`` array in 0..255.
    """
    from pipeline.colour import rgb_to_ycbcr

    arr = np.asarray(image, dtype=np.float64)
    if arr.ndim == 2:
        return arr
    y = rgb_to_ycbcr(arr / 255.0)[..., 0] * 255.0
    return np.clip(np.rint(y), 0.0, 255.0)


def _check_images(a: Any, b: Any, f: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    arrays = []
    for name, image in (("a", a), ("b", b), ("f", f)):
        arr = np.asarray(image)
        if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3)):
            raise ValueError(f"image {name}: expected an (H, W) gray or (H, W, 3) colour array in 0..255, "
                             f"got shape {arr.shape}")
        if arr.dtype == bool or not np.issubdtype(arr.dtype, np.number):
            raise ValueError(f"image {name}: expected numbers in 0..255, got dtype {arr.dtype}")
        arr = arr.astype(np.float64)
        if not np.isfinite(arr).all():
            raise ValueError(f"image {name}: holds NaN or Inf; metrics need finite values in 0..255")
        arrays.append(arr)
    if len({arr.shape[:2] for arr in arrays}) != 1:
        raise ValueError("a, b and f must share one H x W grid, got "
                         f"{[arr.shape for arr in arrays]}: register/resample them first")
    if all(np.issubdtype(np.asarray(x).dtype, np.floating) for x in (a, b, f)) and max(
            float(arr.max()) for arr in arrays) <= 1.0:
        warnings.warn("all three images lie in [0, 1]: metrics take 0..255 like the reference "
                      "toolboxes (multiply library images by 255)", RuntimeWarning, stacklevel=3)
    return arrays[0], arrays[1], arrays[2]


def _as_rgb(image: np.ndarray) -> np.ndarray:
    return image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2)


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
    colour = "y" if colour is None else colour
    names = list(DEFAULT_METRICS if names is None else names)
    specs = [get_spec(name) for name in names]
    if colour not in COLOUR_MODES:
        raise ValueError(f"unknown colour mode {colour!r}; use one of {', '.join(COLOUR_MODES)}")
    if nan_policy not in ("raise", "warn"):
        raise ValueError(f"unknown nan_policy {nan_policy!r}; use 'raise' or 'warn'")
    options = dict(options or {})
    stray = sorted(set(options) - set(names))
    if stray:
        raise ValueError(f"options given for metrics not requested: {', '.join(stray)}")
    a, b, f = _check_images(a, b, f)
    any_colour = any(x.ndim == 3 for x in (a, b, f))

    results: dict[str, float] = {}
    for spec in specs:
        metric = get_metric(spec.name)
        kwargs = dict(options.get(spec.name, {}))
        if not any_colour:
            value = metric(a, b, f, **kwargs)
        elif colour == "y":
            value = metric(to_gray_y(a), to_gray_y(b), to_gray_y(f), **kwargs)
        elif spec.rgb_native:
            value = metric(_as_rgb(a), _as_rgb(b), _as_rgb(f), **kwargs)
        else:
            ra, rb, rf = _as_rgb(a), _as_rgb(b), _as_rgb(f)
            value = float(np.mean([metric(ra[..., k], rb[..., k], rf[..., k], **kwargs) for k in range(3)]))
        if math.isnan(value):
            message = (f"metric {spec.name} returned NaN on images of shape {f.shape} "
                       f"({spec.target}); see its docstring for the inputs it cannot score")
            if nan_policy == "raise":
                raise MetricValueError(message)
            warnings.warn(message, RuntimeWarning, stacklevel=2)
        results[spec.name] = value
    return results
