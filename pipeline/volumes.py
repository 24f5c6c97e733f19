"""Reading, aligning and scaling 3D scans: what ``data_prep volumes`` and volume fusion share.

Formats: NIfTI (``.nii``, ``.nii.gz``) through nibabel; a DICOM series (a folder holding one
series), MetaImage (``.mha``/``.mhd``) and NRRD (``.nrrd``/``.nhdr``) through SimpleITK. Every
reader returns a float32 SimpleITK image in ITK's LPS world (NIfTI's RAS affine is converted).

The rules, in the order :func:`align_pair` applies them:

1. **Read** both volumes (:func:`load_volume`). A 2D image, a 4D series, a colour volume, a
   corrupt or missing file, a folder of two DICOM series each get a :class:`VolumeError` naming
   the file.
2. **Refuse NaN/Inf voxels** (a scan holding them is usually a broken export, and silently
   painting them black would hide that); ``nan_as_zero`` treats them as 0 with a warning instead.
3. **Orient** both to LPS with ``sitk.DICOMOrient`` (first index to the patient's Left, second to
   Posterior, third to Superior): the third array axis is then axial, slice numbers grow from the
   feet to the head, and each axial slice shows the patient's right on the image's left. Oblique
   scans are only permuted/flipped to the nearest such orientation, which is exactly invertible
   (:func:`orient_like` puts a result back into A's own index order).
4. **One physical space**: when size, spacing, origin and direction agree within
   :data:`GRID_TOLERANCE`, B is used as is; otherwise B is resampled onto A's grid (linear,
   outside filled with B's minimum), through a rigid transform when ``register`` asks for one
   (:func:`register_rigid`: Euler3DTransform, Mattes mutual information). Volumes whose physical
   extents do not overlap at all are refused (without registration) as they cannot be one
   subject in one space.
5. **Intensities to [0, 1]** (:func:`to_unit`): CT is windowed in Hounsfield units
   (:data:`CT_WINDOWS`, brain L40/W80 by default); MRI, PET and SPECT (any non-CT modality) are
   scaled linearly between two percentiles of the volume (0.5 and 99.5 by default, taken over
   the voxels B covers) and clipped. B's voxels outside its own extent are 0 (no signal).

Nothing in this module writes files. :class:`VolumeError` is a ``ValueError`` (and a
:class:`pipeline.datalist.DatalistError`, which ``data_prep`` calls ``DataPrepError``), so both
command lines print it as one ``error:`` line.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from pipeline.datalist import DatalistError

__all__ = [
    "CT_WINDOWS",
    "DEFAULT_PERCENTILES",
    "GRID_TOLERANCE",
    "REGISTRATION_SAMPLES",
    "VOLUME_SUFFIXES",
    "VolumeError",
    "AlignedPair",
    "is_volume_path",
    "load_volume",
    "same_space",
    "resample_onto",
    "register_rigid",
    "window_ct",
    "scale_percentiles",
    "to_unit",
    "parse_window",
    "align_pair",
    "orient_like",
    "physical_extent",
]

#: Named CT windows as (level, width) in Hounsfield units (standard radiology presets).
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "brain": (40.0, 80.0),
    "subdural": (75.0, 215.0),
    "bone": (600.0, 2800.0),
}

#: Percentiles of a non-CT volume mapped to 0 and 1.
DEFAULT_PERCENTILES = (0.5, 99.5)

#: Voxels sampled per metric evaluation in rigid registration (all of them in small volumes).
REGISTRATION_SAMPLES = 200_000

#: Tolerances for "the two volumes already share one grid": spacing relative, origin in
#: fractions of the smallest voxel, direction cosines absolute.
GRID_TOLERANCE = {"spacing_rel": 1e-4, "origin_voxels": 1e-2, "direction_abs": 1e-4}

_NIFTI_SUFFIXES = (".nii", ".nii.gz")
_SITK_SUFFIXES = (".mha", ".mhd", ".nrrd", ".nhdr")

#: File name endings read as volumes (a folder is read as one DICOM series).
VOLUME_SUFFIXES = _NIFTI_SUFFIXES + _SITK_SUFFIXES


class VolumeError(DatalistError):
    """A volume that cannot be used; the message names the file and the fix.

    A subclass of :class:`pipeline.datalist.DatalistError` (``data_prep.DataPrepError``) so that
    ``python -m data_prep volumes`` reports it as it reports every other bad input.
    """


def is_volume_path(path: str | os.PathLike) -> bool:
    """True for what :func:`load_volume` reads: a folder (DICOM series) or a volume file name.

    Args:
        path: a path given on a command line.

    Returns:
        whether it names a folder or ends in one of :data:`VOLUME_SUFFIXES` (any case).
    """
    p = Path(path)
    return p.is_dir() or p.name.lower().endswith(VOLUME_SUFFIXES)


# ----------------------------------------------------------------------------------------- reading


def load_volume(path: str | os.PathLike, nan_as_zero: bool = False) -> sitk.Image:
    """Read one 3D scalar volume with its physical geometry, as a float32 SimpleITK image.

    Args:
        path: a NIfTI file (read with nibabel), an MHA/MHD/NRRD file, or a folder holding one
            DICOM series (read with SimpleITK; CT values come out in HU through the rescale tags).
        nan_as_zero: replace NaN/Inf voxels by 0 with a warning instead of refusing them.

    Returns:
        float32 ``sitk.Image`` of dimension 3, in ITK's LPS world coordinates.

    Raises:
        VolumeError: missing path, unreadable/corrupt file, no or several DICOM series in the
            folder, a 2D image, a 4D series, a colour volume, a sheared NIfTI affine, or NaN/Inf
            voxels (unless ``nan_as_zero``).
    """
    path = Path(path)
    if not path.exists():
        raise VolumeError(f"{path}: no such file or folder. Check the volume path")
    if path.is_dir():
        image = _read_dicom_series(path)
    elif path.name.lower().endswith(_NIFTI_SUFFIXES):
        image = _read_nifti(path)
    else:
        image = _read_with_sitk(path)
    image = _as_3d_scalar(path, image)
    return _check_finite(path, image, nan_as_zero)


def _read_nifti(path: Path) -> sitk.Image:
    import nibabel as nib

    try:
        nii = nib.load(str(path))
        declared = math.prod(int(n) for n in nii.shape) * nii.get_data_dtype().itemsize
    except Exception as err:
        raise VolumeError(f"{path}: cannot be read as NIfTI ({type(err).__name__}: {err}). "
                            "The file is corrupt or truncated: re-export it") from err
    size = path.stat().st_size
    # deflate cannot shrink data more than ~1032:1, so a .nii.gz holds at most ~1100x its size
    room = size * 1100 if path.name.lower().endswith(".gz") else size
    if declared > room:
        raise VolumeError(f"{path}: its header declares {nii.shape} voxels ({declared} bytes) but the file "
                            f"has {size} bytes. The file is corrupt or truncated: re-export it")
    try:
        data = np.asarray(nii.get_fdata(dtype=np.float32))
        affine = np.asarray(nii.affine, dtype=np.float64)
    except Exception as err:  # nibabel raises many types for a broken file (EOF, zlib, header)
        raise VolumeError(f"{path}: cannot be read as NIfTI ({type(err).__name__}: {err}). "
                            "The file is corrupt or truncated: re-export it") from err
    while data.ndim > 3 and data.shape[-1] == 1:  # (X, Y, Z, 1) is one volume
        data = data[..., 0]
    if data.ndim == 2:
        raise VolumeError(f"{path}: is a 2D image {data.shape}, not a volume. Give a 3D scan, or use "
                            "`python -m data_prep harvard` for 2D slice pairs")
    if data.ndim != 3:
        raise VolumeError(f"{path}: has shape {data.shape}; a single 3D scalar volume is expected. "
                            "Extract one 3D volume (e.g. one time point) first")
    linear = affine[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    if np.any(spacing <= 0) or not np.all(np.isfinite(affine)):
        raise VolumeError(f"{path}: its affine has a zero or non-finite voxel size. Fix the header "
                            "(sform/qform) before converting")
    direction_ras = linear / spacing
    if np.abs(direction_ras.T @ direction_ras - np.eye(3)).max() > 1e-3:
        raise VolumeError(f"{path}: its affine is sheared (axes not orthogonal); SimpleITK cannot "
                            "represent it. Resample it to an orthogonal grid first")
    ras_to_lps = np.diag([-1.0, -1.0, 1.0])  # NIfTI world is RAS, ITK world is LPS
    image = sitk.GetImageFromArray(np.ascontiguousarray(data.transpose(2, 1, 0)))  # array is z, y, x
    image.SetSpacing(spacing.tolist())
    image.SetOrigin((ras_to_lps @ affine[:3, 3]).tolist())
    image.SetDirection((ras_to_lps @ direction_ras).ravel().tolist())
    return image


def _read_dicom_series(folder: Path) -> sitk.Image:
    try:
        series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    except RuntimeError as err:
        raise VolumeError(f"{folder}: cannot be scanned for DICOM files ({err})") from err
    if not series:
        raise VolumeError(f"{folder}: holds no DICOM series. Give a folder of one DICOM series, or a "
                            "NIfTI/MHA/NRRD file")
    if len(series) > 1:
        raise VolumeError(f"{folder}: holds {len(series)} DICOM series ({', '.join(series)}). "
                            "Put each series in its own folder and give that folder")
    try:
        files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series[0])
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(files)
        return reader.Execute()
    except RuntimeError as err:
        raise VolumeError(f"{folder}: the DICOM series cannot be read ({_first_line(err)}). "
                            "A file may be corrupt or the slices inconsistent: re-export the series") from err


def _check_detached_data(path: Path) -> None:
    """Refuse an MHD/MHA/NHDR/NRRD header whose data file lies outside the header's folder."""
    if not path.name.lower().endswith(_SITK_SUFFIXES):
        return
    try:
        with open(path, "rb") as fh:
            head = fh.read(65536).split(b"\n\n", 1)[0].decode("latin-1")
    except OSError as err:
        raise VolumeError(f"{path}: cannot be read ({err.strerror or err})") from err
    for line in head.splitlines():
        key, _, value = line.partition("=" if path.suffix.lower() in (".mha", ".mhd") else ":")
        if key.strip().lower() in ("elementdatafile", "data file", "datafile"):
            name = value.strip().split(" ")[0] if value.strip() else ""
            if name.upper() in ("LOCAL", "LIST", ""):
                continue
            folder = path.parent.resolve()
            if folder not in (folder / name).resolve().parents:
                raise VolumeError(f"{path}: its header points at data file {name!r} outside {folder}. "
                                    "Keep the header and its data file in one folder")


def _read_with_sitk(path: Path) -> sitk.Image:
    _check_detached_data(path)
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as err:
        known = path.name.lower().endswith(_SITK_SUFFIXES)
        what = "is corrupt or truncated: re-export it" if known else (
            "is not a supported volume: give NIfTI (.nii/.nii.gz), MHA/MHD, NRRD or a DICOM series folder")
        raise VolumeError(f"{path}: cannot be read as a volume ({_first_line(err)}). "
                            f"The file {what}") from err


def _first_line(err: BaseException) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return lines[-1] if lines else type(err).__name__


def _as_3d_scalar(path: Path, image: sitk.Image) -> sitk.Image:
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise VolumeError(f"{path}: has {image.GetNumberOfComponentsPerPixel()} components per voxel "
                            "(colour or vector data); a scalar volume is expected. Convert it to gray first")
    if image.GetDimension() == 4 and image.GetSize()[3] == 1:
        image = image[:, :, :, 0]
    if image.GetDimension() == 2:
        w, h = image.GetSize()
        raise VolumeError(f"{path}: is a 2D image ({w}x{h}), not a volume. Give a 3D scan, or use "
                            "`python -m data_prep harvard` for 2D slice pairs")
    if image.GetDimension() != 3:
        raise VolumeError(f"{path}: has {image.GetDimension()} dimensions {image.GetSize()}; a single 3D "
                            "volume is expected. Extract one 3D volume first")
    return sitk.Cast(image, sitk.sitkFloat32)


def _check_finite(path: Path, image: sitk.Image, nan_as_zero: bool) -> sitk.Image:
    arr = sitk.GetArrayViewFromImage(image)
    bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
    if bad == 0:
        return image
    if not nan_as_zero:
        raise VolumeError(f"{path}: {bad} of {arr.size} voxels are NaN or Inf; the volume is probably a "
                            "broken export. Fix it, or pass --nan-as-zero to treat them as 0")
    warnings.warn(f"{path}: {bad} NaN/Inf voxels treated as 0 (--nan-as-zero)", stacklevel=2)
    fixed = np.nan_to_num(sitk.GetArrayFromImage(image), nan=0.0, posinf=0.0, neginf=0.0)
    out = sitk.GetImageFromArray(fixed)
    out.CopyInformation(image)
    return out


# ---------------------------------------------------------------------------------------- geometry


def same_space(a: sitk.Image, b: sitk.Image) -> bool:
    """True when ``a`` and ``b`` share size, spacing, origin and direction within :data:`GRID_TOLERANCE`."""
    if a.GetSize() != b.GetSize():
        return False
    sa, sb = np.array(a.GetSpacing()), np.array(b.GetSpacing())
    if np.any(np.abs(sa - sb) > GRID_TOLERANCE["spacing_rel"] * sa):
        return False
    if np.any(np.abs(np.array(a.GetOrigin()) - b.GetOrigin()) > GRID_TOLERANCE["origin_voxels"] * sa.min()):
        return False
    direction_gap = np.abs(np.array(a.GetDirection()) - b.GetDirection())
    return bool(np.all(direction_gap <= GRID_TOLERANCE["direction_abs"]))


def resample_onto(moving: sitk.Image, fixed: sitk.Image,
                  transform: sitk.Transform | None = None) -> tuple[sitk.Image, np.ndarray]:
    """Resample ``moving`` onto ``fixed``'s grid (linear), through ``transform`` if given.

    Args:
        moving: the volume to resample (B).
        fixed: the reference grid (A).
        transform: maps fixed physical points to moving ones (as SimpleITK registration returns);
            identity when ``None``.

    Returns:
        the resampled float32 image (outside ``moving`` filled with its minimum, i.e. background)
        and the boolean coverage mask ``(z, y, x)``: which fixed voxels fall inside ``moving``.
    """
    transform = transform or sitk.Transform(3, sitk.sitkIdentity)
    background = float(sitk.GetArrayViewFromImage(moving).min())
    out = sitk.Resample(moving, fixed, transform, sitk.sitkLinear, background, sitk.sitkFloat32)
    ones = sitk.Image(moving.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(moving)
    cover = sitk.Resample(ones, fixed, transform, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return out, sitk.GetArrayFromImage(cover).astype(bool)


def register_rigid(fixed: sitk.Image, moving: sitk.Image, seed: int = 42) -> tuple[sitk.Transform, dict]:
    """Estimate the rigid transform that aligns ``moving`` (B) to ``fixed`` (A).

    Euler3DTransform started by the geometry-centred initialiser (the volumes' centres brought
    together), Mattes mutual information (32 bins; about :data:`REGISTRATION_SAMPLES` random
    voxels, at least 1 %, drawn with a fixed seed on one thread so that the same input gives the
    same result), regular-step gradient descent with physical-shift scales, two or three
    resolution levels (shrink 4-2-1 when the volume is large enough). Mutual information makes it
    work across modalities (CT vs MRI).

    Args:
        fixed: the reference volume (A).
        moving: the volume to align (B).
        seed: sampling seed (not 0: SimpleITK reads 0 as "seed from the clock").

    Returns:
        the transform (fixed points -> moving points) and a report: ``translation_mm``,
        ``rotation_deg``, ``metric``, ``iterations``, ``stop``.

    Raises:
        VolumeError: the optimiser fails (e.g. the volumes hold nothing in common).
    """
    initial = sitk.CenteredTransformInitializer(
        fixed, moving, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.GEOMETRY)
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    fraction = float(np.clip(REGISTRATION_SAMPLES / np.prod(fixed.GetSize()), 0.01, 1.0))
    reg.SetMetricSamplingPercentage(fraction, seed)
    reg.SetInterpolator(sitk.sitkLinear)
    min_spacing = min(fixed.GetSpacing())
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=2.0 * min_spacing, minStep=1e-3 * min_spacing, numberOfIterations=200,
        relaxationFactor=0.5, gradientMagnitudeTolerance=1e-8)
    reg.SetOptimizerScalesFromPhysicalShift()
    shrink = [4, 2, 1] if min(fixed.GetSize()) >= 64 else [2, 1]
    reg.SetShrinkFactorsPerLevel(shrink)
    reg.SetSmoothingSigmasPerLevel([f / 2.0 if f > 1 else 0.0 for f in shrink])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    reg.SetInitialTransform(initial, inPlace=False)
    reg.SetNumberOfThreads(1)  # one thread: the same input gives bit-identical results
    try:
        final = reg.Execute(fixed, moving)
    except RuntimeError as err:
        raise VolumeError(f"rigid registration failed ({_first_line(err)}). Check that both volumes show "
                            "the same subject, or resample them roughly onto one space first") from err
    euler = sitk.Euler3DTransform(sitk.CompositeTransform(final).GetNthTransform(0)) \
        if final.GetName() == "CompositeTransform" else sitk.Euler3DTransform(final)
    report = {
        "translation_mm": [round(float(v), 4) for v in euler.GetTranslation()],
        "rotation_deg": [round(math.degrees(v), 4)
                         for v in (euler.GetAngleX(), euler.GetAngleY(), euler.GetAngleZ())],
        "center_mm": [round(float(v), 4) for v in euler.GetCenter()],
        "metric": round(float(reg.GetMetricValue()), 6),
        "iterations": int(reg.GetOptimizerIteration()),
        "stop": reg.GetOptimizerStopConditionDescription(),
    }
    return final, report


# ----------------------------------------------------------------------------------- intensities


def window_ct(hu: np.ndarray, level: float, width: float) -> np.ndarray:
    """CT in Hounsfield units -> float [0, 1]: ``level - width/2`` -> 0, ``level + width/2`` -> 1, clipped.

    Args:
        hu: voxel values in HU.
        level: window centre in HU.
        width: window width in HU (> 0).

    Returns:
        float32 array in [0, 1].
    """
    if not width > 0:
        raise VolumeError(f"CT window width must be positive, got {width}")
    low = level - width / 2.0
    return np.clip((hu.astype(np.float32) - low) / width, 0.0, 1.0)


def scale_percentiles(values: np.ndarray, low: float, high: float, mask: np.ndarray | None = None,
                      name: str = "volume") -> np.ndarray:
    """Scale linearly so that the ``low`` and ``high`` percentiles map to 0 and 1, then clip.

    Args:
        values: the volume.
        low: low percentile (0..100).
        high: high percentile (0..100, > ``low``).
        mask: voxels the percentiles are taken over (e.g. those covered by a resampled B).
        name: for the error message.

    Returns:
        float32 array in [0, 1].

    Raises:
        VolumeError: bad percentiles, or a volume whose two percentiles are equal (constant).
    """
    if not 0.0 <= low < high <= 100.0:
        raise VolumeError(f"percentiles must satisfy 0 <= low < high <= 100, got {low} {high}")
    sample = values[mask] if mask is not None else values
    if sample.size == 0:
        raise VolumeError(f"{name}: no voxel to take percentiles over")
    lo, hi = np.percentile(sample, [low, high])
    if not hi > lo:
        raise VolumeError(f"{name}: its {low} and {high} percentiles are equal ({lo:g}); the volume is "
                            "constant or nearly so. Check the file, or widen --percentiles")
    return np.clip((values.astype(np.float32) - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def to_unit(values: np.ndarray, modality: str, window: tuple[float, float] = CT_WINDOWS["brain"],
            percentiles: tuple[float, float] = DEFAULT_PERCENTILES, mask: np.ndarray | None = None,
            name: str = "volume") -> np.ndarray:
    """One volume to float [0, 1] by its modality's rule: CT windowed in HU, others by percentiles.

    Args:
        values: the voxel values.
        modality: ``CT`` (case-insensitive) is windowed; any other modality is percentile-scaled.
        window: CT ``(level, width)`` in HU.
        percentiles: low/high percentiles for the other modalities.
        mask: voxels the percentiles are taken over (e.g. those a resampled B covers).
        name: for error messages (the file).

    Returns:
        float32 array in [0, 1], the shape of ``values``.

    Raises:
        VolumeError: a bad window or percentiles, or a constant volume.
    """
    if modality.upper() == "CT":
        return window_ct(values, *window)
    return scale_percentiles(values, *percentiles, mask=mask, name=name)


def physical_extent(image: sitk.Image) -> str:
    """The image's bounding box in world millimetres (LPS), for messages: ``[x0..x1, y0..y1, z0..z1]``.

    Args:
        image: a 3D image.

    Returns:
        the extent as text, voxel edges included.
    """
    corners = [image.TransformContinuousIndexToPhysicalPoint([c * (s - 0.5) + (1 - c) * -0.5
                                                              for c, s in zip(bits, image.GetSize())])
               for bits in np.ndindex(2, 2, 2)]
    lo, hi = np.min(corners, axis=0), np.max(corners, axis=0)
    return "[" + ", ".join(f"{a:.1f}..{b:.1f}" for a, b in zip(lo, hi)) + "]"


@dataclass
class AlignedPair:
    """Two volumes on one LPS-oriented grid (A's), as :func:`align_pair` makes them.

    Attributes:
        a: volume A oriented to LPS (its grid is the reference), float32.
        a_native: volume A as read, in its own index order (the geometry outputs keep).
        values_a: A's voxels, ``(z, y, x)`` array of ``a``.
        values_b: B's voxels on ``a``'s grid, ``(z, y, x)``.
        cover: which voxels of ``a``'s grid B covers (``None``: B already shared the grid).
        report: what was done (file names, orientation, resampling, coverage, registration).
    """

    a: sitk.Image
    a_native: sitk.Image
    values_a: np.ndarray
    values_b: np.ndarray
    cover: np.ndarray | None
    report: dict = field(default_factory=dict)

    def units(self, modality_a: str, modality_b: str, window: tuple[float, float] = CT_WINDOWS["brain"],
              percentiles: tuple[float, float] = DEFAULT_PERCENTILES) -> tuple[np.ndarray, np.ndarray]:
        """Both volumes in [0, 1] by :func:`to_unit`; B is 0 outside its own extent.

        Args:
            modality_a: modality of A (``CT`` is windowed).
            modality_b: modality of B.
            window: CT window ``(level, width)`` in HU.
            percentiles: percentiles for the non-CT modalities.

        Returns:
            ``(unit_a, unit_b)``, float32 ``(z, y, x)`` arrays on A's LPS grid.
        """
        name_a, name_b = self.report.get("path_a", "A"), self.report.get("path_b", "B")
        if modality_a.upper() == "CT" and float(self.values_a.min()) >= 0:
            print(f"warning: {name_a}: CT has no negative values; it may not be in Hounsfield units "
                  "(e.g. stored with an offset of 1024). Check the window", file=sys.stderr)
        unit_a = to_unit(self.values_a, modality_a, window, percentiles, None, name_a)
        unit_b = to_unit(self.values_b, modality_b, window, percentiles, self.cover, name_b)
        if self.cover is not None:
            unit_b = np.where(self.cover, unit_b, 0.0).astype(np.float32)  # outside B is no signal
        return unit_a, unit_b


def align_pair(path_a: str | os.PathLike, path_b: str | os.PathLike, register: bool = False,
               nan_as_zero: bool = False) -> AlignedPair:
    """Read two volumes and put B onto A's LPS-oriented grid (steps 1-4 of the module's rules).

    Args:
        path_a: volume A (its grid is the reference).
        path_b: volume B (resampled onto A when the grids differ).
        register: estimate a rigid transform (Mattes MI) before resampling B.
        nan_as_zero: treat NaN/Inf voxels as 0 (with a warning) instead of refusing them.

    Returns:
        the :class:`AlignedPair`.

    Raises:
        VolumeError: an unusable volume (see :func:`load_volume`), no physical overlap, or a failed
            registration.
    """
    a_native = load_volume(path_a, nan_as_zero)
    a = sitk.DICOMOrient(a_native, "LPS")
    b = sitk.DICOMOrient(load_volume(path_b, nan_as_zero), "LPS")
    report: dict = {"a": Path(path_a).name, "b": Path(path_b).name, "orientation": "LPS",
                    "size_a": list(a.GetSize()), "spacing_a": [round(s, 6) for s in a.GetSpacing()]}
    transform = None
    if register:
        transform, report["registration"] = register_rigid(a, b)
    if transform is None and same_space(a, b):
        values_b, cover = sitk.GetArrayFromImage(b), None
        report["resampled"] = False
    else:
        b_on_a, cover = resample_onto(b, a, transform)
        fraction = float(cover.mean())
        if fraction == 0.0:
            raise VolumeError(
                f"{path_b}: does not overlap {path_a} in physical space at all (B's extent "
                f"{physical_extent(b)} mm vs A's {physical_extent(a)} mm, LPS). They cannot be one "
                "subject in one space: check the headers (origin/orientation), or pass --register to "
                "align them")
        if fraction < 0.5:
            print(f"warning: {path_b} covers only {fraction:.0%} of {path_a}'s grid after "
                  "resampling", file=sys.stderr)
        values_b = sitk.GetArrayFromImage(b_on_a)
        report["resampled"] = True
        report["coverage_of_a"] = round(fraction, 4)
    aligned = AlignedPair(a=a, a_native=a_native, values_a=sitk.GetArrayFromImage(a), values_b=values_b,
                          cover=cover, report=report)
    report["path_a"], report["path_b"] = str(path_a), str(path_b)
    return aligned


def orient_like(values: np.ndarray, oriented: sitk.Image, native: sitk.Image) -> sitk.Image:
    """Put a result computed on ``oriented`` (``native`` after ``DICOMOrient``) back onto ``native``'s grid.

    ``DICOMOrient`` only permutes and flips axes, so this is exact: every voxel returns to the
    index it had in ``native``, and the image carries ``native``'s size, spacing, origin and
    direction, so it overlays ``native`` in any viewer.

    Args:
        values: ``(z, y, x)`` array on ``oriented``'s grid.
        oriented: the LPS-oriented grid ``values`` lives on.
        native: the grid to return to.

    Returns:
        the image on ``native``'s grid, of ``values``' dtype.

    Raises:
        ValueError: ``values`` does not fit ``oriented``, or ``oriented`` is not a permutation of ``native``.
    """
    if values.shape != sitk.GetArrayViewFromImage(oriented).shape:
        raise ValueError(f"orient_like: values of shape {values.shape} do not fit the grid "
                         f"{oriented.GetSize()[::-1]} (z, y, x)")
    image = sitk.GetImageFromArray(values)
    image.CopyInformation(oriented)
    code = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(native.GetDirection())
    back = sitk.DICOMOrient(image, code)
    if back.GetSize() != native.GetSize() or not np.allclose(back.GetOrigin(), native.GetOrigin(),
                                                             atol=1e-3 * min(native.GetSpacing())):
        raise ValueError("orient_like: the oriented grid is not a permutation of the native one")
    back.CopyInformation(native)  # the very numbers of A's header, not their round trip
    return back


def parse_window(text: str) -> tuple[float, float]:
    """A CT window from the command line: a name of :data:`CT_WINDOWS` or ``LEVEL,WIDTH`` in HU.

    Args:
        text: e.g. ``brain`` or ``40,80``.

    Returns:
        ``(level, width)`` in HU.

    Raises:
        argparse.ArgumentTypeError: neither a known name nor two numbers, or a width that is not positive.
    """
    if text.lower() in CT_WINDOWS:
        return CT_WINDOWS[text.lower()]
    try:
        level, width = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"window {text!r}: give one of {', '.join(CT_WINDOWS)} or LEVEL,WIDTH in HU (e.g. 40,80)"
        ) from None
    if not width > 0:
        raise argparse.ArgumentTypeError(f"window {text!r}: the width must be positive")
    return level, width
