"""``python -m data_prep demo OUT``: the built-in synthetic CT/MR brain phantom the quick start uses.

**Synthetic, for trying the pipeline; not for clinical evaluation.**

The phantom is built from the MNI152 ICBM 2009a template and its grey/white matter probability
maps, which ship inside nilearn's wheel (``nilearn/datasets/data/mni_icbm152_*_converted.nii.gz``;
nothing is downloaded). The template is skull-stripped, so each axial slice gets a synthetic head
around the brain: the intracranial space (brain envelope, with the CSF of sulci and ventricles),
a skull shell and a scalp shell. From these tissue fractions two registered contrasts are
rendered on one grid:

- **CT-like**: Hounsfield-like values (air -1000, CSF 8, white matter 29, grey matter 37, scalp
  30, bone 1000) windowed at level 40 / width 120: bone white, soft
  tissue mid gray with little grey/white contrast, CSF dark-ish, background black;
- **MR-like (T2-like)**: CSF bright, grey matter above white matter, skull dark, scalp fat bright,
  a smooth bias field and Rician noise.

A *case* is one slab of consecutive slices (every ``--spacing`` mm) from its own height in the
brain, seen through its own mild augmentation (rotation, shift, head size, skull and scalp
thickness, intensity scaling, noise), applied to the tissue maps *before* rendering so both
contrasts stay registered. Cases, not slices, are split. The default (6 cases x 8 slices,
256x256) is 48 pairs: small enough for the quick-start training to run in minutes on two CPU
cores. The same arguments and seed give byte-identical output.
"""

from __future__ import annotations

import argparse
import importlib.resources
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from data_prep.cli import add_split_arguments, split_from_args
from data_prep.datalist import SPLITS, DataPrepError, SlicePair, write_dataset

__all__ = [
    "SOURCE_NOTE",
    "TEMPLATE_FILES",
    "CT_WINDOW",
    "Template",
    "CaseStyle",
    "load_template",
    "case_styles",
    "tissue_maps",
    "render_slice",
    "iter_demo_pairs",
    "add_arguments",
    "run",
]

#: The datalist's ``source`` key, so every later stage can tell the data is synthetic.
SOURCE_NOTE = "demo (synthetic phantom, not for clinical evaluation)"

#: Template files inside nilearn's package data: T1 (used for the brain envelope), GM, WM.
TEMPLATE_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}

#: CT display window (level, width) in HU: a brain window a little wider than 40/80.
CT_WINDOW = (40.0, 120.0)

#: Canvas the template slice is placed on before resampling: 256 mm square, 1 mm pixels.
_CANVAS_MM = 256
#: Field of view of the output images (mm): the head fills most of the frame, as in the atlas.
_FOV_MM = 240
#: Axial template slices (MNI voxel index z, 1 mm) from which slabs are taken: the cerebrum
#: from the level of the temporal lobes to the upper cerebrum (the small vertex slices are left out).
_Z_RANGE = (40, 132)


@dataclass(frozen=True)
class Template:
    """The MNI152 template as float arrays in [0, 1], ``(x, y, z)``, 1 mm voxels.

    Attributes:
        t1: skull-stripped T1 template.
        gm: grey matter probability.
        wm: white matter probability.
    """

    t1: np.ndarray
    gm: np.ndarray
    wm: np.ndarray


@dataclass(frozen=True)
class CaseStyle:
    """One phantom case: its slab and its augmentation.

    Attributes:
        case: case id.
        slices: template z indices of its slices.
        rotation_deg: in-plane rotation.
        shift_mm: in-plane shift (rows, cols).
        zoom: head size factor.
        skull_mm: skull thickness.
        scalp_mm: scalp thickness.
        gm_hu: grey matter HU (white matter is 8 HU below).
        mr_gain: MR intensity scale.
        bias: MR bias field amplitude and direction (a, angle).
        ct_noise_hu: CT noise standard deviation (HU).
        mr_noise: MR noise standard deviation (fraction of full scale).
        seed: seed of the per-slice noise.
    """

    case: str
    slices: tuple[int, ...]
    rotation_deg: float
    shift_mm: tuple[float, float]
    zoom: float
    skull_mm: float
    scalp_mm: float
    gm_hu: float
    mr_gain: float
    bias: tuple[float, float]
    ct_noise_hu: float
    mr_noise: float
    seed: int


def _template_path(name: str) -> Path:
    try:
        root = importlib.resources.files("nilearn") / "datasets" / "data"
    except ModuleNotFoundError as err:
        raise DataPrepError("the demo phantom needs nilearn (it ships the MNI152 template): "
                            "pip install 'nilearn>=0.10'") from err
    path = Path(str(root / name))
    if not path.is_file():
        raise DataPrepError(f"{path}: the MNI152 template file is missing from the installed nilearn. "
                            "Reinstall nilearn (pip install --force-reinstall 'nilearn>=0.10')")
    return path


def load_template() -> Template:
    """Load the template and tissue maps from nilearn's package data (never downloads).

    Returns:
        the :class:`Template`, float32 in [0, 1].

    Raises:
        DataPrepError: nilearn or one of its template files is missing.
    """
    import nibabel as nib

    vols = {}
    for key, name in TEMPLATE_FILES.items():
        img = nib.load(str(_template_path(name)))
        vols[key] = np.asarray(img.dataobj, dtype=np.float32) / 255.0
    return Template(**vols)


def case_styles(n_cases: int, n_slices: int, spacing: int, seed: int) -> list[CaseStyle]:
    """Draw the slab and augmentation of each phantom case.

    Args:
        n_cases: number of cases.
        n_slices: slices per case.
        spacing: distance between slices of a case, in mm (template voxels).
        seed: seed of the draw; case ``i`` depends only on ``(seed, i)`` and the slab layout.

    Returns:
        one :class:`CaseStyle` per case, ids ``demo01``, ``demo02``, ...

    Raises:
        DataPrepError: a slab does not fit into the template's usable range.
    """
    lo, hi = _Z_RANGE
    slab = (n_slices - 1) * spacing
    if n_cases < 1 or n_slices < 1 or spacing < 1 or slab > hi - lo:
        raise DataPrepError(f"--cases {n_cases}, --slices {n_slices}, --spacing {spacing}: need at least one case "
                            f"and slice, and a slab ({slab} mm) within the {hi - lo} mm of usable template height. "
                            "Use fewer slices or a smaller spacing")
    starts = np.linspace(lo, hi - slab, n_cases) if n_cases > 1 else np.array([(lo + hi - slab) / 2])
    width = max(2, len(str(n_cases)))
    styles = []
    for i, start in enumerate(starts):
        r = np.random.default_rng([seed, i])
        z0 = int(np.clip(round(start + r.uniform(-3, 3)), lo, hi - slab))
        styles.append(CaseStyle(
            case=f"demo{i + 1:0{width}d}",
            slices=tuple(z0 + k * spacing for k in range(n_slices)),
            rotation_deg=float(r.uniform(-10, 10)),
            shift_mm=(float(r.uniform(-6, 6)), float(r.uniform(-6, 6))),
            zoom=float(r.uniform(0.94, 1.06)),
            skull_mm=float(r.uniform(5.0, 8.0)),
            scalp_mm=float(r.uniform(3.0, 6.0)),
            gm_hu=float(r.uniform(35.0, 39.0)),
            mr_gain=float(r.uniform(0.88, 1.08)),
            bias=(float(r.uniform(0.0, 0.12)), float(r.uniform(0, 2 * np.pi))),
            ct_noise_hu=float(r.uniform(2.0, 5.0)),
            mr_noise=float(r.uniform(0.008, 0.02)),
            seed=int(r.integers(0, 2**31 - 1)),
        ))
    return styles


def _on_canvas(vol: np.ndarray, z: int) -> np.ndarray:
    """Axial slice ``z`` in display orientation (anterior up), centred on a 256 mm canvas."""
    img = vol[:, ::-1, z].T  # rows: anterior -> posterior, cols: x
    canvas = np.zeros((_CANVAS_MM, _CANVAS_MM), dtype=np.float32)
    h, w = img.shape
    top, left = (_CANVAS_MM - h) // 2, (_CANVAS_MM - w) // 2
    canvas[top:top + h, left:left + w] = img
    return canvas


def _tissue_fractions(template: Template, z: int, style: CaseStyle) -> dict[str, np.ndarray]:
    """Fractions of GM, WM, CSF, bone and scalp on the canvas at slice ``z``."""
    t1, gm, wm = (_on_canvas(v, z) for v in (template.t1, template.gm, template.wm))
    envelope = ndimage.binary_fill_holes(ndimage.binary_closing(t1 > 0.04, iterations=3))
    # a smooth intracranial space reaching ~2 mm beyond the brain: the outer CSF layer
    icv = np.clip(ndimage.gaussian_filter(envelope.astype(np.float32), 2.0) * 1.6, 0.0, 1.0)
    tissue = np.clip(gm + wm, 0.0, 1.0)
    scale = np.where(gm + wm > 1.0, 1.0 / np.maximum(gm + wm, 1e-6), 1.0)
    gm, wm = gm * scale, wm * scale
    csf = np.clip(icv - tissue, 0.0, 1.0)
    outside = ndimage.distance_transform_edt(icv < 0.5).astype(np.float32)
    # soft (1 mm) edges so the shells resample without staircase
    bone = np.clip(outside, 0, 1) * np.clip(style.skull_mm + 0.5 - outside, 0, 1)
    scalp = np.clip(outside - style.skull_mm, 0, 1) * np.clip(style.skull_mm + style.scalp_mm + 0.5 - outside, 0, 1)
    return {"gm": gm, "wm": wm, "csf": csf, "bone": bone, "scalp": scalp}


def _warp(maps: dict[str, np.ndarray], style: CaseStyle, size: int) -> dict[str, np.ndarray]:
    """Resample every map by the case's rotation/shift/zoom onto a ``size`` x ``size`` grid."""
    theta = np.deg2rad(style.rotation_deg)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    matrix = rot * (_FOV_MM / size) / style.zoom  # output pixel -> canvas mm
    centre_out = (np.array([size, size]) - 1) / 2.0
    centre_in = (np.array([_CANVAS_MM, _CANVAS_MM]) - 1) / 2.0 - np.asarray(style.shift_mm)
    offset = centre_in - matrix @ centre_out
    # a little prefilter when shrinking, so that small --size images do not alias
    sigma = max(0.0, 0.5 * (_FOV_MM / size / style.zoom - 1.0))
    out = {}
    for k, m in maps.items():
        src = ndimage.gaussian_filter(m, sigma) if sigma > 0 else m
        out[k] = ndimage.affine_transform(src, matrix, offset, output_shape=(size, size), order=1,
                                          mode="constant", cval=0.0)
    return out


def tissue_maps(template: Template, z: int, style: CaseStyle, size: int) -> dict[str, np.ndarray]:
    """Tissue fractions of one phantom slice on the output grid (what both contrasts are rendered from).

    Args:
        template: the loaded template.
        z: template slice index.
        style: the case's augmentation.
        size: output height and width.

    Returns:
        ``{"gm", "wm", "csf", "bone", "scalp"}`` -> float ``(size, size)`` fractions in [0, 1].
    """
    return _warp(_tissue_fractions(template, z, style), style, size)


def render_slice(template: Template, z: int, style: CaseStyle, size: int, rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Render one registered CT-like / MR-like pair.

    Args:
        template: the loaded template.
        z: template slice index.
        style: the case's augmentation.
        size: output height and width.
        rng: noise source.

    Returns:
        ``(ct, mr)``, ``uint8`` ``(size, size)`` each, 0..255.
    """
    f = tissue_maps(template, z, style, size)
    gm, wm, csf, bone, scalp = (f[k] for k in ("gm", "wm", "csf", "bone", "scalp"))
    filled = np.clip(gm + wm + csf + bone + scalp, 0.0, 1.0)
    hu = (-1000.0 * (1.0 - filled) + style.gm_hu * gm + (style.gm_hu - 8.0) * wm + 8.0 * csf
          + 30.0 * scalp + 1000.0 * bone)
    hu += rng.normal(0.0, style.ct_noise_hu, hu.shape) * (filled > 0.05)
    level, width = CT_WINDOW
    ct = np.clip((hu - (level - width / 2)) / width, 0.0, 1.0)

    t2 = 0.95 * csf + 0.58 * gm + 0.40 * wm + 0.06 * bone + 0.55 * scalp
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1) - 0.5
    amp, angle = style.bias
    t2 = t2 * style.mr_gain * (1.0 + amp * (np.cos(angle) * xx + np.sin(angle) * yy) * 2.0)
    noise = rng.normal(0.0, style.mr_noise, (2, size, size))
    mr = np.clip(np.hypot(t2 + noise[0], noise[1]), 0.0, 1.0)  # magnitude image: Rician noise
    return _to_uint8(ct), _to_uint8(mr)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


def iter_demo_pairs(
    n_cases: int = 6, n_slices: int = 8, size: int = 256, spacing: int = 4, seed: int = 0,
    template: Template | None = None,
) -> Iterator[SlicePair]:
    """Yield the phantom's CT-MRI slice pairs.

    Args:
        n_cases: phantom cases (slabs).
        n_slices: slices per case.
        size: image height and width in pixels.
        spacing: mm between the slices of a case.
        seed: seed of the case draw and the noise.
        template: a loaded template (default: :func:`load_template`).

    Yields:
        :class:`~data_prep.datalist.SlicePair` with modality ``CT`` / ``MRI``, ``uint8`` images.

    Raises:
        DataPrepError: bad sizes or counts, or a missing template.
    """
    if not 16 <= size <= 2048:
        raise DataPrepError(f"--size {size}: choose an image size between 16 and 2048 pixels (default 256)")
    styles = case_styles(n_cases, n_slices, spacing, seed)
    template = template or load_template()
    for style in styles:
        rng = np.random.default_rng(style.seed)
        for z in style.slices:
            ct, mr = render_slice(template, z, style, size, rng)
            yield SlicePair(ct, mr, "CT", "MRI", style.case, z, source=f"demo phantom {style.case} z={z}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m data_prep demo``."""
    parser.add_argument("out", metavar="OUT", help="output folder (new or empty) for the PNG pairs and datalist.json")
    parser.add_argument("--cases", type=int, default=6, help="phantom cases, one slab each (default 6)")
    parser.add_argument("--slices", type=int, default=8, help="slices per case (default 8)")
    parser.add_argument("--spacing", type=int, default=4, help="mm between the slices of a case (default 4)")
    parser.add_argument("--size", type=int, default=256, help="image height and width in pixels (default 256)")
    add_split_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Write the demo data set and print a short summary.

    Returns:
        0 on success (errors are raised as DataPrepError).
    """
    start = time.perf_counter()
    pairs = iter_demo_pairs(args.cases, args.slices, args.size, args.spacing, args.seed)
    datalist = write_dataset(pairs, args.out, split_from_args(args), overwrite=args.overwrite,
                             extra={"source": SOURCE_NOTE})
    print(f"demo phantom (synthetic, not for clinical evaluation): CT-MRI pairs {args.size}x{args.size} -> {args.out}")
    for s in SPLITS:
        items = datalist[s]
        cases = sorted({e["case"] for e in items})
        print(f"  {s:<10} {len(items):>4} pairs  cases {', '.join(cases) or '-'}")
    print(f"  wall time {time.perf_counter() - start:.1f} s")
    return 0
