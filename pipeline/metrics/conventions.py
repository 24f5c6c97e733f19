"""Metric conventions: the columns another evaluator prints, computed the way it computes them.

Papers report tables from their own evaluators, whose names, units, colour handling and image
reading differ from the project's. A :class:`Convention` is one record per evaluator: how it
reads an image, its column names in its order, and which registered metric (with which options)
computes each column. ``compute_metrics(a, b, f, convention="cddfuse")``, ``python -m pipeline
metrics A B F --convention cddfuse`` and ``python -m pipeline benchmark ... --convention
cddfuse`` then print numbers that can stand beside that evaluator's tables.

- ``project`` (default): the registry's names and definitions (:mod:`pipeline.metrics`).
- ``cddfuse``: CDDFuse's ``utils/Evaluator.py`` as its ``test_MIF.py`` calls it (Zhao et al.,
  CVPR 2023; the Python evaluator many later medical fusion papers reuse). Columns ``EN SD SF MI
  SCD VIF Qabf SSIM``. Every image is read as OpenCV's ``imread`` (BGR) then ``cvtColor(BGR2GRAY)``
  in float32 and ``np.round``; see :func:`opencv_gray`. ``MI`` is in nats, summed over the two
  sources (sklearn's ``mutual_info_score`` on the gray levels: for 8-bit images that is the
  project's ``MI``, whose stretch to 0..255 is one-to-one on integer levels); ``VIF`` and
  ``SSIM`` are sums over the sources; ``SF`` is the mean-squared-difference form; ``SSIM`` is
  scikit-image's (7x7 box, sample covariance) with ``data_range = 2``, the float range that
  scikit-image 0.19 assumes for float input, so ``C1 = (0.02)^2``, ``C2 = (0.06)^2`` on 0..255.
  CDDFuse computes SD, SF, SCD, Qabf and SSIM on float32 arrays; these float64 values differ
  from its prints by that round-off only.
- ``vifb``: VIFB's 13 metrics under VIFB's names (Zhang et al., CVPRW 2020): each computed on
  the R, G and B channels and averaged (``colour="per-channel"``; a gray image stands for all
  three), files decoded as stored (JPEG included).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence

import numpy as np

from pipeline.metrics.registry import METRIC_NAMES, ColourMode, compute_project, get_spec

__all__ = [
    "Column",
    "Convention",
    "CONVENTIONS",
    "CONVENTION_NAMES",
    "UnknownConventionError",
    "get_convention",
    "compute_convention",
    "opencv_gray",
]

#: OpenCV's float32 luma weights ``R2YF, G2YF, B2YF`` (``0.299f, 0.587f, 0.114f``).
_CV_R, _CV_G, _CV_B = np.float32(0.299), np.float32(0.587), np.float32(0.114)


class UnknownConventionError(ValueError):
    """A convention name that is not registered; the message lists the valid names."""


def opencv_gray(image: np.ndarray) -> np.ndarray:
    """Gray levels as ``np.round(cv2.cvtColor(imread(path).astype(float32), COLOR_BGR2GRAY))``.

    OpenCV's float32 conversion (its universal-intrinsics path, used whenever a row holds a
    vector of pixels): ``fma(R, 0.299f, fma(G, 0.587f, B * 0.114f))``, each step rounded to
    float32, then numpy's round half to even. For 8-bit values every product and sum is exact in
    float64, so rounding each step to float32 reproduces the fused multiply-adds bit for bit.
    Builds that hand the conversion to Intel IPP (the x86 pip wheels) or run it scalar differ
    only in the order of those roundings, which can turn an exact ``.5`` tie (``52.5`` for RGB
    ``(0, 84, 28)``) the other way. A gray image is what ``imread`` reads as three equal
    channels; it comes back unchanged.

    Args:
        image: ``(H, W)`` gray or ``(H, W, 3)`` RGB array in 0..255 (R, G, B order, as
            :func:`pipeline.io.read_image` returns; OpenCV's BGR order is accounted for here).

    Returns:
        float64 ``(H, W)`` array of integer gray levels 0..255.

    Raises:
        ValueError: an array that is neither ``(H, W)`` nor ``(H, W, 3)``.
    """
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an (H, W) gray or (H, W, 3) RGB image, got shape {arr.shape}")
    red, green, blue = (arr[..., k].astype(np.float32) for k in range(3))
    acc = blue * _CV_B  # a float32 product, rounded once
    acc = (green.astype(np.float64) * float(_CV_G) + acc).astype(np.float32)  # fma, one rounding
    gray = (red.astype(np.float64) * float(_CV_R) + acc).astype(np.float32)
    return np.round(gray).astype(np.float64)


def _unchanged(image: np.ndarray) -> np.ndarray:
    """The image as decoded: the evaluator scores what the file holds."""
    return np.asarray(image)


@dataclass(frozen=True)
class Column:
    """One printed column of a convention.

    Attributes:
        name: the column's name in that evaluator's tables (``"Qabf"``, ``"Avg_gradient"``).
        metric: the registered metric that computes it (:data:`pipeline.metrics.METRICS`).
        options: keyword options for that metric where the evaluator's definition differs.
    """

    name: str
    metric: str
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Convention:
    """An evaluator's table: image reading, colour handling, columns in order.

    Attributes:
        name: the convention's name (``--convention NAME``).
        summary: one line for help texts.
        columns: the evaluator's columns, in its order.
        colour: the :func:`pipeline.metrics.compute_metrics` colour mode the evaluator follows.
        prepare: applied to every image (array in 0..255) before scoring: the evaluator's own
            reduction of what a file decodes to (identity for ``project`` and ``vifb``).
    """

    name: str
    summary: str
    columns: tuple[Column, ...]
    colour: ColourMode
    prepare: Callable[[np.ndarray], np.ndarray] = _unchanged

    @property
    def names(self) -> tuple[str, ...]:
        """The column names, in order."""
        return tuple(column.name for column in self.columns)

    def select(self, names: Sequence[str] | None = None) -> list[Column]:
        """The columns called ``names`` (default: all, in the convention's order).

        Args:
            names: column names of this convention.

        Returns:
            the matching :class:`Column` records, in the order of ``names``.

        Raises:
            ValueError: a name that is not one of this convention's columns (the message lists
                them).
        """
        by_name = {column.name: column for column in self.columns}
        if names is None:
            return list(self.columns)
        unknown = [name for name in names if name not in by_name]
        if unknown:
            close = difflib.get_close_matches(str(unknown[0]), self.names, n=1, cutoff=0.6)
            hint = f" Did you mean {close[0]}?" if close else ""
            raise ValueError(f"unknown column(s) {', '.join(map(repr, unknown))} of the {self.name} "
                             f"convention.{hint} Valid names: {', '.join(self.names)}")
        return [by_name[name] for name in names]

    def metric_of(self, name: str) -> str:
        """The registered metric behind column ``name``.

        Args:
            name: one of this convention's column names.

        Returns:
            the metric's vocabulary name.

        Raises:
            ValueError: ``name`` is not one of this convention's columns.
        """
        return self.select([name])[0].metric

    def higher_is_better(self, name: str) -> bool:
        """The direction of column ``name``: its registered metric's
        (:attr:`pipeline.metrics.MetricSpec.higher_is_better`).

        Args:
            name: one of this convention's column names.

        Returns:
            True when a larger value of the column is better.

        Raises:
            ValueError: ``name`` is not one of this convention's columns.
        """
        return get_spec(self.metric_of(name)).higher_is_better

    def read(self, path: str | Path) -> np.ndarray:
        """Read an image file as this convention's evaluator reads it.

        Args:
            path: image file (decoded by :func:`pipeline.io.read_image`: 8-bit, as stored).

        Returns:
            array in 0..255, ``(H, W)`` or ``(H, W, 3)``, ready for :func:`compute_convention`.
        """
        from pipeline.io import read_image

        return self.prepare(read_image(path))


def _project() -> Convention:
    """The registry itself as a convention: every metric under its own name, colour on Y."""
    return Convention("project", "the project's names and definitions (pipeline.metrics)",
                      tuple(Column(name, name) for name in METRIC_NAMES), "y")


_CDDFUSE = Convention(
    "cddfuse",
    "CDDFuse's utils/Evaluator.py (OpenCV gray reading, MI in nats, sums over sources)",
    (
        Column("EN", "EN"),
        Column("SD", "SD"),
        Column("SF", "SF", {"average": "differences"}),
        Column("MI", "MI"),
        Column("SCD", "SCD"),
        Column("VIF", "VIF"),
        Column("Qabf", "Q_ABF"),
        Column("SSIM", "SSIM", {"variant": "skimage", "data_range": 2.0}),
    ),
    "y",
    opencv_gray,
)

_VIFB = Convention(
    "vifb",
    "VIFB's 13 metrics and names, per RGB channel and averaged",
    (
        Column("Avg_gradient", "AG"),
        Column("Cross_entropy", "CE"),
        Column("Edge_intensity", "EI"),
        Column("Entropy", "EN"),
        Column("Mutinf", "MI"),
        Column("Psnr", "PSNR"),
        Column("Qabf", "Q_ABF"),
        Column("Qcb", "Q_CB"),
        Column("Qcv", "Q_CV"),
        Column("Rmse", "RMSE"),
        Column("Spatial_frequency", "SF"),
        Column("Ssim", "SSIM"),
        Column("Variance", "SD"),
    ),
    "per-channel",
)

#: The registered conventions by name; ``project`` first (the default).
CONVENTIONS: dict[str, Convention] = {c.name: c for c in (_project(), _CDDFUSE, _VIFB)}
#: Valid values of ``convention=`` / ``--convention``.
CONVENTION_NAMES: tuple[str, ...] = tuple(CONVENTIONS)


def get_convention(name: str) -> Convention:
    """The :class:`Convention` registered as ``name``.

    Args:
        name: ``"project"``, ``"cddfuse"`` or ``"vifb"``.

    Returns:
        the convention record.

    Raises:
        UnknownConventionError: ``name`` is not registered (the message lists the valid names).
    """
    try:
        return CONVENTIONS[name]
    except (KeyError, TypeError):
        close = difflib.get_close_matches(str(name), CONVENTION_NAMES, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise UnknownConventionError(f"unknown convention {name!r}{hint}; valid conventions: "
                                     f"{', '.join(CONVENTION_NAMES)}") from None


def compute_convention(
    a: np.ndarray,
    b: np.ndarray,
    f: np.ndarray,
    convention: str,
    names: Sequence[str] | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    nan_policy: Literal["raise", "warn"] = "raise",
) -> dict[str, float]:
    """The columns of ``convention`` for one fused image, keyed and ordered as it prints them.

    Args:
        a: first source, ``(H, W)`` or ``(H, W, 3)``, 0..255, as decoded from its file.
        b: second source, same height and width.
        f: fused image, same height and width.
        convention: a name from :data:`CONVENTION_NAMES`.
        names: column names of that convention (default: all, in its order).
        options: per-column keyword arguments, merged over the convention's own options.
        nan_policy: as in :func:`pipeline.metrics.compute_metrics`.

    Returns:
        ``{column: value}`` in the order of ``names``.

    Raises:
        UnknownConventionError: an unknown convention.
        ValueError: unknown column names or options, bad images.
    """
    conv = get_convention(convention)
    columns = conv.select(names)
    options = dict(options or {})
    stray = sorted(set(options) - {column.name for column in columns})
    if stray:
        raise ValueError(f"options given for columns not requested: {', '.join(stray)}")
    metric_options = {}
    for column in columns:
        merged = {**column.options, **options.get(column.name, {})}
        if merged:
            metric_options[column.metric] = merged
    images = [conv.prepare(x) for x in (a, b, f)]
    values = compute_project(*images, [column.metric for column in columns], colour=conv.colour,
                             options=metric_options, nan_policy=nan_policy)
    return {column.name: values[column.metric] for column in columns}
