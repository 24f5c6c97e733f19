"""Fusion methods by name, behind one interface: ``fuse(a, b, **params) -> fused``.

Every method module exposes ``fuse(a, b, **params)`` on two grayscale ``(H, W)`` float images in
[0, 1] and returns the fused ``(H, W)`` float image in [0, 1]. A module may also expose
``fuse_per_channel(a, b, **params)`` for the ``per-channel`` colour mode (one weight map from both
sources' gray, applied to every RGB channel, as VIFB runs GFF and LP-CNN); it receives the sources
as given, ``(H, W, 3)`` colour or ``(H, W)`` gray, and returns ``(H, W, 3)``.

Methods (names shared with the CLI, CSV columns and MLflow keys):

========  =================================================================  ==========================
name      method                                                             module
========  =================================================================  ==========================
``wa``    weighted averaging                                                 :mod:`.wa`
``max``   per-pixel maximum (choose-max, the pixel form of IFCNN-MAX)        :mod:`.maximum`
``gff``   guided filtering fusion, Li, Kang & Hu, TIP 2013                   :mod:`.gff`
``lpcnn`` siamese CNN + Laplacian pyramid, Liu et al. 2017                   ``pipeline.baselines.lpcnn``
``dwt``   discrete wavelet transform, max-abs details / mean approximation   :mod:`.dwt`
``lp``    Laplacian pyramid, max-abs details / mean top                      :mod:`.lp`
``cnn``   our trained SSIM-alpha network (from a checkpoint)                 ``pipeline.baselines.cnn``
========  =================================================================  ==========================

Modules are imported only when a method is asked for, so ``lpcnn`` and ``cnn`` (torch) cost nothing
to the others. :func:`fuse_pair` handles colour: gray or RGB sources, float in [0, 1].
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Literal

import numpy as np

from pipeline.colour import fuse_with_colour

__all__ = ["METHODS", "COLOUR_MODES", "UnknownMethodError", "get_method", "get_module", "fuse_pair"]

#: Where each method lives: ``"module:function"``.
_REGISTRY: dict[str, str] = {
    "wa": "pipeline.baselines.wa:fuse",
    "max": "pipeline.baselines.maximum:fuse",
    "gff": "pipeline.baselines.gff:fuse",
    "lpcnn": "pipeline.baselines.lpcnn:fuse",
    "dwt": "pipeline.baselines.dwt:fuse",
    "lp": "pipeline.baselines.lp:fuse",
    "cnn": "pipeline.baselines.cnn:fuse",
}

#: Method names, in the order the thesis's tables list them, then the classics and ours.
METHODS: tuple[str, ...] = tuple(_REGISTRY)

#: ``ycbcr``: fuse Y with the gray source, keep the colour source's Cb/Cr (default).
#: ``per-channel``: fuse each RGB channel (the gray source repeated), VIFB-style.
COLOUR_MODES: tuple[str, ...] = ("ycbcr", "per-channel")

ColourMode = Literal["ycbcr", "per-channel"]
FuseFn = Callable[..., np.ndarray]


class UnknownMethodError(ValueError):
    """A method name that is not registered; the message lists the known ones."""


def _check_name(name: str) -> str:
    if name not in _REGISTRY:
        raise UnknownMethodError(f"unknown fusion method {name!r}; choose one of: {', '.join(METHODS)}")
    return name


def get_module(name: str) -> Any:
    """Import and return the module of method ``name``.

    Args:
        name: a name from :data:`METHODS`.

    Returns:
        the imported module.

    Raises:
        UnknownMethodError: ``name`` is not registered.
        ImportError: the method's module (or a dependency) is missing.
    """
    return importlib.import_module(_REGISTRY[_check_name(name)].split(":")[0])


def get_method(name: str) -> FuseFn:
    """The ``fuse(a, b, **params)`` function of method ``name`` (gray float [0, 1] in and out).

    Args:
        name: a name from :data:`METHODS`.

    Returns:
        the method's fuse function.

    Raises:
        UnknownMethodError: ``name`` is not registered.
        ImportError: the method's module (or a dependency) is missing.
    """
    return getattr(get_module(name), _REGISTRY[_check_name(name)].split(":")[1])


def _as_rgb(image: np.ndarray) -> np.ndarray:
    return image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2)


def _check_source(image: np.ndarray, which: str) -> np.ndarray:
    arr = np.asarray(image, dtype=np.float64)
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3)):
        raise ValueError(f"source {which} must be (H, W) gray or (H, W, 3) RGB, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"source {which} holds NaN or Inf")
    return arr


def fuse_pair(
    method: str | FuseFn, a: np.ndarray, b: np.ndarray, colour: ColourMode = "ycbcr", **params: Any
) -> np.ndarray:
    """Fuse a pair of gray or RGB sources with a registered method (or any fuse function).

    Args:
        method: a name from :data:`METHODS`, or a ``fuse(a, b, **params)`` callable.
        a: first source, float ``(H, W)`` or ``(H, W, 3)`` in [0, 1].
        b: second source, same height and width.
        colour: ``"ycbcr"`` (default): a colour source's Y is fused with the gray source and its
            Cb/Cr are restored (:func:`pipeline.colour.fuse_with_colour`). ``"per-channel"``: each RGB
            channel is fused separately, a gray source repeated into three channels; a method whose
            module defines ``fuse_per_channel`` (GFF, LP-CNN) uses that instead, computing one
            weight map from the grayscale of both sources. Two gray sources ignore ``colour``.
        **params: the method's parameters (e.g. ``r1=45`` for GFF).

    Returns:
        fused float64 image in [0, 1]: ``(H, W)`` for a gray pair, ``(H, W, 3)`` otherwise.

    Raises:
        UnknownMethodError: unknown method name.
        ValueError: unknown colour mode, or sources of different sizes or shapes other than gray/RGB.
    """
    if colour not in COLOUR_MODES:
        raise ValueError(f"unknown colour mode {colour!r}; choose one of: {', '.join(COLOUR_MODES)}")
    a, b = _check_source(a, "a"), _check_source(b, "b")
    if a.shape[:2] != b.shape[:2]:
        raise ValueError(f"the sources differ in size ({a.shape[:2]} vs {b.shape[:2]}): "
                         "register them to one grid first")
    module = None
    if callable(method):
        fuse_gray = method
    else:
        module = get_module(method)
        fuse_gray = get_method(method)

    def gray_rule(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.clip(np.asarray(fuse_gray(x, y, **params), dtype=np.float64), 0.0, 1.0)

    if a.ndim == 2 and b.ndim == 2:
        return gray_rule(a, b)
    if colour == "ycbcr":
        return fuse_with_colour(a, b, gray_rule)
    per_channel = getattr(module, "fuse_per_channel", None) if module is not None else None
    if per_channel is not None:
        # the sources as given: a gray source is its own grayscale (as VIFB's code treats it)
        return np.clip(np.asarray(per_channel(a, b, **params), dtype=np.float64), 0.0, 1.0)
    a_rgb, b_rgb = _as_rgb(a), _as_rgb(b)
    return np.stack([gray_rule(a_rgb[..., c], b_rgb[..., c]) for c in range(3)], axis=-1)
