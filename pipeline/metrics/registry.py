"""The metric registry: one :class:`MetricSpec` per metric, and the project's way of computing them.

A spec is the one record that carries everything known about a metric: which function computes
it (imported on first use), whether a larger value is better, its batched torch version, the
toolbox or paper it reproduces, how it treats colour, whether it reads the sources, its default
options and a summary line. The CLI, the benchmark, the conventions and the Ignite wrappers read
these records instead of keeping tables of their own, so adding a metric is its function, one
entry in :data:`METRICS` and one test.

This module is the bottom layer of :mod:`pipeline.metrics`: it imports no family module and no
torch at import time (targets are ``"module:function"`` strings resolved when first used), and
:mod:`pipeline.metrics.conventions` builds on it. Images are **0..255** (``uint8`` or float) like
the reference MATLAB toolboxes; the library's [0, 1] images are multiplied by 255 at this boundary.
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
    "ColourMode",
    "MetricSpec",
    "UnknownMetricError",
    "MetricValueError",
    "get_metric",
    "get_spec",
    "compute_project",
    "check_images",
    "to_gray_y",
]

ColourMode = Literal["y", "per-channel"]
#: Accepted values of ``compute_metrics(..., colour=...)``.
COLOUR_MODES: tuple[str, ...] = ("y", "per-channel")


class UnknownMetricError(ValueError):
    """A metric name outside the vocabulary; the message lists the valid names."""


class MetricValueError(ValueError):
    """A metric returned NaN (never passed on silently)."""


def _import_target(metric: str, target: str) -> Callable[..., Any]:
    """The function named by ``"package.module:function"``, imported now.

    Args:
        metric: the metric's name, for the error message.
        target: ``"package.module:function"``.

    Returns:
        the function.

    Raises:
        ImportError: the module or function is missing (message names the metric and target).
    """
    module_name, _, func_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ImportError(f"metric {metric}: cannot import {module_name} ({err})") from err
    try:
        return getattr(module, func_name)
    except AttributeError as err:
        raise ImportError(f"metric {metric}: {module_name} has no function {func_name}") from err


@dataclass(frozen=True)
class MetricSpec:
    """One registered metric: everything the CLI, benchmark, conventions and evaluator need.

    Attributes:
        name: the vocabulary name (``"Q_Y"``).
        target: ``"package.module:function"`` of the numpy version, imported on first use.
        uses_sources: False for no-reference statistics called as ``fn(fused)``; True for
            ``fn(a, b, fused)``.
        rgb_native: colour handling in ``"per-channel"`` mode: True when the function takes the
            ``(H, W, 3)`` arrays and applies VIFB's own colour rule, False when the registry
            averages it over the R, G and B channels (``"y"`` mode always scores the Y channel).
        options: default keyword arguments of the function (both versions take the same ones).
        summary: one line for help texts.
        higher_is_better: the direction: True when a larger value means a better fusion (the
            benchmark's "best" is then the largest mean), False when a smaller one does.
        torch: ``"package.module:function"`` of the batched torch version, which takes
            ``(N, 1, H, W)`` tensors in 0..255 and returns ``(N,)``; None when there is none.
        torch_options: fixed keyword arguments of the torch version only (``FMI_*`` share one
            function and name their feature here).
        reference: the toolbox, code or paper whose numbers the implementation reproduces.
    """

    name: str
    target: str
    uses_sources: bool = True
    rgb_native: bool = False
    options: Mapping[str, Any] = field(default_factory=dict)
    summary: str = ""
    higher_is_better: bool = True
    torch: str | None = None
    torch_options: Mapping[str, Any] = field(default_factory=dict)
    reference: str = ""

    @property
    def direction(self) -> str:
        """``"higher"`` or ``"lower"``: which values are better, for help texts and tables."""
        return "higher" if self.higher_is_better else "lower"

    def load(self) -> Callable[..., float]:
        """Import and return the numpy function.

        Returns:
            the function named by :attr:`target`.

        Raises:
            ImportError: the module or function is missing (message names the target).
        """
        return _import_target(self.name, self.target)

    def load_torch(self) -> Callable[..., Any] | None:
        """Import and return the batched torch function, or None when the metric has none.

        Returns:
            the function named by :attr:`torch` (call it with :attr:`torch_options`), or None.

        Raises:
            ImportError: the torch version is registered but cannot be imported.
        """
        return None if self.torch is None else _import_target(self.name, self.torch)


_FAMILY = "pipeline.metrics."
_LIU = "Liu et al.'s toolbox (TPAMI 2012)"
_LIU_FIXED = "Yu Liu's corrected copy of Liu et al.'s toolbox (MFIF)"
_VIFB = "VIFB (CVPRW 2020)"
_FAST_FMI = "Haghighat's Fast-FMI fmi.m (AICT 2014)"


def _spec(name: str, target: str, summary: str, reference: str, *, torch: str | None = None,
          **kwargs: Any) -> tuple[str, MetricSpec]:
    """A registry entry; ``target`` and ``torch`` are relative to :mod:`pipeline.metrics`."""
    torch_target = None if torch is None else _FAMILY + torch
    return name, MetricSpec(name, _FAMILY + target, summary=summary, reference=reference,
                            torch=torch_target, **kwargs)


def _fmi(feature: str, summary: str, option: str) -> tuple[str, MetricSpec]:
    """The FMI entry of one feature: its own numpy function, the shared torch one."""
    reference = (f"{_FAST_FMI}, fmi(a, b, f, '{option}', 3) as its code runs (mode='reference'; "
                 "mode='symmetric': the published definition)")
    return _spec(f"FMI_{feature}", f"fmi:fmi_{feature}", summary, reference,
                 torch="fmi:fmi_torch", torch_options={"feature": feature})


#: The registry, in vocabulary order.
METRICS: dict[str, MetricSpec] = dict(
    [
        _spec("Q_MI", "information:q_mi", "Hossny's normalised mutual information",
              f"{_LIU}, metricMI with sw=1"),
        _spec("Q_NCIE", "information:q_ncie", "Wang's nonlinear correlation information entropy",
              f"{_LIU}, metricWang"),
        _spec("Q_G", "gradient:q_g", "Xydeas-Petrovic gradient metric", f"{_LIU_FIXED}, metricXydeas"),
        _spec("Q_P", "phase:q_p", "Zhao's phase-congruency metric", f"{_LIU}, metricZhao (myphasecong3)"),
        _spec("Q_E", "structural:q_e", "Piella's edge-dependent fusion quality, window 3",
              f"{_LIU_FIXED}, metricPeilla(A, B, F, 3)"),
        _spec("Q_Y", "structural:q_y", "Yang's SSIM-based metric", f"{_LIU_FIXED}, metricYang",
              torch="structural:q_y_torch"),
        _spec("Q_CB", "perceptual:q_cb", "Chen-Blum human-perception metric", f"{_LIU}, metricChenBlum"),
        _spec("Q_CV", "perceptual:q_cv", "Chen-Varshney metric", f"{_LIU}, metricChen",
              higher_is_better=False),
        _spec("Q_ABF", "gradient:q_abf", "Xydeas-Petrovic Q^AB/F", f"{_VIFB}, metricsQabf",
              torch="gradient:q_abf_torch"),
        _fmi("pixel", "feature mutual information, raw pixels, window 3", "none"),
        _fmi("gradient", "feature mutual information, gradient feature", "gradient"),
        _fmi("edge", "feature mutual information, edge feature (fmi.m's default)", "edge"),
        _fmi("dct", "feature mutual information, DCT feature", "dct"),
        _fmi("wavelet", "feature mutual information, discrete Meyer wavelet", "wavelet"),
        _spec("MI", "information:mutual_information", "MI(A,F) + MI(B,F) (nats)", f"{_VIFB}, metricsMutinf"),
        _spec("EN", "statistics:entropy", "entropy of F (bits)", f"{_VIFB}, metricsEntropy",
              uses_sources=False, rgb_native=True),
        _spec("SD", "statistics:standard_deviation", "standard deviation of F", f"{_VIFB}, metricsVariance",
              uses_sources=False, rgb_native=True),
        _spec("SF", "statistics:spatial_frequency", "spatial frequency of F",
              f"{_VIFB}, metricsSpatial_frequency", uses_sources=False, rgb_native=True),
        _spec("AG", "statistics:average_gradient", "average gradient of F", f"{_VIFB}, metricsAvg_gradient",
              uses_sources=False, rgb_native=True),
        _spec("EI", "statistics:edge_intensity", "edge intensity (mean Sobel magnitude) of F",
              f"{_VIFB}, metricsEdge_intensity", uses_sources=False, rgb_native=True),
        _spec("SCD", "statistics:scd", "sum of the correlations of differences",
              "Aslantas & Bendes's analysis_SCD.m (AEU 2015)", rgb_native=True),
        _spec("VIF", "perceptual:vif", "visual information fidelity, VIF(A,F) + VIF(B,F)",
              "Sheikh & Bovik's multi-scale pixel VIF (LIVE vifp_mscale)"),
        _spec("SSIM", "structural:ssim", "SSIM(A,F) + SSIM(B,F)", f"{_VIFB}, metricsSsim",
              torch="structural:ssim_torch"),
        _spec("PSNR", "statistics:psnr", "PSNR (dB)", f"{_VIFB}, metricsPsnr", rgb_native=True),
        _spec("RMSE", "statistics:rmse", "RMSE", f"{_VIFB}, metricsRmse", rgb_native=True,
              higher_is_better=False),
        _spec("CE", "information:cross_entropy", "cross entropy", f"{_VIFB}, metricsCross_entropy",
              higher_is_better=False),
    ]
)

#: Every registered name, in vocabulary order.
METRIC_NAMES: tuple[str, ...] = tuple(METRICS)
#: What ``compute_metrics`` (and ``python -m pipeline metrics``) computes when no names are given:
#: the whole vocabulary.
DEFAULT_METRICS: list[str] = list(METRIC_NAMES)


def get_spec(name: str) -> MetricSpec:
    """The :class:`MetricSpec` registered under ``name``.

    Args:
        name: a vocabulary name.

    Returns:
        its spec.

    Raises:
        UnknownMetricError: ``name`` is not in the vocabulary (the message lists the valid names).
    """
    try:
        return METRICS[name]
    except (KeyError, TypeError):
        valid = tuple(METRICS)
        close = difflib.get_close_matches(str(name), valid, n=1, cutoff=0.6)
        hint = f" Did you mean {close[0]}?" if close else ""
        raise UnknownMetricError(f"unknown metric {name!r}.{hint} Valid names: {', '.join(valid)}") from None


def get_metric(name: str) -> Callable[..., float]:
    """The metric ``name`` as a callable ``fn(a, b, f, **options) -> float``.

    No-reference statistics (``EN``, ``SD``, ...) accept and ignore ``a`` and ``b`` here, so every
    metric has the same signature. Images are gray ``(H, W)`` arrays in 0..255 (the statistics
    also take ``(H, W, 3)``); use :func:`compute_project` for colour handling and NaN checks.

    Args:
        name: a vocabulary name.

    Returns:
        the callable; its module is imported on the first call.

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


def check_images(a: Any, b: Any, f: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The three images as float64 arrays on one grid, checked before any metric runs.

    Args:
        a: first source, ``(H, W)`` or ``(H, W, 3)``, 0..255.
        b: second source.
        f: fused image.

    Returns:
        the three float64 arrays.

    Raises:
        ValueError: a shape that is neither gray nor RGB, non-numeric or non-finite pixels, or
            different grids. Images that all lie in [0, 1] only warn (the library's scale).
    """
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
                      "toolboxes (multiply library images by 255)", RuntimeWarning, stacklevel=4)
    return arrays[0], arrays[1], arrays[2]


def _as_rgb(image: np.ndarray) -> np.ndarray:
    """A gray image repeated on three channels (it stands for each of R, G and B)."""
    return image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2)


def compute_project(
    a: np.ndarray,
    b: np.ndarray,
    f: np.ndarray,
    names: Sequence[str] | None = None,
    colour: ColourMode = "y",
    options: Mapping[str, Mapping[str, Any]] | None = None,
    nan_policy: Literal["raise", "warn"] = "raise",
) -> dict[str, float]:
    """Registered metrics of one fused image, the project's way (``convention="project"``).

    Args:
        a: first source, ``(H, W)`` or ``(H, W, 3)``, 0..255 (``uint8`` or float).
        b: second source, same height and width.
        f: fused image, same height and width.
        names: metric names (default :data:`DEFAULT_METRICS`, the whole vocabulary).
        colour: ``"y"`` or ``"per-channel"`` (see :mod:`pipeline.metrics`); irrelevant when all
            three images are gray.
        options: per-metric keyword arguments, e.g. ``{"Q_Y": {"flat": "canonical"}}``.
        nan_policy: ``"raise"`` raises :class:`MetricValueError` on a NaN value; ``"warn"`` keeps
            the NaN and emits a RuntimeWarning.

    Returns:
        ``{name: value}`` in the order of ``names``.

    Raises:
        UnknownMetricError: a name is not in the vocabulary (checked before any computation).
        ValueError: bad images, colour mode, nan_policy or options.
        MetricValueError: a metric returned NaN and ``nan_policy`` is ``"raise"``.
    """
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
    a, b, f = check_images(a, b, f)
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
            warnings.warn(message, RuntimeWarning, stacklevel=3)
        results[spec.name] = value
    return results
