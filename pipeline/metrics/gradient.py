"""Gradient-based fusion metrics of Xydeas and Petrovic: ``Q_G`` (toolbox) and ``Q_ABF`` (VIFB).

Both measure how much of the sources' Sobel edge strength and orientation survives in the fused
image, with the sigmoid constants of Xydeas and Petrovic (2000)::

    G^{AF} = min(g_A, g_F) / max(g_A, g_F)                 (relative edge strength)
    A^{AF} = 1 - |alpha_A - alpha_F| / (pi / 2)             (relative orientation)
    Q^{AF} = Tg / (1 + e^{kg (G^{AF} - Dg)}) * Ta / (1 + e^{ka (A^{AF} - Da)})
    Q = sum(Q^{AF} g_A + Q^{BF} g_B) / sum(g_A + g_B)       (L = 1)
    Tg, kg, Dg, Ta, ka, Da = 0.9994, -15, 0.5, 0.9879, -22, 0.8

The field uses two codes that differ in details, so there are two metrics:

- ``Q_G`` (:func:`q_g`): ``metricXydeas`` of Yu Liu's corrected copy of Zheng Liu's toolbox
  (Liu et al., TPAMI 2012), the reference of the MFIF golden values. Sobel by ``filter2``
  (correlation, zero padding); a zero x-gradient, a zero strength and a zero fused strength are
  replaced by 1e-5 before dividing (so flat pixels score G = 1 with weight 1e-5).
- ``Q_ABF`` (:func:`q_abf`): VIFB's ``metricsQabf``, the one recent papers report. Sobel by
  ``conv2`` (true convolution: the x-gradient has the opposite sign), the orientation is pi/2
  where the x-gradient is 0, no 1e-5 guards, and where ``g_A == g_F`` the code sets
  ``G^{AF} = g_F`` (not 1): reproduced, it changes Q by < 6e-4 of such a pixel's term.
  (Read literally, VIFB's wrapper turns F into double before the per-channel function, whose
  ``255*im2double(F)`` would then scale F by 255 and give Q_ABF ~ 5e-4; VIFB's published values
  match the unscaled computation, which is what we implement.)

Images inside the library are float in [0, 1]; metrics take **0..255** (uint8 or float, converted
to float64 at the boundary like MATLAB's ``double()``).
"""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.metrics.checks import check_triple
from pipeline.metrics.kernels import correlate3_same

if TYPE_CHECKING:  # torch is imported lazily: numpy users do not pay for it
    import torch

__all__ = ["q_g", "q_abf", "q_abf_torch", "SIGMOID_CONSTANTS", "Q_G_MAX"]

#: Tg, kg, Dg, Ta, ka, Da of Xydeas and Petrovic (both codes use these).
SIGMOID_CONSTANTS: tuple[float, ...] = (0.9994, -15.0, 0.5, 0.9879, -22.0, 0.8)
#: Largest per-pixel preservation Q^{XF} for G, A <= 1 (both sigmoids at 1): Q_G's maximum,
#: reached when A = B = F.
Q_G_MAX: float = (0.9994 / (1.0 + math.exp(-15.0 * 0.5))) * (0.9879 / (1.0 + math.exp(-22.0 * 0.2)))

# metricXydeas: filter2 (correlation) masks.
_TOOLBOX_X = ((-1.0, 0.0, 1.0), (-2.0, 0.0, 2.0), (-1.0, 0.0, 1.0))
_TOOLBOX_Y = ((-1.0, -2.0, -1.0), (0.0, 0.0, 0.0), (1.0, 2.0, 1.0))
# metricsQabf: conv2 with h3 = [-1 0 1; -2 0 2; -1 0 1] and h1 = [1 2 1; 0 0 0; -1 -2 -1],
# i.e. correlation with the masks rotated by 180 degrees.
_VIFB_X = ((1.0, 0.0, -1.0), (2.0, 0.0, -2.0), (1.0, 0.0, -1.0))
_VIFB_Y = ((-1.0, -2.0, -1.0), (0.0, 0.0, 0.0), (1.0, 2.0, 1.0))
# metricXydeas' guard against division by zero.
_GUARD = 1e-5


# ----------------------------------------------------------------------------- helpers


def _sobel(xp: Any, x: Any, kx: tuple, ky: tuple) -> tuple[Any, Any]:
    """3x3 correlations with zero padding ('same') over the last two axes: (x-, y-gradient)."""
    gx, gy = correlate3_same(xp, x, (kx, ky))
    return gx, gy


def _preservation(xp: Any, strength: Any, orientation: Any) -> Any:
    """Q^{XF} from the relative strength G and relative orientation A (Xydeas' sigmoids)."""
    tg, kg, dg, ta, ka, da = SIGMOID_CONSTANTS
    return (tg / (1.0 + xp.exp(kg * (strength - dg)))) * (ta / (1.0 + xp.exp(ka * (orientation - da))))


# ----------------------------------------------------------------------------- Q_G (toolbox)


def _toolbox_edges(xp: Any, x: Any) -> tuple[Any, Any]:
    gx, gy = _sobel(xp, x, _TOOLBOX_X, _TOOLBOX_Y)
    g = xp.sqrt(gx * gx + gy * gy)
    angle = xp.arctan(gy / xp.where(gx == 0, _GUARD, gx))
    return g, angle


def _q_g_core(xp: Any, a: Any, b: Any, f: Any) -> Any:
    g_f, ang_f = _toolbox_edges(xp, f)
    g_f_guarded = xp.where(g_f == 0, _GUARD, g_f)
    num = 0.0
    den = 0.0
    for x in (a, b):
        g_x, ang_x = _toolbox_edges(xp, x)
        stronger = g_x > g_f
        g_x = xp.where(g_x == 0, _GUARD, g_x)
        # metricXydeas: G = g_F / g_X where g_X > g_F, else g_X / g_F (both guarded by 1e-5).
        # It guards g_F after the A-block, so its B-block sees the guarded g_F; using the
        # unguarded value in the numerator for both keeps Q symmetric (differs < 1e-7).
        rel_strength = xp.where(stronger, g_f / g_x, g_x / g_f_guarded)
        rel_orientation = 1.0 - xp.abs(ang_x - ang_f) * (2.0 / math.pi)
        num = num + (_preservation(xp, rel_strength, rel_orientation) * g_x).sum(axis=(-2, -1))
        den = den + g_x.sum(axis=(-2, -1))
    return num / den


def q_g(a: Any, b: Any, f: Any) -> float:
    """Xydeas-Petrovic gradient metric as in Liu et al.'s toolbox (metric name ``Q_G``).

    Reproduces ``metricXydeas`` of Yu Liu's corrected copy (TPAMI 2012 toolbox; MFIF repository):
    Sobel masks applied with ``filter2(..., 'same')``, orientation ``atan(g_y / g_x)`` with
    ``g_x = 0`` replaced by 1e-5, zero strengths replaced by 1e-5, weights ``g_A``, ``g_B``
    (L = 1); see the module docstring for the formula. Flat images are defined (every pixel then
    has G = A = 1 and weight 1e-5).

    Args:
        a: first source, 2D, 0..255 (library images are [0, 1]: multiply by 255 first).
        b: second source, same shape.
        f: fused image, same shape.

    Returns:
        ``Q_G`` in (0, 0.974794]; A = B = F gives the maximum, ``Q_G_MAX`` (both sigmoids at
        G = A = 1). Symmetric in A and B.

    Raises:
        ValueError: an image that is not 2D, not finite, of another shape, or smaller than 3x3.
    """
    a, b, f = check_triple(a, b, f, min_size=3)
    return float(_q_g_core(np, a, b, f))


# ----------------------------------------------------------------------------- Q_ABF (VIFB)


def _vifb_edges(xp: Any, x: Any) -> tuple[Any, Any]:
    gx, gy = _sobel(xp, x, _VIFB_X, _VIFB_Y)
    g = xp.sqrt(gx * gx + gy * gy)
    zero_x = gx == 0
    angle = xp.where(zero_x, math.pi / 2.0, xp.arctan(gy / xp.where(zero_x, 1.0, gx)))
    return g, angle


def _q_abf_core(xp: Any, a: Any, b: Any, f: Any) -> Any:
    g_f, ang_f = _vifb_edges(xp, f)
    num = 0.0
    den = 0.0
    for x in (a, b):
        g_x, ang_x = _vifb_edges(xp, x)
        stronger = g_x > g_f
        weaker = g_x < g_f
        # VIFB: g_F/g_X if g_X > g_F; g_F itself if equal (sic); g_X/g_F otherwise.
        rel_strength = xp.where(
            stronger, g_f / xp.where(stronger, g_x, 1.0),
            xp.where(weaker, g_x / xp.where(weaker, g_f, 1.0), g_f),
        )
        rel_orientation = 1.0 - xp.abs(ang_x - ang_f) / (math.pi / 2.0)
        num = num + (_preservation(xp, rel_strength, rel_orientation) * g_x).sum(axis=(-2, -1))
        den = den + g_x.sum(axis=(-2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return num / den


def _warn_no_edges(where: str = "") -> None:
    warnings.warn(f"Q_ABF{where} is NaN: neither source has any gradient (sum g_A + g_B = 0), so "
                  "the edge-preservation ratio is 0/0 and undefined", RuntimeWarning, stacklevel=3)


def q_abf(a: Any, b: Any, f: Any) -> float:
    """Xydeas-Petrovic ``Q^{AB/F}`` as in VIFB and recent fusion papers (metric name ``Q_ABF``).

    Reproduces the per-channel function of VIFB's ``metricsQabf``: Sobel by ``conv2(..., 'same')``
    (zero padding), orientation ``atan(g_y / g_x)`` or pi/2 where ``g_x = 0``, the quirk
    ``G^{AF} = g_F`` where ``g_A == g_F``, no 1e-5 guards; see the module docstring. VIFB
    evaluates colour images channel by channel and averages; this function takes one 2D channel.

    Args:
        a: first source, 2D, 0..255 (library images are [0, 1]: multiply by 255 first).
        b: second source, same shape.
        f: fused image, same shape.

    Returns:
        ``Q_ABF`` in [0, 0.975333); A = B = F gives between ``Q_G_MAX`` = 0.974794 (every edge
        of strength 1) and 0.975333 (strong edges), the ``G = g_F`` quirk letting G exceed 1.
        Symmetric in A and B. NaN, with a RuntimeWarning, only when neither source has any
        gradient (0/0).

    Raises:
        ValueError: an image that is not 2D, not finite, of another shape, or smaller than 3x3.
    """
    a, b, f = check_triple(a, b, f, min_size=3)
    value = float(_q_abf_core(np, a, b, f))
    if math.isnan(value):
        _warn_no_edges()
    return value


def q_abf_torch(a: "torch.Tensor", b: "torch.Tensor", f: "torch.Tensor") -> "torch.Tensor":
    """Batched :func:`q_abf` on tensors (CPU or GPU), computed in float64.

    Args:
        a: first sources, ``(N, 1, H, W)``, 0..255 (library tensors are [0, 1]: multiply by 255).
        b: second sources, same shape.
        f: fused images, same shape.

    Returns:
        float64 tensor ``(N,)`` on the inputs' device (inputs detached: no gradient), equal to
        :func:`q_abf` per sample; NaN (with a RuntimeWarning naming the samples) where neither
        source has any gradient.

    Raises:
        ValueError: tensors not ``(N, 1, H, W)``, of different shapes, or smaller than 3x3.
    """
    import torch

    ts = []
    for name, t in (("a", a), ("b", b), ("f", f)):
        if not isinstance(t, torch.Tensor) or t.ndim != 4 or t.shape[1] != 1:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name}: expected a tensor (N, 1, H, W) in 0..255, got {shape}")
        ts.append(t.detach().to(torch.float64)[:, 0])
    if not (ts[0].shape == ts[1].shape == ts[2].shape):
        raise ValueError(f"a, b, f must have the same shape, got {[tuple(t.shape) for t in (a, b, f)]}")
    if min(ts[0].shape[-2:]) < 3:
        raise ValueError(f"images must be at least 3x3, got {tuple(a.shape)}")
    value = _q_abf_core(torch, *ts)
    bad = torch.nonzero(torch.isnan(value)).flatten().tolist()
    if bad:
        _warn_no_edges(f" (samples {bad})")
    return value
