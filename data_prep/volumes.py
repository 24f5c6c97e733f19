"""``python -m data_prep volumes A_VOLUME B_VOLUME OUT``: two 3D scans of one subject -> slice pairs.

Formats: NIfTI (``.nii``, ``.nii.gz``) through nibabel; a DICOM series (a folder holding one
series), MetaImage (``.mha``/``.mhd``) and NRRD (``.nrrd``/``.nhdr``) through SimpleITK.

What it does, in order:

1. **Read** both volumes into SimpleITK images with their physical geometry (NIfTI's RAS affine is
   converted to ITK's LPS world). A 2D image, a 4D series, a colour volume, a corrupt or missing
   file each get a :class:`~data_prep.datalist.DataPrepError` naming the file.
2. **Refuse NaN/Inf voxels** (the chosen behaviour: a scan holding them is usually a broken
   export, and silently painting them black would hide that). ``--nan-as-zero`` treats them as 0
   with a warning instead.
3. **Orient** both to LPS with ``sitk.DICOMOrient`` (first index to the patient's Left, second to
   Posterior, third to Superior), so that every axial slice is shown the radiological way: the
   patient's right on the image's left, anterior at the top, and slice numbers grow from the feet
   to the head. Oblique scans are only permuted/flipped to the nearest such orientation.
4. **One physical space**: when size, spacing, origin and direction agree within
   :data:`GRID_TOLERANCE`, B is used as is; otherwise B is resampled onto A's grid (linear
   interpolation, outside filled with B's minimum). ``--register`` first estimates a rigid
   transform (Euler3DTransform, geometry-centred initialiser, Mattes mutual information,
   multi-resolution gradient descent) and resamples B through it. Volumes whose physical extents
   do not overlap at all are refused (without ``--register``) as they cannot be one subject in one
   space.
5. **8 bits**: CT is windowed in Hounsfield units (``--window``, brain L40/W80 by default); MRI,
   PET and SPECT (any non-CT modality) are scaled linearly between two percentiles of the volume
   (``--percentiles 0.5 99.5``) and clipped. Colour is not invented: PET/SPECT stay gray here.
6. **Slices**: each axial slice is padded to a physical square (so a non-square field of view or
   anisotropic pixels keep their true aspect) and resized to ``--size`` (256) pixels. Slices whose
   foreground fraction (pixels above :data:`FOREGROUND_LEVEL` of 255) is below
   ``--min-foreground`` in either modality are dropped.
7. **Write** with :func:`~data_prep.datalist.write_dataset` (staged: nothing half-written in OUT).
   The case id is ``--case`` or derived from A's file name. A single case cannot be split by
   fractions, so all its slices go to one split: ``--split`` (default ``test``, since a lone
   subject is usually fused, not trained on), or explicit ``--training-cases`` /
   ``--validation-cases`` / ``--test-cases`` lists that name it.

Slice numbers in the datalist are the axial index in A's LPS-oriented grid (0 = most inferior).
Library images are float in [0, 1] after loading (PNG / 255); this module only writes 0..255 PNGs.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from PIL import Image

from data_prep.datalist import SPLITS, DataPrepError, SlicePair, SplitSpec, write_dataset

__all__ = [
    "CT_WINDOWS",
    "FOREGROUND_LEVEL",
    "GRID_TOLERANCE",
    "VolumeOptions",
    "load_volume",
    "same_space",
    "resample_onto",
    "register_rigid",
    "window_ct",
    "scale_percentiles",
    "to_square_slice",
    "volume_slice_pairs",
    "case_id_from_path",
    "add_arguments",
    "run",
]

#: Named CT windows as (level, width) in Hounsfield units (standard radiology presets).
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "brain": (40.0, 80.0),
    "subdural": (75.0, 215.0),
    "bone": (600.0, 2800.0),
}

#: An 8-bit pixel counts as foreground above this level (about 4% of full scale): air, padding
#: and MR background noise stay below it after windowing / percentile scaling.
FOREGROUND_LEVEL = 10

#: Voxels sampled per metric evaluation in rigid registration (all of them in small volumes).
REGISTRATION_SAMPLES = 200_000

#: Tolerances for "the two volumes already share one grid": spacing relative, origin in
#: fractions of the smallest voxel, direction cosines absolute.
GRID_TOLERANCE = {"spacing_rel": 1e-4, "origin_voxels": 1e-2, "direction_abs": 1e-4}

_NIFTI_SUFFIXES = (".nii", ".nii.gz")
_SITK_SUFFIXES = (".mha", ".mhd", ".nrrd", ".nhdr")
_MODALITY_RE = re.compile(r"^[A-Za-z0-9]+$")


@dataclass
class VolumeOptions:
    """How two volumes become 8-bit slice pairs (the CLI options, as a value).

    Attributes:
        modality_a: modality of A, e.g. ``"CT"`` (CT is windowed in HU, others scaled by percentiles).
        modality_b: modality of B, e.g. ``"MRI"``.
        window: CT window ``(level, width)`` in HU.
        percentiles: low/high percentiles for non-CT scaling.
        register: estimate a rigid transform (Mattes MI) before resampling B onto A.
        min_foreground: drop a slice whose foreground fraction is below this in A or B.
        size: output slice side in pixels.
        nan_as_zero: treat NaN/Inf voxels as 0 (with a warning) instead of refusing the volume.
    """

    modality_a: str = "CT"
    modality_b: str = "MRI"
    window: tuple[float, float] = CT_WINDOWS["brain"]
    percentiles: tuple[float, float] = (0.5, 99.5)
    register: bool = False
    min_foreground: float = 0.05
    size: int = 256
    nan_as_zero: bool = False
    report: dict = field(default_factory=dict)  # filled with what was done (for the datalist)


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
        DataPrepError: missing path, unreadable/corrupt file, no or several DICOM series in the
            folder, a 2D image, a 4D series, a colour volume, a sheared NIfTI affine, or NaN/Inf
            voxels (unless ``nan_as_zero``).
    """
    path = Path(path)
    if not path.exists():
        raise DataPrepError(f"{path}: no such file or folder. Check the volume path")
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
        raise DataPrepError(f"{path}: cannot be read as NIfTI ({type(err).__name__}: {err}). "
                            "The file is corrupt or truncated: re-export it") from err
    size = path.stat().st_size
    # deflate cannot shrink data more than ~1032:1, so a .nii.gz holds at most ~1100x its size
    room = size * 1100 if path.name.lower().endswith(".gz") else size
    if declared > room:
        raise DataPrepError(f"{path}: its header declares {nii.shape} voxels ({declared} bytes) but the file "
                            f"has {size} bytes. The file is corrupt or truncated: re-export it")
    try:
        data = np.asarray(nii.get_fdata(dtype=np.float32))
        affine = np.asarray(nii.affine, dtype=np.float64)
    except Exception as err:  # nibabel raises many types for a broken file (EOF, zlib, header)
        raise DataPrepError(f"{path}: cannot be read as NIfTI ({type(err).__name__}: {err}). "
                            "The file is corrupt or truncated: re-export it") from err
    while data.ndim > 3 and data.shape[-1] == 1:  # (X, Y, Z, 1) is one volume
        data = data[..., 0]
    if data.ndim == 2:
        raise DataPrepError(f"{path}: is a 2D image {data.shape}, not a volume. Give a 3D scan, or use "
                            "`python -m data_prep harvard` for 2D slice pairs")
    if data.ndim != 3:
        raise DataPrepError(f"{path}: has shape {data.shape}; a single 3D scalar volume is expected. "
                            "Extract one 3D volume (e.g. one time point) first")
    linear = affine[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    if np.any(spacing <= 0) or not np.all(np.isfinite(affine)):
        raise DataPrepError(f"{path}: its affine has a zero or non-finite voxel size. Fix the header "
                            "(sform/qform) before converting")
    direction_ras = linear / spacing
    if np.abs(direction_ras.T @ direction_ras - np.eye(3)).max() > 1e-3:
        raise DataPrepError(f"{path}: its affine is sheared (axes not orthogonal); SimpleITK cannot "
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
        raise DataPrepError(f"{folder}: cannot be scanned for DICOM files ({err})") from err
    if not series:
        raise DataPrepError(f"{folder}: holds no DICOM series. Give a folder of one DICOM series, or a "
                            "NIfTI/MHA/NRRD file")
    if len(series) > 1:
        raise DataPrepError(f"{folder}: holds {len(series)} DICOM series ({', '.join(series)}). "
                            "Put each series in its own folder and give that folder")
    try:
        files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series[0])
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(files)
        return reader.Execute()
    except RuntimeError as err:
        raise DataPrepError(f"{folder}: the DICOM series cannot be read ({_first_line(err)}). "
                            "A file may be corrupt or the slices inconsistent: re-export the series") from err


def _check_detached_data(path: Path) -> None:
    """Refuse an MHD/MHA/NHDR/NRRD header whose data file lies outside the header's folder."""
    if not path.name.lower().endswith(_SITK_SUFFIXES):
        return
    try:
        with open(path, "rb") as fh:
            head = fh.read(65536).split(b"\n\n", 1)[0].decode("latin-1")
    except OSError as err:
        raise DataPrepError(f"{path}: cannot be read ({err.strerror or err})") from err
    for line in head.splitlines():
        key, _, value = line.partition("=" if path.suffix.lower() in (".mha", ".mhd") else ":")
        if key.strip().lower() in ("elementdatafile", "data file", "datafile"):
            name = value.strip().split(" ")[0] if value.strip() else ""
            if name.upper() in ("LOCAL", "LIST", ""):
                continue
            folder = path.parent.resolve()
            if folder not in (folder / name).resolve().parents:
                raise DataPrepError(f"{path}: its header points at data file {name!r} outside {folder}. "
                                    "Keep the header and its data file in one folder")


def _read_with_sitk(path: Path) -> sitk.Image:
    _check_detached_data(path)
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as err:
        known = path.name.lower().endswith(_SITK_SUFFIXES)
        what = "is corrupt or truncated: re-export it" if known else (
            "is not a supported volume: give NIfTI (.nii/.nii.gz), MHA/MHD, NRRD or a DICOM series folder")
        raise DataPrepError(f"{path}: cannot be read as a volume ({_first_line(err)}). "
                            f"The file {what}") from err


def _first_line(err: BaseException) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return lines[-1] if lines else type(err).__name__


def _as_3d_scalar(path: Path, image: sitk.Image) -> sitk.Image:
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise DataPrepError(f"{path}: has {image.GetNumberOfComponentsPerPixel()} components per voxel "
                            "(colour or vector data); a scalar volume is expected. Convert it to gray first")
    if image.GetDimension() == 4 and image.GetSize()[3] == 1:
        image = image[:, :, :, 0]
    if image.GetDimension() == 2:
        w, h = image.GetSize()
        raise DataPrepError(f"{path}: is a 2D image ({w}x{h}), not a volume. Give a 3D scan, or use "
                            "`python -m data_prep harvard` for 2D slice pairs")
    if image.GetDimension() != 3:
        raise DataPrepError(f"{path}: has {image.GetDimension()} dimensions {image.GetSize()}; a single 3D "
                            "volume is expected. Extract one 3D volume first")
    return sitk.Cast(image, sitk.sitkFloat32)


def _check_finite(path: Path, image: sitk.Image, nan_as_zero: bool) -> sitk.Image:
    arr = sitk.GetArrayViewFromImage(image)
    bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
    if bad == 0:
        return image
    if not nan_as_zero:
        raise DataPrepError(f"{path}: {bad} of {arr.size} voxels are NaN or Inf; the volume is probably a "
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
        DataPrepError: the optimiser fails (e.g. the volumes hold nothing in common).
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
        raise DataPrepError(f"rigid registration failed ({_first_line(err)}). Check that both volumes show "
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
        raise DataPrepError(f"CT window width must be positive, got {width}")
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
        DataPrepError: bad percentiles, or a volume whose two percentiles are equal (constant).
    """
    if not 0.0 <= low < high <= 100.0:
        raise DataPrepError(f"percentiles must satisfy 0 <= low < high <= 100, got {low} {high}")
    sample = values[mask] if mask is not None else values
    if sample.size == 0:
        raise DataPrepError(f"{name}: no voxel to take percentiles over")
    lo, hi = np.percentile(sample, [low, high])
    if not hi > lo:
        raise DataPrepError(f"{name}: its {low} and {high} percentiles are equal ({lo:g}); the volume is "
                            "constant or nearly so. Check the file, or widen --percentiles")
    return np.clip((values.astype(np.float32) - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def _to_unit(values: np.ndarray, modality: str, opts: VolumeOptions, mask: np.ndarray | None,
             name: str) -> np.ndarray:
    if modality.upper() == "CT":
        return window_ct(values, *opts.window)
    return scale_percentiles(values, *opts.percentiles, mask=mask, name=name)


# ---------------------------------------------------------------------------------------- slicing


def to_square_slice(unit: np.ndarray, spacing_xy: tuple[float, float], size: int = 256) -> np.ndarray:
    """Resize one axial slice to ``size`` x ``size`` keeping its physical aspect, padding with black.

    Args:
        unit: float slice in [0, 1], ``(rows, cols)`` = ``(y, x)``.
        spacing_xy: pixel spacing (x, y) in mm.
        size: output side in pixels.

    Returns:
        ``uint8`` ``(size, size)`` image, the slice centred.
    """
    rows, cols = unit.shape
    width_mm, height_mm = cols * spacing_xy[0], rows * spacing_xy[1]
    scale = size / max(width_mm, height_mm)
    new_w = min(size, max(1, int(round(width_mm * scale))))
    new_h = min(size, max(1, int(round(height_mm * scale))))
    # Pillow's resize filters over the whole footprint when shrinking (no aliasing); float mode "F"
    resized = np.asarray(Image.fromarray(unit.astype(np.float32)).resize((new_w, new_h), Image.BILINEAR))
    canvas = np.zeros((size, size), dtype=np.float32)
    top, left = (size - new_h) // 2, (size - new_w) // 2
    canvas[top:top + new_h, left:left + new_w] = resized
    return np.clip(np.rint(canvas * 255.0), 0, 255).astype(np.uint8)


def _foreground(unit_slice: np.ndarray) -> float:
    return float(np.mean(np.rint(unit_slice * 255.0) > FOREGROUND_LEVEL))


def case_id_from_path(path: str | os.PathLike) -> str:
    """A case id from a volume path: the file name without its volume suffix, safe for file names.

    ``sub-01_ct.nii.gz`` -> ``sub-01_ct``; a DICOM folder gives the folder name. Characters other
    than letters, digits, ``_`` and ``-`` become ``_``.
    """
    name = Path(path).name
    for suffix in _NIFTI_SUFFIXES[::-1] + _SITK_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", name).strip("_-")
    return safe or "volume"


def volume_slice_pairs(path_a: str | os.PathLike, path_b: str | os.PathLike, case: str,
                       opts: VolumeOptions) -> list[SlicePair]:
    """Read, align and slice two volumes into 8-bit axial :class:`SlicePair` records.

    Args:
        path_a: volume A (its grid is the reference).
        path_b: volume B (resampled onto A when needed).
        case: case id for every pair.
        opts: the processing options; ``opts.report`` is filled with what was done.

    Returns:
        the kept slice pairs, inferior to superior.

    Raises:
        DataPrepError: any unusable input (see :func:`load_volume`), no physical overlap, a failed
            registration, or no slice with enough foreground.
    """
    for m in (opts.modality_a, opts.modality_b):
        if not _MODALITY_RE.match(m):
            raise DataPrepError(f"modality {m!r} must be letters and digits only (e.g. CT, MRI, PET, SPECT)")
    a = sitk.DICOMOrient(load_volume(path_a, opts.nan_as_zero), "LPS")
    b = sitk.DICOMOrient(load_volume(path_b, opts.nan_as_zero), "LPS")
    report = opts.report
    report.update({"a": Path(path_a).name, "b": Path(path_b).name, "orientation": "LPS",
                   "size_a": list(a.GetSize()), "spacing_a": [round(s, 6) for s in a.GetSpacing()]})

    transform = None
    if opts.register:
        transform, report["registration"] = register_rigid(a, b)
    if transform is None and same_space(a, b):
        values_b, cover = sitk.GetArrayFromImage(b), None
        report["resampled"] = False
    else:
        b_on_a, cover = resample_onto(b, a, transform)
        fraction = float(cover.mean())
        if fraction == 0.0:
            raise DataPrepError(
                f"{path_b}: does not overlap {path_a} in physical space at all (B's extent "
                f"{_extent(b)} mm vs A's {_extent(a)} mm, LPS). They cannot be one subject in one space: "
                "check the headers (origin/orientation), or pass --register to align them")
        if fraction < 0.5:
            print(f"warning: {path_b} covers only {fraction:.0%} of {path_a}'s grid after "
                  "resampling", file=sys.stderr)
        values_b = sitk.GetArrayFromImage(b_on_a)
        report["resampled"] = True
        report["coverage_of_a"] = round(fraction, 4)

    if opts.modality_a.upper() == "CT" and float(sitk.GetArrayViewFromImage(a).min()) >= 0:
        print(f"warning: {path_a}: CT has no negative values; it may not be in Hounsfield units "
              "(e.g. stored with an offset of 1024). Check the window", file=sys.stderr)
    unit_a = _to_unit(sitk.GetArrayFromImage(a), opts.modality_a, opts, None, str(path_a))
    unit_b = _to_unit(values_b, opts.modality_b, opts, cover, str(path_b))
    if cover is not None:
        unit_b = np.where(cover, unit_b, 0.0).astype(np.float32)  # outside B is no signal, not tissue

    spacing_xy = a.GetSpacing()[:2]
    pairs: list[SlicePair] = []
    dropped = 0
    for k in range(unit_a.shape[0]):
        if min(_foreground(unit_a[k]), _foreground(unit_b[k])) < opts.min_foreground:
            dropped += 1
            continue
        pairs.append(SlicePair(
            image_a=to_square_slice(unit_a[k], spacing_xy, opts.size),
            image_b=to_square_slice(unit_b[k], spacing_xy, opts.size),
            modality_a=opts.modality_a, modality_b=opts.modality_b,
            case=case, slice=k, source=f"{path_a} slice {k}"))
    report["slices_kept"], report["slices_dropped"] = len(pairs), dropped
    if not pairs:
        raise DataPrepError(
            f"{path_a}: all {unit_a.shape[0]} axial slices were dropped as empty (foreground below "
            f"{opts.min_foreground} in A or B). Lower --min-foreground, or check the CT window / modalities")
    return pairs


def _extent(image: sitk.Image) -> str:
    corners = [image.TransformContinuousIndexToPhysicalPoint([c * (s - 0.5) + (1 - c) * -0.5
                                                              for c, s in zip(bits, image.GetSize())])
               for bits in np.ndindex(2, 2, 2)]
    lo, hi = np.min(corners, axis=0), np.max(corners, axis=0)
    return "[" + ", ".join(f"{a:.1f}..{b:.1f}" for a, b in zip(lo, hi)) + "]"


# -------------------------------------------------------------------------------------------- CLI


def _parse_window(text: str) -> tuple[float, float]:
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m data_prep volumes``."""
    from data_prep.cli import add_split_arguments

    parser.add_argument("a_volume", metavar="A_VOLUME",
                        help="volume A: NIfTI file, DICOM series folder, MHA or NRRD (its grid is kept)")
    parser.add_argument("b_volume", metavar="B_VOLUME", help="volume B (resampled onto A's grid when needed)")
    parser.add_argument("out", metavar="OUT", help="output folder (PNG pairs + datalist.json)")
    parser.add_argument("--modality-a", default="CT", help="modality of A (default CT; CT is windowed in HU)")
    parser.add_argument("--modality-b", default="MRI",
                        help="modality of B (default MRI; scaled by percentiles)")
    parser.add_argument("--register", action="store_true",
                        help="rigid registration (Mattes mutual information) of B to A before resampling")
    parser.add_argument("--window", type=_parse_window, default=CT_WINDOWS["brain"],
                        help="CT window: brain (L40 W80, default), subdural (L75 W215), bone (L600 W2800) "
                             "or L,W in HU")
    parser.add_argument("--percentiles", type=float, nargs=2, default=(0.5, 99.5), metavar=("LOW", "HIGH"),
                        help="percentiles mapped to 0 and 255 for MRI/PET/SPECT (default 0.5 99.5)")
    parser.add_argument("--min-foreground", type=float, default=0.05, metavar="F",
                        help=f"drop slices with less than this fraction of pixels above "
                             f"{FOREGROUND_LEVEL}/255 "
                             "in either modality (default 0.05)")
    parser.add_argument("--size", type=int, default=256, help="output slice side in pixels (default 256)")
    parser.add_argument("--nan-as-zero", action="store_true",
                        help="treat NaN/Inf voxels as 0 with a warning (default: refuse the volume)")
    parser.add_argument("--case", default=None, help="case id (default: from A's file name)")
    parser.add_argument("--split", choices=SPLITS, default="test",
                        help="split that receives the single case (default test: a lone subject is "
                             "for inference)")
    add_split_arguments(parser)
    parser.set_defaults(fractions=None)  # None = not given: fractions cannot split a single case


def run(args: argparse.Namespace) -> int:
    """Run ``python -m data_prep volumes``; returns 0 on success (errors raise DataPrepError)."""
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not args.overwrite)):
        # checked before the (possibly slow) registration; write_dataset checks it again
        raise DataPrepError(f"{out}: exists and is not an empty folder. Choose a new folder or pass "
                            "--overwrite")
    case = args.case if args.case is not None else case_id_from_path(args.a_volume)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", case):
        raise DataPrepError(f"case id {case!r} must be letters, digits, '_' or '-' (it names output files)")
    if args.fractions is not None:
        raise DataPrepError("--fractions cannot split a single case; use --split NAME, or explicit "
                            "--training-cases/--validation-cases/--test-cases lists")
    if not 0.0 <= args.min_foreground < 1.0:
        raise DataPrepError(f"--min-foreground must be in [0, 1), got {args.min_foreground}")
    if not 8 <= args.size <= 4096:
        raise DataPrepError(f"--size must be between 8 and 4096, got {args.size}")
    lists = {s: getattr(args, f"{s}_cases") for s in SPLITS}
    if any(v is not None for v in lists.values()):
        split = SplitSpec(seed=args.seed, cases={s: [str(c) for c in (v or [])] for s, v in lists.items()})
    else:
        split = SplitSpec(seed=args.seed, cases={args.split: [case]})

    opts = VolumeOptions(
        modality_a=args.modality_a, modality_b=args.modality_b, window=tuple(args.window),
        percentiles=tuple(args.percentiles), register=args.register, min_foreground=args.min_foreground,
        size=args.size, nan_as_zero=args.nan_as_zero)
    pairs = volume_slice_pairs(args.a_volume, args.b_volume, case, opts)
    opts.report.update({"window": list(opts.window) if opts.modality_a.upper() == "CT"
                        or opts.modality_b.upper() == "CT" else None,
                        "percentiles": list(opts.percentiles)})
    datalist = write_dataset(pairs, out, split=split, overwrite=args.overwrite,
                             extra={"source": "volumes", "volumes": opts.report})
    counts = ", ".join(f"{s}: {len(datalist[s])}" for s in SPLITS)
    extra = " (B resampled onto A's grid)" if opts.report.get("resampled") else ""
    print(f"{out}: {len(pairs)} slice pairs of case {case} ({opts.report['slices_dropped']} empty slices "
          f"dropped){extra}; {counts}")
    return 0
