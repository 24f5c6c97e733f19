"""Volumes in, a fused volume out (pipeline/volume_fusion.py): geometry, DICOM, bad inputs, CLI, bundle.

Small synthetic scans (32 x 40 x 12 voxels) with non-trivial affines: rotated, anisotropic,
stored with a flipped first axis.
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from pipeline.cli import main
from pipeline.volume_fusion import fuse_volumes
from pipeline.volumes import VolumeError, load_volume, scale_percentiles, window_ct

SHAPE = (32, 40, 12)  # x, y, z voxels


def oblique_affine(angle_deg: float = 20.0, spacing=(1.2, 0.9, 2.5), origin=(10.0, -20.0, 5.0),
                   flip_x: bool = True) -> np.ndarray:
    """A voxel -> RAS affine rotated about z, anisotropic, with the first axis stored right-to-left."""
    t = np.deg2rad(angle_deg)
    rot = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([-1.0 if flip_x else 1.0, 1.0, 1.0]) @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine


def head(kind: str, shape=SHAPE, seed: int = 0) -> np.ndarray:
    """An ellipsoid head with an off-centre lesion, in (x, y, z) order; CT in HU, MR in a.u."""
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    inside = x ** 2 + y ** 2 + (z / 0.9) ** 2 < 0.8
    lesion = ((x - 0.4) ** 2 + (y + 0.3) ** 2 + z ** 2) < 0.05
    rng = np.random.default_rng(seed)
    if kind == "ct":
        v = np.where(inside, 35.0 + 10 * x, -1000.0)
        v[lesion] = 75.0
    else:
        v = np.where(inside, 300.0 + 100 * y, 0.0) + rng.normal(0, 5, shape)
        v[lesion] = 800.0
    return v.astype(np.float32)


def save(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def expected_wa(ct: np.ndarray, mr: np.ndarray) -> np.ndarray:
    """``wa`` fusion of two volumes on one grid, by the documented rules, in the file's array order."""
    qa = np.rint(window_ct(ct, 40.0, 80.0) * np.float32(255)) / np.float32(255)
    qb = np.rint(scale_percentiles(mr, 0.5, 99.5) * np.float32(255)) / np.float32(255)
    return np.clip(np.rint((0.5 * qa.astype(np.float64) + 0.5 * qb) * 255.0), 0, 255).astype(np.uint8)


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path, np.ndarray]:
    affine = oblique_affine()
    a = save(tmp_path / "ct.nii.gz", head("ct"), affine)
    b = save(tmp_path / "mr.nii.gz", head("mr"), affine)
    return a, b, affine


def test_fused_nifti_has_a_geometry_and_voxels(pair, tmp_path: Path) -> None:
    a, b, affine = pair
    out = tmp_path / "fused.nii.gz"
    result = fuse_volumes(a, b, out, method="wa")
    assert result.nifti == out and result.report["resampled"] is False
    fused = nib.load(str(out))
    assert fused.shape == SHAPE
    np.testing.assert_allclose(fused.affine, affine, atol=1e-5)
    # a voxel of A and the same voxel of the output are one world point
    for ijk in [(0, 0, 0), (31, 0, 11), (5, 17, 3)]:
        point = affine @ [*ijk, 1.0]
        np.testing.assert_allclose(fused.affine @ [*ijk, 1.0], point, atol=1e-4)
    # every voxel is the fusion of A's and B's voxels at that index: the LPS round trip is exact
    np.testing.assert_array_equal(np.asarray(fused.dataobj), expected_wa(head("ct"), head("mr")))


def test_cnn_fusion_of_b_on_another_grid(pair, tmp_path: Path) -> None:
    a, _, affine = pair
    b = save(tmp_path / "mr_other.nii.gz", head("mr", shape=(28, 30, 20)),
             oblique_affine(angle_deg=10.0, spacing=(1.4, 1.3, 1.5), origin=(12.0, -18.0, 2.0)))
    out = tmp_path / "fused.nii"
    result = fuse_volumes(a, b, out, method="cnn", device="cpu", batch_size=4)
    assert result.report["resampled"] is True and 0 < result.report["coverage_of_a"] <= 1
    fused = nib.load(str(out))
    assert fused.shape == SHAPE
    np.testing.assert_allclose(fused.affine, affine, atol=1e-5)
    data = np.asarray(fused.dataobj)
    assert data.dtype == np.uint8 and data.max() > 100  # the head is there, not an empty volume
    inside = head("ct") > -500
    assert data[inside].mean() > 3 * data[~inside].mean()  # and where A has it


def test_dicom_in_and_dicom_out_keep_the_geometry(tmp_path: Path) -> None:
    ct = sitk.GetImageFromArray(np.ascontiguousarray(head("ct").transpose(2, 1, 0)).astype(np.int16))
    ct.SetSpacing((0.8, 0.9, 2.0))
    ct.SetOrigin((-12.5, 30.0, -7.0))
    t = np.deg2rad(15.0)
    ct.SetDirection((np.cos(t), -np.sin(t), 0.0, np.sin(t), np.cos(t), 0.0, 0.0, 0.0, 1.0))
    series = tmp_path / "ct_series"
    from pipeline.volume_fusion import write_dicom_series

    write_dicom_series(ct, series, "CT input", {"0008|0060": "CT", "0010|0020": "P123"})
    a = load_volume(series)
    mr = sitk.GetImageFromArray(np.ascontiguousarray(head("mr").transpose(2, 1, 0)))
    mr.CopyInformation(ct)
    b = tmp_path / "mr.mha"
    sitk.WriteImage(mr, str(b))

    out, dicom = tmp_path / "fused.nii.gz", tmp_path / "fused_dicom"
    fuse_volumes(series, b, out, method="wa", dicom_dir=dicom)
    fused = sitk.ReadImage(str(out))
    assert fused.GetSize() == a.GetSize()
    np.testing.assert_allclose(fused.GetSpacing(), a.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(fused.GetOrigin(), a.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(fused.GetDirection(), a.GetDirection(), atol=1e-5)
    for ijk in [(0, 0, 0), (31, 39, 11), (7, 20, 4)]:  # a voxel of A is the same world point in the output
        np.testing.assert_allclose(fused.TransformIndexToPhysicalPoint(ijk),
                                   a.TransformIndexToPhysicalPoint(ijk), atol=1e-4)
    back = load_volume(dicom)
    assert back.GetSize() == a.GetSize()
    np.testing.assert_allclose(back.GetOrigin(), a.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(back.GetDirection(), a.GetDirection(), atol=1e-5)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(fused))
    first = sorted(dicom.iterdir())[0]
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(first))
    reader.ReadImageInformation()
    assert reader.GetMetaData("0010|0020").strip() == "P123"  # A's patient, so a viewer files it with A


def four_d(tmp_path: Path, affine: np.ndarray) -> Path:
    return save(tmp_path / "mr_4d.nii.gz", np.stack([head("mr")] * 3, axis=-1), affine)


def nan_voxel(tmp_path: Path, affine: np.ndarray) -> Path:
    data = head("mr")
    data[3, 4, 5] = np.nan
    return save(tmp_path / "mr_nan.nii.gz", data, affine)


def far_away(tmp_path: Path, affine: np.ndarray) -> Path:
    return save(tmp_path / "mr_far.nii.gz", head("mr"), oblique_affine(origin=(900.0, 0.0, 0.0)))


def two_series(tmp_path: Path, affine: np.ndarray) -> Path:
    from pipeline.volume_fusion import write_dicom_series

    img = sitk.GetImageFromArray(np.ascontiguousarray(head("mr").transpose(2, 1, 0)).astype(np.int16))
    folder = tmp_path / "two_series"
    write_dicom_series(img, tmp_path / "s1", "one")
    write_dicom_series(img, tmp_path / "s2", "two")
    folder.mkdir()
    for k, f in enumerate([*sorted((tmp_path / "s1").iterdir()), *sorted((tmp_path / "s2").iterdir())]):
        f.rename(folder / f"{k:03d}.dcm")
    return folder


@pytest.mark.parametrize("make_b, message", [
    (far_away, "does not overlap"), (four_d, "3D"), (nan_voxel, "NaN"), (two_series, "2 DICOM series")])
def test_bad_input_is_named_and_nothing_is_written(pair, tmp_path: Path, make_b, message: str) -> None:
    a, _, affine = pair
    b = make_b(tmp_path, affine)
    folder = tmp_path / "out"
    out, dicom, figure = folder / "fused.nii.gz", folder / "dicom", folder / "f.png"
    with pytest.raises(VolumeError, match=message) as err:
        fuse_volumes(a, b, out, method="wa", dicom_dir=dicom, figure=figure)
    assert b.name in str(err.value)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_cli_fuses_volumes_and_reports_bad_ones(pair, tmp_path: Path, capsys) -> None:
    a, b, affine = pair
    out, figure = tmp_path / "fused.nii.gz", tmp_path / "fused.png"
    assert main(["fuse", "--method", "wa", str(a), str(b), str(out), "--figure", str(figure)]) == 0
    assert "on A's grid" in capsys.readouterr().out
    assert figure.stat().st_size > 1000
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # not the private mode of a temporary file
    assert main(["fuse", "--method", "wa", str(a), str(b), str(out)]) == 2  # exists: not replaced silently
    assert "--overwrite" in capsys.readouterr().err
    bad = nan_voxel(tmp_path, affine)
    assert main(["fuse", "--method", "wa", str(a), str(bad), str(tmp_path / "x.nii.gz")]) == 2
    assert f"{bad}" in capsys.readouterr().err and not (tmp_path / "x.nii.gz").exists()


def test_bundle_inference_fuses_volumes(pair, tmp_path: Path) -> None:
    from monai.bundle import run

    a, b, affine = pair
    configs = Path(__file__).resolve().parents[1] / "bundles" / "ssim_fusion" / "configs"
    run("inference", config_file=str(configs / "inference.yaml"), volume_a=str(a), volume_b=str(b),
        output_dir=str(tmp_path / "out"), device="cpu")
    fused = nib.load(str(tmp_path / "out" / "fused.nii.gz"))
    assert fused.shape == SHAPE
    np.testing.assert_allclose(fused.affine, affine, atol=1e-5)


def test_demo_volume_grids_are_scanner_like() -> None:
    from data_prep.demo_volumes import CT_GRID, MR_GRID

    ct, mr = CT_GRID.affine(), MR_GRID.affine()
    centre = (np.array(CT_GRID.shape) - 1) / 2
    np.testing.assert_allclose((ct @ [*centre, 1.0])[:3], CT_GRID.centre, atol=1e-9)
    np.testing.assert_allclose(np.linalg.norm(ct[:3, :3], axis=0), CT_GRID.spacing)
    assert np.linalg.det(ct[:3, :3]) < 0 < np.linalg.det(mr[:3, :3])  # LAS vs RAS storage
    assert abs(ct[2, 1]) > 0.1  # the gantry tilt: the second axis climbs
