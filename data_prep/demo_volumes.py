"""``python -m data_prep demo-volumes OUT``: the synthetic phantom as a 3D CT-like / MR-like volume pair.

**Synthetic, for trying the pipeline; not for clinical evaluation.**

The 3D sibling of :mod:`data_prep.demo`: the same MNI152 template and tissue maps shipped inside
nilearn's wheel (nothing is downloaded) get a synthetic head in 3D (intracranial CSF, a skull and a
scalp shell around the brain envelope), and two contrasts are rendered from the tissue fractions,
with the same values as the 2D demo: a CT-like volume in Hounsfield-like units (air -1000, CSF 8,
white matter 29, grey matter 37, scalp 30, bone 1000, Gaussian noise) and an MR-like (T2-like)
volume (CSF bright, grey above white matter, skull dark, a smooth 3D bias field, Rician noise).

Each contrast is sampled on its own scanner-like grid in one world space, so that the pair shows
what real scans do and what ``python -m pipeline fuse`` has to handle:

- ``ct.nii.gz``: 1.0 x 1.0 x 2.5 mm voxels, tilted 12 degrees about the left-right axis (a gantry
  tilt), stored with the first axis from the patient's left to right (an "LAS" affine);
- ``mr.nii.gz``: 1.2 mm isotropic voxels, rotated 8 degrees about the head's long axis, shifted a
  few millimetres, on a grid of another size.

Both are in the template's (MNI, RAS) millimetres, so B resampled onto A's grid is registered to
A; fuse them with::

    python -m pipeline fuse --method cnn OUT/ct.nii.gz OUT/mr.nii.gz OUT/fused.nii.gz --figure OUT/fused.png

(``make demo-volume`` runs both commands). The same arguments give byte-identical files.
"""

from __future__ import annotations

import argparse
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from data_prep.datalist import DataPrepError, staged_output
from data_prep.demo import SOURCE_NOTE, TEMPLATE_FILES, _template_path, load_template

__all__ = ["VolumeGrid", "CT_GRID", "MR_GRID", "head_tissues", "render_volumes", "add_arguments", "run"]

#: Voxels of padding around the template, room for the skull and scalp.
_PAD = 18
#: Thickness of the synthetic skull and scalp (mm).
_SKULL_MM, _SCALP_MM = 6.5, 4.5


@dataclass(frozen=True)
class VolumeGrid:
    """A scanner grid in RAS world millimetres.

    Attributes:
        shape: voxels along the three array axes.
        spacing: voxel size (mm) along them.
        axes: the directions of the array axes before rotation, as RAS unit vectors (rows).
        rotation_deg: rotation about the R (x), A (y) and S (z) world axes, applied in that order.
        centre: the world point at the grid's centre (mm).
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    axes: tuple[tuple[float, float, float], ...]
    rotation_deg: tuple[float, float, float]
    centre: tuple[float, float, float]

    def affine(self) -> np.ndarray:
        """The 4x4 voxel -> RAS world affine of this grid (NIfTI's convention)."""
        rx, ry, rz = np.deg2rad(self.rotation_deg)
        cx, sx, cy, sy, cz, sz = np.cos(rx), np.sin(rx), np.cos(ry), np.sin(ry), np.cos(rz), np.sin(rz)
        about_z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
        about_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
        about_x = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
        rot = about_z @ about_y @ about_x
        linear = rot @ np.asarray(self.axes, dtype=np.float64).T @ np.diag(self.spacing)
        out = np.eye(4)
        out[:3, :3] = linear
        out[:3, 3] = np.asarray(self.centre) - linear @ ((np.asarray(self.shape) - 1) / 2.0)
        return out


#: The CT-like grid: LAS storage, 1 x 1 x 2.5 mm, a 12 degree gantry tilt.
CT_GRID = VolumeGrid(shape=(200, 232, 64), spacing=(1.0, 1.0, 2.5),
                     axes=((-1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)),
                     rotation_deg=(12.0, 0.0, 0.0), centre=(0.0, -18.0, 10.0))
#: The MR-like grid: RAS storage, 1.2 mm isotropic, rotated 8 degrees and shifted.
MR_GRID = VolumeGrid(shape=(176, 204, 150), spacing=(1.2, 1.2, 1.2),
                     axes=((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)),
                     rotation_deg=(0.0, 0.0, 8.0), centre=(3.0, -14.0, 12.0))


def head_tissues(template: object | None = None) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Tissue fractions of the 3D head phantom on the (padded) 1 mm template grid.

    Args:
        template: a loaded :class:`data_prep.demo.Template` (default: :func:`data_prep.demo.load_template`).

    Returns:
        ``({"gm", "wm", "csf", "bone", "scalp"} -> float32 (x, y, z) fractions in [0, 1], affine)``,
        the affine mapping those voxels to MNI (RAS) millimetres.
    """
    import nibabel as nib

    template = template or load_template()
    pad = [(_PAD, _PAD)] * 3
    t1, gm, wm = (np.pad(v, pad) for v in (template.t1, template.gm, template.wm))
    envelope = ndimage.binary_fill_holes(ndimage.binary_closing(t1 > 0.04, iterations=3))
    icv = np.clip(ndimage.gaussian_filter(envelope.astype(np.float32), 2.0) * 1.6, 0.0, 1.0)
    total = gm + wm
    scale = np.where(total > 1.0, 1.0 / np.maximum(total, 1e-6), 1.0).astype(np.float32)
    gm, wm = gm * scale, wm * scale
    csf = np.clip(icv - np.clip(total, 0.0, 1.0), 0.0, 1.0)
    outside = ndimage.distance_transform_edt(icv < 0.5).astype(np.float32)
    bone = np.clip(outside, 0, 1) * np.clip(_SKULL_MM + 0.5 - outside, 0, 1)
    scalp = np.clip(outside - _SKULL_MM, 0, 1) * np.clip(_SKULL_MM + _SCALP_MM + 0.5 - outside, 0, 1)
    affine = np.asarray(nib.load(str(_template_path(TEMPLATE_FILES["t1"]))).affine, dtype=np.float64)
    shift = np.eye(4)
    shift[:3, 3] = -_PAD
    maps = {"gm": gm, "wm": wm, "csf": csf, "bone": bone, "scalp": scalp}
    return {k: v.astype(np.float32) for k, v in maps.items()}, affine @ shift


def _sample(maps: dict[str, np.ndarray], maps_affine: np.ndarray, grid: VolumeGrid) -> dict[str, np.ndarray]:
    """The tissue maps at the voxel centres of ``grid`` (linear interpolation, 0 outside)."""
    to_maps = np.linalg.inv(maps_affine) @ grid.affine()
    return {k: ndimage.affine_transform(m, to_maps[:3, :3], to_maps[:3, 3], output_shape=grid.shape, order=1,
                                        mode="constant", cval=0.0).astype(np.float32)
            for k, m in maps.items()}


def render_volumes(seed: int = 0, ct_grid: VolumeGrid = CT_GRID, mr_grid: VolumeGrid = MR_GRID
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Render the CT-like (HU) and MR-like (0..1) phantom volumes on their grids.

    Args:
        seed: seed of the noise.
        ct_grid: the CT-like volume's grid.
        mr_grid: the MR-like volume's grid.

    Returns:
        ``(ct_hu, mr)``: float32 arrays of the grids' shapes (array axes as the grids' affines say).
    """
    maps, maps_affine = head_tissues()
    rng = np.random.default_rng(seed)
    f = _sample(maps, maps_affine, ct_grid)
    filled = np.clip(sum(f.values()), 0.0, 1.0)
    gm_hu = 37.0
    hu = (-1000.0 * (1.0 - filled) + gm_hu * f["gm"] + (gm_hu - 8.0) * f["wm"] + 8.0 * f["csf"]
          + 30.0 * f["scalp"] + 1000.0 * f["bone"])
    hu += rng.normal(0.0, 3.0, hu.shape) * (filled > 0.05)
    f = _sample(maps, maps_affine, mr_grid)
    t2 = 0.95 * f["csf"] + 0.58 * f["gm"] + 0.40 * f["wm"] + 0.06 * f["bone"] + 0.55 * f["scalp"]
    coords = np.meshgrid(*[np.linspace(-0.5, 0.5, n) for n in mr_grid.shape], indexing="ij")
    t2 = t2 * (1.0 + 0.15 * coords[0] + 0.1 * coords[2])
    noise = rng.normal(0.0, 0.012, (2, *mr_grid.shape))
    mr = np.clip(np.hypot(t2 + noise[0], noise[1]), 0.0, 1.0)
    return hu.astype(np.float32), mr.astype(np.float32)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m data_prep demo-volumes``."""
    parser.add_argument("out", metavar="OUT", help="output folder (new or empty): ct.nii.gz and mr.nii.gz")
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise (default 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT when done")


def run(args: argparse.Namespace) -> int:
    """Write the phantom volume pair and print the command that fuses it.

    Returns:
        0 on success (errors are raised as DataPrepError).
    """
    import nibabel as nib

    start = time.perf_counter()
    out, staging = staged_output(args.out, overwrite=args.overwrite)
    try:
        ct, mr = render_volumes(args.seed)
        for name, data, grid in (("ct.nii.gz", ct, CT_GRID), ("mr.nii.gz", mr, MR_GRID)):
            img = nib.Nifti1Image(data, grid.affine())
            img.header["descrip"] = SOURCE_NOTE[:79].encode()
            img.set_qform(grid.affine(), code=1)
            img.set_sform(grid.affine(), code=1)
            nib.save(img, str(staging / name))
        if out.exists():
            old = out.parent / f".{out.name}.old"
            out.replace(old)
            staging.replace(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            staging.replace(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if not (out / "ct.nii.gz").is_file():
        raise DataPrepError(f"{out}: the phantom volumes were not written")
    print(f"demo phantom volumes (synthetic, not for clinical evaluation) -> {out}/ct.nii.gz "
          f"{'x'.join(map(str, CT_GRID.shape))} and {out}/mr.nii.gz {'x'.join(map(str, MR_GRID.shape))} "
          f"({time.perf_counter() - start:.1f} s)")
    print(f"fuse them: python -m pipeline fuse --method cnn {out}/ct.nii.gz {out}/mr.nii.gz "
          f"{out}/fused.nii.gz --figure {out}/fused.png")
    return 0
