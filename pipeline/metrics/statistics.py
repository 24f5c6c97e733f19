"""Image statistics used as fusion metrics, computed exactly as VIFB's MATLAB code computes them.

``EN`` (:func:`entropy`), ``SD`` (:func:`standard_deviation`), ``SF`` (:func:`spatial_frequency`),
``AG`` (:func:`average_gradient`), ``EI`` (:func:`edge_intensity`), ``SCD`` (:func:`scd`),
``PSNR`` (:func:`psnr`) and ``RMSE`` (:func:`rmse`), following the ``metrics/`` folder of the
visible-infrared benchmark VIFB (Zhang et al., CVPRW 2020; ``metricsEntropy.m``,
``metricsVariance.m``, ``metricsSpatial_frequency.m``, ``metricsAvg_gradient.m``,
``metricsEdge_intensity.m``, ``metricsPsnr.m``, ``metricsRmse.m``) and, for SCD, Aslantas &
Bendes's ``analysis_SCD.m`` (AEU 2015). Validated against VIFB's own values to 1e-3 relative.

Images are 0..255 (``uint8`` or float), like the reference toolboxes: the library's [0, 1] images
are multiplied by 255 at this boundary. Each function takes a gray ``(H, W)`` image, or an
``(H, W, 3)`` one handled the VIFB way: the metric is computed per RGB channel and the three values
averaged, with one documented exception (``SF``, see :func:`spatial_frequency`).

Definitions that are VIFB's own, not the textbook's (kept because VIFB's numbers are the reference):

- ``SD``: VIFB calls it "Variance" but returns the population standard deviation.
- ``RMSE``/``PSNR``: VIFB's ``mse(a, b)`` is ``sqrt(sum((a - b)^2)) / (H * W)`` (the root of the
  summed squared error over the pixel count), not the mean squared error; ``RMSE`` is the mean of
  it over the two sources and ``PSNR = 20 log10(255 / sqrt(mean of it))``. Hence VIFB's RMSE ~ 0.1
  and PSNR ~ 58 dB. ``definition="standard"`` gives the textbook values instead.
- ``AG`` divides the sum over all H x W pixels by ``(H - 1)(W - 1)``.
- ``SF`` divides each sum of squared differences by the pixel count; ``average="differences"``
  takes their means instead (CDDFuse's evaluator).
"""

from __future__ import annotations

from typing import Callable, Literal

import numpy as np
from scipy import ndimage

__all__ = [
    "entropy",
    "standard_deviation",
    "spatial_frequency",
    "average_gradient",
    "edge_intensity",
    "scd",
    "psnr",
    "rmse",
]

Definition = Literal["vifb", "standard"]
SfAverage = Literal["pixels", "differences"]

# fspecial('sobel') of MATLAB: the horizontal-edge Sobel kernel, not divided by 8.
_SOBEL = np.array([[1.0, 2.0, 1.0], [0.0, 0.0, 0.0], [-1.0, -2.0, -1.0]])


def _as_image(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Float64 ``(H, W)`` or ``(H, W, 3)`` array, checked."""
    arr = np.asarray(image, dtype=np.float64)
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3)):
        raise ValueError(f"{name}: expected an (H, W) or (H, W, 3) image in 0..255, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name}: the image is empty")
    return arr


def _channels(image: np.ndarray) -> list[np.ndarray]:
    return [image] if image.ndim == 2 else [image[..., k] for k in range(image.shape[2])]


def _per_channel(fn: Callable[..., float], *images: np.ndarray) -> float:
    """Mean of ``fn`` over the RGB channels (a gray image among colour ones is used for each)."""
    if all(im.ndim == 2 for im in images):
        return float(fn(*images))
    values = [fn(*(im if im.ndim == 2 else im[..., k] for im in images)) for k in range(3)]
    return float(np.mean(values))


def _check_same_grid(*images: np.ndarray) -> None:
    shapes = {im.shape[:2] for im in images}
    if len(shapes) != 1:
        raise ValueError(f"sources and fused image must share one H x W grid, got {sorted(shapes)}")


def entropy(fused: np.ndarray) -> float:
    """Shannon entropy ``EN`` of the fused image's 256-bin gray-level histogram, in bits.

    Bin of a pixel: ``floor(value)`` (VIFB), values clipped to 0..255.

    Args:
        fused: ``(H, W)`` or ``(H, W, 3)`` image in 0..255 (``(H, W, 3)``: mean over channels).

    Returns:
        entropy in bits, in [0, 8].
    """
    fused = _as_image(fused, "fused")

    def _one(channel: np.ndarray) -> float:
        bins = np.clip(np.floor(channel), 0, 255).astype(np.intp).ravel()
        p = np.bincount(bins, minlength=256) / bins.size
        p = p[p > 0]
        return float(-(p * np.log2(p)).sum())

    return _per_channel(_one, fused)


def standard_deviation(fused: np.ndarray) -> float:
    """Population standard deviation ``SD`` of the fused image (VIFB's "Variance").

    Args:
        fused: ``(H, W)`` or ``(H, W, 3)`` image in 0..255 (``(H, W, 3)``: mean over channels).

    Returns:
        the standard deviation, in gray levels.
    """
    fused = _as_image(fused, "fused")
    return _per_channel(lambda x: float(np.sqrt(np.mean((x - x.mean()) ** 2))), fused)


def _spatial_frequency_2d(x: np.ndarray, average: SfAverage = "pixels") -> float:
    rows, cols = x.shape
    if average == "pixels":
        row_term = np.sum(np.diff(x, axis=1) ** 2) / (rows * cols)
        col_term = np.sum(np.diff(x, axis=0) ** 2) / (rows * cols)
    else:  # a single row or column has no differences along it: that term is 0
        row_term = np.mean(np.diff(x, axis=1) ** 2) if cols > 1 else 0.0
        col_term = np.mean(np.diff(x, axis=0) ** 2) if rows > 1 else 0.0
    return float(np.sqrt(row_term + col_term))


def spatial_frequency(fused: np.ndarray, average: SfAverage = "pixels") -> float:
    """Spatial frequency ``SF = sqrt(RF^2 + CF^2)`` of the fused image (Eskicioglu & Fisher 1995).

    ``RF^2`` and ``CF^2`` are the sums of squared horizontal and vertical neighbour differences,
    each divided by the pixel count.

    Colour: VIFB's code does not loop over channels here; MATLAB's ``[m, n] = size(fused)`` of an
    ``(H, W, 3)`` array gives ``n = 3W``, so VIFB computes SF once on the ``H x 3W`` image of the
    R, G and B planes side by side (two seams included). We reproduce that for ``(H, W, 3)``
    input, which is what VIFB's published SF values are.

    Args:
        fused: ``(H, W)`` or ``(H, W, 3)`` image in 0..255.
        average: ``"pixels"`` (default, VIFB): both sums divided by the pixel count H W;
            ``"differences"``: each sum divided by its number of differences, ``H (W - 1)`` and
            ``(H - 1) W`` (the mean squared difference, as CDDFuse's evaluator computes it).

    Returns:
        the spatial frequency, in gray levels.

    Raises:
        ValueError: an unknown ``average``.
    """
    if average not in ("pixels", "differences"):
        raise ValueError(f"spatial_frequency: unknown average {average!r}; use 'pixels' or 'differences'")
    fused = _as_image(fused, "fused")
    if fused.ndim == 3:
        fused = np.concatenate([fused[..., k] for k in range(fused.shape[2])], axis=1)
    return _spatial_frequency_2d(fused, average)


def average_gradient(fused: np.ndarray) -> float:
    """Average gradient ``AG`` of the fused image (Cui et al. 2015, as VIFB computes it).

    ``mean over pixels of sqrt((dx^2 + dy^2) / 2)`` with MATLAB's ``gradient`` (central differences
    inside, one-sided at the border), the sum over all H x W pixels divided by ``(H - 1)(W - 1)``.

    Args:
        fused: ``(H, W)`` or ``(H, W, 3)`` image in 0..255 (``(H, W, 3)``: mean over channels);
            at least 2 x 2.

    Returns:
        the average gradient, in gray levels per pixel.

    Raises:
        ValueError: an image smaller than 2 x 2.
    """
    fused = _as_image(fused, "fused")
    if min(fused.shape[:2]) < 2:
        raise ValueError(f"fused: average gradient needs an image of at least 2 x 2, got {fused.shape[:2]}")

    def _one(x: np.ndarray) -> float:
        dy, dx = np.gradient(x)
        s = np.sqrt((dx**2 + dy**2) / 2.0)
        return float(s.sum() / ((x.shape[0] - 1) * (x.shape[1] - 1)))

    return _per_channel(_one, fused)


def edge_intensity(fused: np.ndarray) -> float:
    """Edge intensity ``EI``: mean Sobel gradient magnitude of the fused image.

    MATLAB's ``fspecial('sobel')`` (not divided by 8) in both directions, ``imfilter`` correlation
    with replicated borders, ``sqrt(gx^2 + gy^2)`` averaged over all pixels (and channels).

    Args:
        fused: ``(H, W)`` or ``(H, W, 3)`` image in 0..255.

    Returns:
        the edge intensity, in gray levels.
    """
    fused = _as_image(fused, "fused")

    def _one(x: np.ndarray) -> float:
        gx = ndimage.correlate(x, _SOBEL, mode="nearest")
        gy = ndimage.correlate(x, _SOBEL.T, mode="nearest")
        return float(np.mean(np.sqrt(gx * gx + gy * gy)))

    return _per_channel(_one, fused)


def _corr2(x: np.ndarray, y: np.ndarray) -> float:
    """MATLAB ``corr2``; 0 where either image is constant (MATLAB gives NaN there)."""
    xc, yc = x - x.mean(), y - y.mean()
    denom = np.sqrt(np.sum(xc * xc) * np.sum(yc * yc))
    return float(np.sum(xc * yc) / denom) if denom > 0 else 0.0


def scd(a: np.ndarray, b: np.ndarray, f: np.ndarray) -> float:
    """Sum of the correlations of differences ``SCD`` (Aslantas & Bendes 2015).

    ``SCD = corr2(F - B, A) + corr2(F - A, B)``, in [-2, 2]. Flat-region rule: a correlation with a
    constant image (zero variance, where MATLAB's ``corr2`` returns NaN) counts as 0.

    Args:
        a: first source, ``(H, W)`` or ``(H, W, 3)``, 0..255.
        b: second source, same grid.
        f: fused image, same grid.

    Returns:
        the SCD value (``(H, W, 3)``: mean over channels).
    """
    a, b, f = _as_image(a, "a"), _as_image(b, "b"), _as_image(f, "f")
    _check_same_grid(a, b, f)
    return _per_channel(lambda x, y, z: _corr2(z - y, x) + _corr2(z - x, y), a, b, f)


def _vifb_error(x: np.ndarray, y: np.ndarray) -> float:
    """VIFB's ``mse``: ``sqrt(sum of squared differences) / pixel count``."""
    return float(np.sqrt(np.sum((x - y) ** 2)) / x.size)


def _mse(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean((x - y) ** 2))


def rmse(a: np.ndarray, b: np.ndarray, f: np.ndarray, definition: Definition = "vifb") -> float:
    """``RMSE`` between the fused image and the two sources.

    Args:
        a: first source, ``(H, W)`` or ``(H, W, 3)``, 0..255.
        b: second source, same grid.
        f: fused image, same grid.
        definition: ``"vifb"`` (default, VIFB's numbers): the mean over the two sources of
            ``sqrt(sum((S - F)^2)) / (H W)``; ``"standard"``: the mean over the two sources of the
            true root-mean-square error ``sqrt(mean((S - F)^2))``.

    Returns:
        the error (``(H, W, 3)``: mean over channels); 0 when F equals both sources.
    """
    a, b, f = _as_image(a, "a"), _as_image(b, "b"), _as_image(f, "f")
    _check_same_grid(a, b, f)
    if definition == "vifb":
        return _per_channel(lambda x, y, z: (_vifb_error(x, z) + _vifb_error(y, z)) / 2.0, a, b, f)
    if definition == "standard":
        return _per_channel(lambda x, y, z: (np.sqrt(_mse(x, z)) + np.sqrt(_mse(y, z))) / 2.0, a, b, f)
    raise ValueError(f"rmse: unknown definition {definition!r}; use 'vifb' or 'standard'")


def psnr(a: np.ndarray, b: np.ndarray, f: np.ndarray, definition: Definition = "vifb") -> float:
    """``PSNR`` of the fused image against the two sources, peak 255, in dB.

    Args:
        a: first source, ``(H, W)`` or ``(H, W, 3)``, 0..255.
        b: second source, same grid.
        f: fused image, same grid.
        definition: ``"vifb"`` (default): ``20 log10(255 / sqrt(e))`` with ``e`` the mean over the
            two sources of VIFB's ``sqrt(sum((S - F)^2)) / (H W)``; ``"standard"``:
            ``10 log10(255^2 / mse)`` with ``mse`` the mean of the two true mean squared errors.

    Returns:
        the PSNR (``(H, W, 3)``: mean over channels); ``inf`` when F equals both sources (a
        perfect score, not a missing one).
    """
    a, b, f = _as_image(a, "a"), _as_image(b, "b"), _as_image(f, "f")
    _check_same_grid(a, b, f)

    def _one(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> float:
        if definition == "vifb":
            err = (_vifb_error(x, z) + _vifb_error(y, z)) / 2.0
            return float("inf") if err == 0 else float(20.0 * np.log10(255.0 / np.sqrt(err)))
        if definition == "standard":
            err = (_mse(x, z) + _mse(y, z)) / 2.0
            return float("inf") if err == 0 else float(10.0 * np.log10(255.0**2 / err))
        raise ValueError(f"psnr: unknown definition {definition!r}; use 'vifb' or 'standard'")

    return _per_channel(_one, a, b, f)
