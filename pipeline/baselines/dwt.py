"""Discrete wavelet transform (DWT) fusion with PyWavelets: the classic multi-scale baseline.

Both sources are decomposed with :func:`pywt.wavedec2`; the approximation (coarsest low-pass) bands
are averaged and each detail coefficient (horizontal, vertical, diagonal, every level) is taken
from the source whose coefficient has the larger absolute value (ties: the first source). The
inverse transform is cropped back to the input size. Defaults: wavelet ``"db2"``, 3 levels,
``"symmetric"`` signal extension (PyWavelets' default): Haar (``"db1"``) with max-abs selection
leaves visible blocks on brain slices, and a fourth level adds ringing without better detail;
the number of levels is capped at what the image size
allows (:func:`pywt.dwtn_max_level`), at least 1. This is not a reproduction of any published
code (it differs from ``golden/mfif/*_dwt.tif`` by 2-4 grey levels on average, whose code uses
its own decomposition and rules). Fusing an image with itself returns it (up to
float rounding). Library images are float in [0, 1].
"""

from __future__ import annotations

import numpy as np
import pywt

__all__ = ["DEFAULT_WAVELET", "DEFAULT_LEVELS", "fuse"]

DEFAULT_WAVELET = "db2"
DEFAULT_LEVELS = 3


def _max_abs(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.where(np.abs(x) >= np.abs(y), x, y)


def fuse(
    a: np.ndarray, b: np.ndarray, wavelet: str = DEFAULT_WAVELET, levels: int = DEFAULT_LEVELS, mode: str = "symmetric"
) -> np.ndarray:
    """Fuse two gray images in the wavelet domain (mean approximation, max-abs details).

    Args:
        a: first source, float ``(H, W)`` in [0, 1].
        b: second source, same shape.
        wavelet: any PyWavelets discrete wavelet name (``"db1"``, ``"db2"``, ``"sym4"``, ``"bior1.3"``...).
        levels: decomposition levels (>= 1), capped at the largest the image size allows.
        mode: PyWavelets signal extension mode.

    Returns:
        fused float64 ``(H, W)`` image, clipped to [0, 1].

    Raises:
        ValueError: shapes differ or are not 2D, ``levels`` < 1, or the wavelet name is unknown.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"dwt expects two (H, W) sources of one shape, got {a.shape} and {b.shape}")
    if int(levels) < 1:
        raise ValueError(f"dwt: levels must be >= 1, got {levels}")
    try:
        wav = pywt.Wavelet(wavelet)
    except ValueError as err:
        raise ValueError(f"dwt: unknown wavelet {wavelet!r} (see pywt.wavelist(kind='discrete'))") from err
    level = max(1, min(int(levels), pywt.dwtn_max_level(a.shape, wav)))
    coeffs_a = pywt.wavedec2(a, wav, mode=mode, level=level)
    coeffs_b = pywt.wavedec2(b, wav, mode=mode, level=level)
    fused = [(coeffs_a[0] + coeffs_b[0]) / 2.0]
    for details_a, details_b in zip(coeffs_a[1:], coeffs_b[1:]):
        fused.append(tuple(_max_abs(da, db) for da, db in zip(details_a, details_b)))
    out = pywt.waverec2(fused, wav, mode=mode)[: a.shape[0], : a.shape[1]]
    return np.clip(out, 0.0, 1.0)
