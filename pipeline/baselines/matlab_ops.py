"""Small MATLAB Image Processing Toolbox operations, reproduced exactly where baselines need them.

The published baselines (GFF, LP-CNN) are MATLAB code; matching their outputs pixel for pixel needs
MATLAB's rounding and conversion rules, collected here so each baseline does not re-derive them:

* :func:`matlab_uint8` is ``uint8(x)`` on doubles: round half away from zero, saturate to 0..255,
  NaN to 0 (numpy's ``rint`` rounds half to even instead).
* :func:`rgb2gray` is ``rgb2gray``: the luma row of the inverse NTSC matrix; on 8-bit data MATLAB
  rounds the result back to ``uint8``, which ``quantise=True`` mimics for images in [0, 1].
* :func:`fspecial_gaussian` is ``fspecial('gaussian', size, sigma)``.

Library images are float in [0, 1]; these helpers keep that convention unless stated.
"""

from __future__ import annotations

import numpy as np

__all__ = ["RGB2GRAY_COEFFS", "matlab_uint8", "rgb2gray", "fspecial_gaussian"]

#: First row of ``inv([1 .956 .621; 1 -.272 -.647; 1 -1.106 1.703])``: MATLAB's rgb2gray weights.
RGB2GRAY_COEFFS = np.linalg.inv(
    np.array([[1.0, 0.956, 0.621], [1.0, -0.272, -0.647], [1.0, -1.106, 1.703]])
)[0]


def matlab_uint8(values: np.ndarray) -> np.ndarray:
    """MATLAB's ``uint8(values)`` for doubles: round half away from zero, saturate, NaN -> 0.

    Args:
        values: float array on the 0..255 scale.

    Returns:
        ``uint8`` array.
    """
    arr = np.nan_to_num(np.asarray(values, dtype=np.float64), nan=0.0)
    rounded = np.sign(arr) * np.floor(np.abs(arr) + 0.5)
    return np.clip(rounded, 0, 255).astype(np.uint8)


def rgb2gray(rgb: np.ndarray, quantise: bool = True) -> np.ndarray:
    """MATLAB ``rgb2gray`` of a colour image in [0, 1].

    Args:
        rgb: float ``(H, W, 3)`` array in [0, 1].
        quantise: round the gray to 8 bits (``/255`` steps) as MATLAB does for ``uint8`` input;
            use it when the image came from an 8-bit file, as in the reference code.

    Returns:
        float64 ``(H, W)`` gray image in [0, 1].

    Raises:
        ValueError: the input is not ``(H, W, 3)``.
    """
    arr = np.asarray(rgb, dtype=np.float64)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"rgb2gray expects an (H, W, 3) image, got shape {arr.shape}")
    gray = arr @ RGB2GRAY_COEFFS
    if quantise:
        return matlab_uint8(gray * 255.0).astype(np.float64) / 255.0
    return np.clip(gray, 0.0, 1.0)


def fspecial_gaussian(size: int, sigma: float) -> np.ndarray:
    """MATLAB ``fspecial('gaussian', size, sigma)``: a normalised square Gaussian kernel.

    Args:
        size: odd or even side length (MATLAB centres even kernels between pixels too).
        sigma: standard deviation in pixels.

    Returns:
        float64 ``(size, size)`` kernel summing to 1.
    """
    half = (size - 1) / 2.0
    x = np.arange(size, dtype=np.float64) - half
    xx, yy = np.meshgrid(x, x)
    kernel = np.exp(-(xx * xx + yy * yy) / (2.0 * sigma * sigma))
    kernel[kernel < np.finfo(np.float64).eps * kernel.max()] = 0.0
    return kernel / kernel.sum()
