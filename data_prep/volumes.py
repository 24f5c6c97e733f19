"""``python -m data_prep volumes A_VOLUME B_VOLUME OUT``: two 3D scans of one subject -> slice pairs.

Formats: NIfTI (``.nii``, ``.nii.gz``) through nibabel; a DICOM series (a folder holding one
series), MetaImage (``.mha``/``.mhd``) and NRRD (``.nrrd``/``.nhdr``) through SimpleITK.

Steps 1-5 (reading, NaN policy, orientation, one physical space, intensities) are the library's
:mod:`pipeline.volumes`, which ``python -m pipeline fuse`` uses for volumes too, so a volume fused
whole and the same volume cut into PNG pairs here see the same intensities. What it does, in order:

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
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from data_prep.datalist import SPLITS, DataPrepError, SlicePair, SplitSpec, write_dataset
from pipeline.volumes import (
    CT_WINDOWS,
    GRID_TOLERANCE,
    REGISTRATION_SAMPLES,
    VOLUME_SUFFIXES,
    align_pair,
    load_volume,
    parse_window,
    register_rigid,
    resample_onto,
    same_space,
    scale_percentiles,
    window_ct,
)

__all__ = [
    "CT_WINDOWS",
    "FOREGROUND_LEVEL",
    "GRID_TOLERANCE",
    "REGISTRATION_SAMPLES",
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

#: An 8-bit pixel counts as foreground above this level (about 4% of full scale): air, padding
#: and MR background noise stay below it after windowing / percentile scaling.
FOREGROUND_LEVEL = 10

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
    for suffix in sorted(VOLUME_SUFFIXES, key=len, reverse=True):
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
    aligned = align_pair(path_a, path_b, register=opts.register, nan_as_zero=opts.nan_as_zero)
    report = opts.report
    report.update({k: v for k, v in aligned.report.items() if k not in ("path_a", "path_b")})
    unit_a, unit_b = aligned.units(opts.modality_a, opts.modality_b, opts.window, opts.percentiles)
    a = aligned.a

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


# -------------------------------------------------------------------------------------------- CLI


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
    parser.add_argument("--window", type=parse_window, default=CT_WINDOWS["brain"],
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
