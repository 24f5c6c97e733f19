"""Two volumes in, one fused volume out, on A's grid: ``python -m pipeline fuse A.nii.gz B.nii.gz F.nii.gz``.

The steps, in order:

1. **Align** with :func:`pipeline.volumes.align_pair`, the very code of ``python -m data_prep
   volumes``: both volumes read (NIfTI, DICOM series folder, MHA, NRRD), oriented to LPS, B
   resampled onto A's grid (after a rigid registration when ``register`` is set). Bad input (no
   physical overlap, a 4D volume, NaN voxels, a folder of two DICOM series, ...) raises
   :class:`pipeline.volumes.VolumeError` naming the file, before anything is written.
2. **Intensities** as ``data_prep volumes`` sets them (:meth:`pipeline.volumes.AlignedPair.units`):
   CT windowed in HU (brain L40/W80 by default), MRI/PET/SPECT scaled between the 0.5 and 99.5
   percentiles, B zero outside its own extent; then rounded to the 256 levels of an 8-bit PNG
   (``rint(u * 255) / 255``), the inputs the network was trained on, so that a slice fused here
   equals the same slice cut to a PNG pair and fused by :func:`pipeline.inference.run_inference`.
3. **Fuse** every axial slice of A's LPS-oriented grid at its own size (the network is fully
   convolutional: no resizing, so each output voxel is the fusion of the two voxels at that
   place), ``batch_size`` slices per forward pass for ``cnn``
   (:class:`pipeline.baselines.cnn.CNNFuser`); the other methods slice by slice.
4. **Write** the fused volume, 8-bit values (``rint(F * 255)``, as the PNG outputs) in A's own
   index order with A's size, spacing, origin and direction (:func:`pipeline.volumes.orient_like`),
   as NIfTI through SimpleITK, so it overlays A exactly in a viewer; on request also as a DICOM
   series (one file per slice of the LPS grid, with position, orientation and spacing tags; the
   patient, study and frame-of-reference tags of A when A is a DICOM series). Files appear
   atomically: a temporary file (folder) beside the target, renamed when complete.

Library images are float in [0, 1] inside; the written volume holds 0..255.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from pipeline.volumes import (
    CT_WINDOWS,
    DEFAULT_PERCENTILES,
    AlignedPair,
    VolumeError,
    align_pair,
    orient_like,
)

__all__ = [
    "NIFTI_SUFFIXES",
    "VOLUME_BATCH_SIZE",
    "VolumeFusionResult",
    "fuse_aligned",
    "fuse_volumes",
    "write_nifti",
    "write_dicom_series",
    "write_midplanes_figure",
    "run_fuse_volumes",
]

#: Output names the fused volume may have.
NIFTI_SUFFIXES = (".nii", ".nii.gz")

#: Axial slices per forward pass of the network when fusing a volume.
VOLUME_BATCH_SIZE = 8

#: DICOM tags copied from A's first file when A is a DICOM series, so a viewer files the fused
#: series under A's patient and study and overlays it in A's frame of reference.
_COPIED_DICOM_TAGS = ("0010|0010", "0010|0020", "0010|0030", "0010|0040", "0020|000d", "0020|0010",
                      "0020|0052", "0008|0020", "0008|0030", "0008|0050")


@dataclass
class VolumeFusionResult:
    """What :func:`fuse_volumes` wrote and did.

    Attributes:
        nifti: the fused NIfTI file.
        dicom: the fused DICOM series folder, when one was asked for.
        figure: the mid-plane figure, when one was asked for.
        shape: the fused volume's size (A's, x y z).
        seconds: wall time of the whole call.
        report: what alignment did (resampling, coverage, registration), as ``data_prep`` records it.
    """

    nifti: Path
    dicom: Path | None = None
    figure: Path | None = None
    shape: tuple[int, ...] = ()
    seconds: float = 0.0
    report: dict = field(default_factory=dict)


def _quantise(unit: np.ndarray) -> np.ndarray:
    return (np.rint(unit * np.float32(255.0)) / np.float32(255.0)).astype(np.float32)


StackFuser = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _slice_fuser(method: str, checkpoint: str | os.PathLike | None, device: str | None, amp: bool,
                 batch_size: int | None, params: dict[str, Any], pair: str | None = None) -> StackFuser:
    """A function fusing ``(N, H, W)`` stacks in [0, 1] into ``(N, H, W)`` float in [0, 1].

    ``cnn`` without a checkpoint uses the shipped network of ``pair`` (:mod:`pipeline.model_index`).
    """
    if method == "cnn":
        from pipeline.baselines.cnn import CNNFuser
        from pipeline.checkpoint import load_fusion_network
        from pipeline.model_index import checkpoint_for

        import torch

        fuser = CNNFuser(load_fusion_network(checkpoint or params.get("checkpoint") or checkpoint_for(pair),
                                             device=device or params.get("device")),
                         amp=amp, batch_size=batch_size or VOLUME_BATCH_SIZE)
        for module in fuser.runner.modules():
            # in place on the inference copy: the same values, one activation tensor less per layer
            if isinstance(module, torch.nn.LeakyReLU):
                module.inplace = True
        return fuser.fuse_gray_batch
    from pipeline.baselines import fuse_pair

    def per_slice(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.stack([fuse_pair(method, x.astype(np.float64), y.astype(np.float64), **params)
                         for x, y in zip(a, b)])

    return per_slice


def _chunks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def fuse_aligned(aligned: AlignedPair, fuse_stack: Callable[[np.ndarray, np.ndarray], np.ndarray],
                 modality_a: str = "CT", modality_b: str = "MRI",
                 window: tuple[float, float] = CT_WINDOWS["brain"],
                 percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
                 chunk: int = 32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fuse every axial slice of an aligned pair (steps 2 and 3 of the module's rules).

    Args:
        aligned: the pair on A's LPS grid.
        fuse_stack: fuses ``(N, H, W)`` float stacks in [0, 1] (e.g. ``CNNFuser.fuse_gray_batch``).
        modality_a: modality of A (``CT`` is windowed in HU).
        modality_b: modality of B.
        window: CT window ``(level, width)`` in HU.
        percentiles: percentiles for the non-CT modalities.
        chunk: slices handed to ``fuse_stack`` at once (bounds the memory of one call).

    Returns:
        ``(fused, unit_a, unit_b)``: ``uint8`` ``(z, y, x)`` fused volume on A's LPS grid, and the
        two 8-bit-level float32 inputs the network saw.
    """
    unit_a, unit_b = aligned.units(modality_a, modality_b, window, percentiles)
    unit_a, unit_b = _quantise(unit_a), _quantise(unit_b)
    fused = np.empty(unit_a.shape, dtype=np.uint8)
    for part in _chunks(unit_a.shape[0], chunk):
        out = np.asarray(fuse_stack(unit_a[part], unit_b[part]), dtype=np.float64)
        fused[part] = np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)
    return fused, unit_a, unit_b


def _check_output(output: Path, dicom_dir: Path | None, figure: Path | None, overwrite: bool) -> None:
    if not output.name.lower().endswith(NIFTI_SUFFIXES):
        raise VolumeError(f"{output}: the fused volume is written as NIfTI; give a name ending in .nii.gz "
                          "or .nii")
    targets = [output] + ([figure] if figure is not None else [])
    for target in targets:
        if target.is_dir():
            raise VolumeError(f"{target}: is a folder; give a file name")
        if target.exists() and not overwrite:
            raise VolumeError(f"{target}: exists. Choose another name or pass --overwrite")
    if dicom_dir is not None:
        if dicom_dir.exists() and (not dicom_dir.is_dir() or (any(dicom_dir.iterdir()) and not overwrite)):
            raise VolumeError(f"{dicom_dir}: exists and is not an empty folder. Choose a new folder for the "
                              "DICOM series or pass --overwrite")


def _temporary_beside(target: Path, suffix: str) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
    os.close(fd)
    _usual_mode(Path(name))
    return Path(name)


def _usual_mode(path: Path) -> None:
    """Give a ``mkstemp``/``mkdtemp`` path (created private: 0600, 0700) the mode ``open`` would give it."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


def write_nifti(image: sitk.Image, path: str | os.PathLike) -> Path:
    """Write ``image`` as NIfTI through SimpleITK, atomically (temporary file, then rename).

    SimpleITK converts its LPS geometry to NIfTI's RAS affine (qform and sform), so the file's
    affine is the one of the volume ``image`` was built on.

    Args:
        image: a 3D image.
        path: target ``.nii`` / ``.nii.gz`` (its folder is created).

    Returns:
        the written path.
    """
    path = Path(path)
    suffix = ".nii.gz" if path.name.lower().endswith(".gz") else ".nii"
    tmp = _temporary_beside(path, suffix)
    try:
        sitk.WriteImage(image, str(tmp), useCompression=suffix == ".nii.gz")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _dicom_tags_of(path: Path) -> dict[str, str]:
    """The :data:`_COPIED_DICOM_TAGS` of a DICOM series folder's first file (empty for other inputs)."""
    if not path.is_dir():
        return {}
    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path))
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path), series[0]) if series else ()
    if not files:
        return {}
    reader = sitk.ImageFileReader()
    reader.SetFileName(files[0])
    reader.LoadPrivateTagsOff()
    reader.ReadImageInformation()
    return {t: reader.GetMetaData(t) for t in _COPIED_DICOM_TAGS if reader.HasMetaDataKey(t)}


def write_dicom_series(image: sitk.Image, folder: str | os.PathLike, series_description: str = "fused",
                       tags: dict[str, str] | None = None, overwrite: bool = False) -> Path:
    """Write a 3D image as a DICOM series, one file per slice of its third axis, through SimpleITK.

    Each file carries Image Position (Patient) of its slice, Image Orientation (Patient) of the
    image's first two axes, the pixel spacing and slice thickness, one new Series Instance UID and
    Instance Numbers from 1; ``tags`` (patient, study, frame of reference) are copied into every
    file. Give an image whose third axis is the cross product of its first two (as an LPS-oriented
    one is), so that readers stack the slices in index order. The series is written to a
    temporary sibling folder that is renamed to ``folder`` when complete.

    Args:
        image: the 3D image (written as unsigned 16-bit).
        folder: target folder (new, or empty, or replaced with ``overwrite``).
        series_description: the Series Description tag.
        tags: further ``"gggg|eeee"`` tags for every file.
        overwrite: replace an existing non-empty folder.

    Returns:
        the folder.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    _usual_mode(staging)
    try:
        img = sitk.Cast(image, sitk.sitkUInt16)
        d = img.GetDirection()
        now = time.strftime("%Y%m%d"), time.strftime("%H%M%S")
        series_uid = f"2.25.{uuid.uuid4().int}"
        common = {
            "0008|0008": "DERIVED\\SECONDARY", "0008|0060": "OT", "0008|103e": series_description,
            "0008|0021": now[0], "0008|0031": now[1], "0020|000e": series_uid,
            "0020|0037": "\\".join(f"{v:.9g}" for v in (d[0], d[3], d[6], d[1], d[4], d[7])),
            "0018|0050": f"{img.GetSpacing()[2]:.9g}", "0018|0088": f"{img.GetSpacing()[2]:.9g}",
        }
        common.update(tags or {})
        if "0020|000d" not in common:
            common["0020|000d"] = f"2.25.{uuid.uuid4().int}"
        if "0020|0052" not in common:
            common["0020|0052"] = f"2.25.{uuid.uuid4().int}"
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        width = max(4, len(str(img.GetDepth())))
        for k in range(img.GetDepth()):
            plane = img[:, :, k]
            for tag, value in common.items():
                plane.SetMetaData(tag, value)
            plane.SetMetaData("0008|0018", f"{series_uid}.{k + 1}")
            plane.SetMetaData("0020|0013", str(k + 1))
            plane.SetMetaData("0020|0032", "\\".join(f"{v:.9g}" for v in
                                                     img.TransformIndexToPhysicalPoint((0, 0, k))))
            writer.SetFileName(str(staging / f"slice_{k + 1:0{width}d}.dcm"))
            writer.Execute(plane)
        if folder.exists():
            if any(folder.iterdir()) and not overwrite:
                raise VolumeError(f"{folder}: exists and is not empty; nothing was written")
            shutil.rmtree(folder)
        os.replace(staging, folder)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return folder


def write_midplanes_figure(path: str | os.PathLike, volumes: dict[str, np.ndarray],
                           spacing: tuple[float, float, float], title: str = "") -> Path:
    """Draw the axial, coronal and sagittal mid-planes of LPS-oriented volumes side by side (matplotlib).

    Rows are the three planes, columns the volumes (e.g. A, B, fused). Planes are shown the
    radiological way (patient's right on the image's left; anterior up in axial, superior up in
    coronal and sagittal) with their true physical aspect.

    Args:
        path: the PNG to write (atomically).
        volumes: label -> ``(z, y, x)`` array on one LPS grid, float in [0, 1] or ``uint8``.
        spacing: the grid's voxel size ``(x, y, z)`` in mm.
        title: the figure title.

    Returns:
        the written path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sx, sy, sz = spacing
    planes = [("axial", lambda v: v[v.shape[0] // 2], sy / sx),
              ("coronal", lambda v: v[::-1, v.shape[1] // 2, :], sz / sx),
              ("sagittal", lambda v: v[::-1, :, v.shape[2] // 2], sz / sy)]
    fig, axes = plt.subplots(3, len(volumes), figsize=(3.2 * len(volumes), 9.0), squeeze=False)
    for col, (label, vol) in enumerate(volumes.items()):
        vmax = 255 if vol.dtype == np.uint8 else 1.0
        for row, (plane, cut, aspect) in enumerate(planes):
            ax = axes[row, col]
            ax.imshow(cut(vol), cmap="gray", vmin=0, vmax=vmax, aspect=aspect, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(label, fontsize=11)
            if col == 0:
                ax.set_ylabel(plane, fontsize=11)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path = Path(path)
    tmp = _temporary_beside(path, ".png")
    try:
        fig.savefig(tmp, dpi=90, format="png")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path


def fuse_volumes(
    path_a: str | os.PathLike,
    path_b: str | os.PathLike,
    output: str | os.PathLike,
    method: str = "cnn",
    checkpoint: str | os.PathLike | None = None,
    device: str | None = None,
    modality_a: str = "CT",
    modality_b: str = "MRI",
    window: tuple[float, float] = CT_WINDOWS["brain"],
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
    register: bool = False,
    nan_as_zero: bool = False,
    dicom_dir: str | os.PathLike | None = None,
    figure: str | os.PathLike | None = None,
    batch_size: int | None = None,
    amp: bool = False,
    overwrite: bool = False,
    params: dict[str, Any] | None = None,
) -> VolumeFusionResult:
    """Fuse two volumes of one subject into one on A's grid and write it (see the module's steps).

    Args:
        path_a: volume A (NIfTI, DICOM series folder, MHA, NRRD); the output has its geometry.
        path_b: volume B (resampled onto A's grid when the grids differ).
        output: the fused NIfTI (``.nii.gz`` / ``.nii``).
        method: a fusion method (``cnn``, the trained network, by default; any of
            :data:`pipeline.baselines.METHODS`, slice by slice).
        checkpoint: weights for ``cnn`` (default: the shipped network of the pair type
            ``modality_a``-``modality_b``).
        device: torch device for ``cnn`` (default CUDA when available).
        modality_a: modality of A (``CT`` is windowed in HU; others percentile-scaled).
        modality_b: modality of B.
        window: CT window ``(level, width)`` in HU.
        percentiles: low/high percentiles for non-CT volumes.
        register: rigidly register B to A (Mattes MI) before resampling.
        nan_as_zero: treat NaN/Inf voxels as 0 instead of refusing the volume.
        dicom_dir: also write the fused volume as a DICOM series into this folder.
        figure: also draw the mid-planes of A, B and the fusion into this PNG.
        batch_size: slices per forward pass for ``cnn`` (default :data:`VOLUME_BATCH_SIZE`).
        amp: float16 autocast on CUDA.
        overwrite: replace existing outputs.
        params: further method parameters (as ``--param``).

    Returns:
        a :class:`VolumeFusionResult`.

    Raises:
        VolumeError: unusable volumes (no overlap, 4D, NaN voxels, two DICOM series, ...) or output
            names; nothing is written then.
        pipeline.io.CheckpointError: no usable weights for ``cnn``.
    """
    start = time.perf_counter()
    if path_a is None or path_b is None:
        raise VolumeError("give both volumes, A and B (NIfTI files, DICOM series folders, MHA or NRRD)")
    output = Path(output)
    dicom = Path(dicom_dir) if dicom_dir is not None else None
    fig = Path(figure) if figure is not None else None
    _check_output(output, dicom, fig, overwrite)
    params = dict(params or {})
    from pipeline.model_index import pair_type

    fuse_stack = _slice_fuser(method, checkpoint, device, amp, batch_size, params,  # weights checked first
                              pair=pair_type(modality_a, modality_b))
    aligned = align_pair(path_a, path_b, register=register, nan_as_zero=nan_as_zero)
    fused, unit_a, unit_b = fuse_aligned(aligned, fuse_stack, modality_a, modality_b, window, percentiles)
    native = orient_like(fused, aligned.a, aligned.a_native)
    report = {k: v for k, v in aligned.report.items() if k not in ("path_a", "path_b")}
    result = VolumeFusionResult(nifti=output, shape=tuple(native.GetSize()), report=report)
    if dicom is not None:
        oriented = sitk.GetImageFromArray(fused)
        oriented.CopyInformation(aligned.a)
        result.dicom = write_dicom_series(oriented, dicom, f"fused {modality_a}+{modality_b} ({method})",
                                          _dicom_tags_of(Path(path_a)), overwrite=overwrite)
    write_nifti(native, output)
    if fig is not None:
        result.figure = write_midplanes_figure(
            fig, {f"A: {modality_a}": unit_a, f"B: {modality_b}": unit_b, f"fused ({method})": fused},
            aligned.a.GetSpacing(), f"{Path(path_a).name} + {Path(path_b).name}")
    result.seconds = time.perf_counter() - start
    return result


def run_fuse_volumes(args: argparse.Namespace, params: dict[str, Any]) -> int:
    """``python -m pipeline fuse`` for two volumes (called by :mod:`pipeline.baselines.cli`).

    Args:
        args: the parsed ``fuse`` options.
        params: the method's parameters (``--param`` and the dedicated flags).

    Returns:
        0 on success.
    """
    result = fuse_volumes(
        args.image_a, args.image_b, args.output, method=args.method, modality_a=args.modality_a,
        modality_b=args.modality_b, window=tuple(args.window), percentiles=tuple(args.percentiles),
        register=args.register, nan_as_zero=args.nan_as_zero, dicom_dir=args.dicom_out, figure=args.figure,
        batch_size=args.batch_size, overwrite=args.overwrite, params=params)
    x, y, z = result.shape
    extra = ", B resampled onto it" if result.report.get("resampled") else ""
    print(f"{args.method}: wrote {result.nifti} ({x}x{y}x{z}, on A's grid{extra}; {result.seconds:.2f} s)"
          + (f"; DICOM series {result.dicom}" if result.dicom else "")
          + (f"; figure {result.figure}" if result.figure else ""))
    return 0
