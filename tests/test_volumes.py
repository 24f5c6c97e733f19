"""`python -m data_prep volumes`: generated NIfTI / DICOM / MHA phantoms, resampling, rigid
registration, windowing, orientation and every bad input."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from data_prep.cli import main
from data_prep.datalist import DataPrepError
from data_prep.volumes import (
    CT_WINDOWS,
    case_id_from_path,
    load_volume,
    register_rigid,
    scale_percentiles,
    to_square_slice,
    window_ct,
)
from pipeline.io import read_image, write_png

SHAPE = (32, 32, 10)  # x, y, z voxels
SPACING = (1.0, 1.0, 2.0)  # mm


def phantom(shift_mm=(0.0, 0.0, 0.0), shape=SHAPE, spacing=SPACING, kind="ct") -> np.ndarray:
    """A head-like ellipsoid in (x, y, z) array order: skull ring, brain, a lesion off-centre,
    background air. CT in HU, MR in arbitrary units. Slices 0 and last are empty (air)."""
    grids = np.meshgrid(*[(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing)], indexing="ij")
    x, y, z = (g - d for g, d in zip(grids, shift_mm))
    r = (x / 13) ** 2 + (y / 11) ** 2 + (z / 8.5) ** 2
    lesion = ((x - 5) / 3) ** 2 + ((y + 3) / 3) ** 2 + (z / 4) ** 2 < 1
    if kind == "ct":
        v = np.full(shape, -1000.0)
        v[r < 1] = 35.0
        v[(r < 1) & (r > 0.75)] = 900.0  # skull
        v[lesion] = 70.0
    else:
        v = np.zeros(shape)
        v[r < 1] = 400.0
        v[(r < 1) & (r > 0.75)] = 80.0
        v[lesion] = 900.0
    return v.astype(np.float32)


def save_nifti(path: Path, data: np.ndarray, spacing=SPACING, origin=(0.0, 0.0, 0.0)) -> Path:
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = origin
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def as_sitk(data: np.ndarray, spacing=SPACING, origin=(0.0, 0.0, 0.0), dtype=np.float32) -> sitk.Image:
    img = sitk.GetImageFromArray(np.ascontiguousarray(data.transpose(2, 1, 0)).astype(dtype))
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    return img


def save_dicom_series(folder: Path, image: sitk.Image, modality: str, uid: str) -> Path:
    """One file per slice with the geometry tags a scanner writes (SimpleITK/GDCM writer)."""
    folder.mkdir()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(image.GetDepth()):
        s = image[:, :, k]
        tags = {"0008|0060": modality, "0020|000d": f"{uid}.1", "0020|000e": f"{uid}.2",
                "0008|0018": f"{uid}.3.{k}", "0020|0013": str(k + 1), "0020|0037": "1\\0\\0\\0\\1\\0",
                "0020|0032": "\\".join(f"{v:.4f}" for v in image.TransformIndexToPhysicalPoint((0, 0, k)))}
        for tag, value in tags.items():
            s.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{k:03d}.dcm"))
        writer.Execute(s)
    return folder


def volumes(*args: str) -> int:
    return main(["volumes", *map(str, args)])


def load(out: Path) -> dict:
    return json.loads((out / "datalist.json").read_text())


@pytest.fixture
def nifti_pair(tmp_path):
    a = save_nifti(tmp_path / "sub01_ct.nii.gz", phantom(kind="ct"))
    b = save_nifti(tmp_path / "sub01_mr.nii.gz", phantom(kind="mr"))
    return a, b


def test_nifti_pair_same_grid(nifti_pair, tmp_path):
    a, b = nifti_pair
    out = tmp_path / "out"
    assert volumes(a, b, out) == 0
    dl = load(out)
    # a single case goes to "test" by default; the empty end slices (air) were dropped
    assert dl["training"] == [] and dl["validation"] == []
    entries = dl["test"]
    assert {e["case"] for e in entries} == {"sub01_ct"}
    assert [e["slice"] for e in entries] == list(range(1, 9))
    assert dl["volumes"]["resampled"] is False and dl["volumes"]["slices_dropped"] == 2
    e = entries[4]
    assert (e["pair"], e["modality_a"], e["modality_b"], e["mode_a"]) == ("CT-MRI", "CT", "MRI", "L")
    ct, mr = read_image(out / e["image_a"]), read_image(out / e["image_b"])
    assert ct.shape == mr.shape == (256, 256)
    # brain window L40 W80: 35 HU -> (35 - 0) / 80 * 255 = 112, air -> 0, skull -> 255
    assert ct[128, 128] == round(35 / 80 * 255)
    assert ct[0, 0] == 0 and ct.max() == 255
    # MR scaled by percentiles: the lesion (brightest) saturates, background stays black
    assert mr.max() == 255 and mr[0, 0] == 0


def test_orientation_is_radiological(tmp_path):
    """NIfTI RAS: a marker at the patient's right (+x), anterior (+y) shows on the image's left, top."""
    data = phantom(kind="mr")
    data[26:29, 24:27, 4:6] = 5000.0  # right-anterior of centre in RAS voxel space (identity affine)
    a = save_nifti(tmp_path / "m.nii", data)
    out = tmp_path / "out"
    assert volumes(a, a, out, "--modality-a", "MRI", "--modality-b", "T2", "--case", "m1",
                   "--percentiles", "0", "100") == 0
    e = next(e for e in load(out)["test"] if e["slice"] == 4)
    img = read_image(out / e["image_a"]).astype(float)
    rows, cols = np.nonzero(img >= 254)
    assert cols.mean() < 128 and rows.mean() < 128  # left half = patient right; top half = anterior


def test_different_grid_is_resampled(nifti_pair, tmp_path):
    a, _ = nifti_pair
    # B: same subject, coarser in-plane grid (2 mm), a different origin, covering the same extent
    coarse = phantom(kind="mr", shape=(16, 16, 10), spacing=(2.0, 2.0, 2.0))
    b = save_nifti(tmp_path / "coarse_mr.nii.gz", coarse, spacing=(2.0, 2.0, 2.0), origin=(0.5, 0.5, 0.0))
    out, ref = tmp_path / "out", tmp_path / "ref"
    assert volumes(a, b, out, "--case", "c1") == 0
    assert volumes(*nifti_pair, ref, "--case", "c1") == 0
    report = load(out)["volumes"]
    assert report["resampled"] is True and report["coverage_of_a"] > 0.9
    got = {e["slice"]: read_image(out / e["image_b"]).astype(float) for e in load(out)["test"]}
    want = {e["slice"]: read_image(ref / e["image_b"]).astype(float) for e in load(ref)["test"]}
    assert got.keys() == want.keys()
    k = sorted(got)[len(got) // 2]
    assert np.corrcoef(got[k].ravel(), want[k].ravel())[0, 1] > 0.9


def test_dicom_series_pair(tmp_path):
    ct = as_sitk(phantom(kind="ct"), dtype=np.int16)
    mr = as_sitk(phantom(kind="mr"), dtype=np.int16)
    a = save_dicom_series(tmp_path / "ct_series", ct, "CT", "1.2.826.0.1.3680043.2.1125.7.1")
    b = save_dicom_series(tmp_path / "mr_series", mr, "MR", "1.2.826.0.1.3680043.2.1125.7.2")
    vol = load_volume(a)
    assert vol.GetSize() == SHAPE and vol.GetSpacing() == pytest.approx(SPACING)
    assert sitk.GetArrayViewFromImage(vol).min() == -1000  # HU survive the DICOM round trip
    out = tmp_path / "out"
    assert volumes(a, b, out, "--split", "validation") == 0
    dl = load(out)
    assert dl["test"] == [] and len(dl["validation"]) == 8
    assert {e["case"] for e in dl["validation"]} == {"ct_series"}
    assert dl["volumes"]["resampled"] is False


def test_mha_pair_matches_nifti(nifti_pair, tmp_path):
    a_mha, b_mha = tmp_path / "a.mha", tmp_path / "b.mha"
    # the same voxels as the NIfTI pair, written in LPS world coordinates (NIfTI RAS identity -> x, y flipped)
    for src, dst in zip(nifti_pair, (a_mha, b_mha)):
        sitk.WriteImage(load_volume(src), str(dst))
    out, ref = tmp_path / "out", tmp_path / "ref"
    assert volumes(a_mha, b_mha, out, "--case", "x") == 0
    assert volumes(*nifti_pair, ref, "--case", "x") == 0
    for e, f in zip(load(out)["test"], load(ref)["test"], strict=True):
        assert np.array_equal(read_image(out / e["image_a"]), read_image(ref / f["image_a"]))
        assert np.array_equal(read_image(out / e["image_b"]), read_image(ref / f["image_b"]))


def test_register_recovers_a_shift(tmp_path):
    shift = (2.5, -1.5, 0.0)  # mm, in LPS after loading
    fixed = as_sitk(phantom(kind="ct"))
    moving = as_sitk(phantom(shift, kind="ct"))
    transform, report = register_rigid(fixed, moving)
    assert report["translation_mm"] == pytest.approx(list(shift), abs=0.5)
    assert max(abs(a) for a in report["rotation_deg"]) < 3.0

    # through the CLI (CT vs MR: mutual information), B aligned onto A before slicing
    a = tmp_path / "a.mha"
    b = tmp_path / "b.mha"
    sitk.WriteImage(fixed, str(a))
    sitk.WriteImage(as_sitk(phantom(shift, kind="mr")), str(b))
    out, plain = tmp_path / "out", tmp_path / "plain"
    assert volumes(a, b, out, "--register", "--case", "r") == 0
    reg = load(out)["volumes"]["registration"]
    assert reg["translation_mm"] == pytest.approx(list(shift), abs=0.75)
    assert volumes(a, b, plain, "--case", "r") == 0
    ref = tmp_path / "ref.mha"
    sitk.WriteImage(as_sitk(phantom(kind="mr")), str(ref))
    aligned = tmp_path / "aligned"
    assert volumes(a, ref, aligned, "--case", "r") == 0

    def mid_b(folder):
        e = load(folder)["test"][3]
        return read_image(folder / e["image_b"]).astype(float).ravel()

    # registered B matches the truly aligned B far better than the unregistered one (correlation;
    # absolute levels differ a little since percentiles are taken over the resampled voxels)
    corr_registered = np.corrcoef(mid_b(out), mid_b(aligned))[0, 1]
    corr_plain = np.corrcoef(mid_b(plain), mid_b(aligned))[0, 1]
    assert corr_registered > 0.95 and corr_plain < 0.85


def test_windows_and_percentiles():
    hu = np.array([-1000.0, 0.0, 40.0, 80.0, 3000.0])
    assert window_ct(hu, *CT_WINDOWS["brain"]).tolist() == [0.0, 0.0, 0.5, 1.0, 1.0]
    assert window_ct(np.array([600.0]), *CT_WINDOWS["bone"])[0] == pytest.approx(0.5)
    v = np.arange(101, dtype=float)
    assert scale_percentiles(v, 10, 90)[[0, 10, 50, 90, 100]].tolist() == pytest.approx([0, 0, 0.5, 1, 1])
    with pytest.raises(DataPrepError, match="constant"):
        scale_percentiles(np.zeros(10), 0.5, 99.5, name="flat.nii")


def test_square_slice_keeps_physical_aspect():
    img = np.ones((20, 40), dtype=np.float32)  # 40 wide, 20 high, isotropic: a 2:1 box
    out = to_square_slice(img, (1.0, 1.0), 256)
    rows = np.nonzero(out.any(axis=1))[0]
    assert out.shape == (256, 256) and len(rows) == 128 and out.all(axis=0).sum() == 0
    out = to_square_slice(np.ones((40, 20), dtype=np.float32), (2.0, 1.0), 64)  # 40 mm x 40 mm: fills
    assert out.min() == 255


def test_case_id_from_path():
    assert case_id_from_path("/d/sub-01_ct.nii.gz") == "sub-01_ct"
    assert case_id_from_path("scan.v2.mha") == "scan_v2"
    assert case_id_from_path("/d/DICOM series/") == "DICOM_series"


# ------------------------------------------------------------------------------------- bad input


def no_output_left(out: Path) -> bool:
    return not out.exists() and not list(out.parent.glob(f".{out.name}.partial-*"))


def test_no_physical_overlap_is_refused(nifti_pair, tmp_path, capsys):
    a, _ = nifti_pair
    far = save_nifti(tmp_path / "far.nii.gz", phantom(kind="mr"), origin=(500.0, 0.0, 0.0))
    out = tmp_path / "out"
    assert volumes(a, far, out) == 2
    err = capsys.readouterr().err
    assert "far.nii.gz: does not overlap" in err and "--register" in err
    assert no_output_left(out)


def test_nan_voxels_are_refused_or_zeroed(tmp_path, capsys):
    data = phantom(kind="mr")
    data[10, 10, 5] = np.nan
    data[11, 10, 5] = np.inf
    bad = save_nifti(tmp_path / "nan.nii.gz", data)
    good = save_nifti(tmp_path / "ct.nii.gz", phantom(kind="ct"))
    out = tmp_path / "out"
    assert volumes(good, bad, out) == 2
    assert "nan.nii.gz: 2 of 10240 voxels are NaN or Inf" in capsys.readouterr().err
    assert no_output_left(out)
    with pytest.warns(UserWarning, match="2 NaN/Inf voxels treated as 0"):
        assert volumes(good, bad, out, "--nan-as-zero") == 0
    assert len(load(out)["test"]) == 8


def test_corrupt_and_missing_files(nifti_pair, tmp_path, capsys):
    a, b = nifti_pair
    corrupt = tmp_path / "broken.nii.gz"
    corrupt.write_bytes(b.read_bytes()[:200])  # truncated gzip stream
    garbage_mha = tmp_path / "garbage.mha"
    garbage_mha.write_bytes(b"ObjectType = Image\nNDims = 3\nDimSize = 4 4 4\nElementType = MET_FLOAT\n"
                            b"ElementDataFile = LOCAL\n" + b"\x00" * 10)
    out = tmp_path / "out"
    assert volumes(a, corrupt, out) == 2
    assert "broken.nii.gz: cannot be read as NIfTI" in capsys.readouterr().err
    assert volumes(a, garbage_mha, out) == 2
    assert "garbage.mha: cannot be read as a volume" in capsys.readouterr().err
    assert volumes(a, tmp_path / "nope.nii.gz", out) == 2
    assert "nope.nii.gz: no such file or folder" in capsys.readouterr().err
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    assert volumes(a, empty, out) == 2
    assert "empty_dir: holds no DICOM series" in capsys.readouterr().err
    assert no_output_left(out)


def test_2d_image_given_as_volume(nifti_pair, tmp_path, capsys):
    a, _ = nifti_pair
    png = tmp_path / "slice.png"
    write_png(png, np.zeros((16, 16), dtype=np.uint8))
    flat = save_nifti(tmp_path / "flat.nii", np.zeros((16, 16), dtype=np.float32))
    out = tmp_path / "out"
    for path in (png, flat):
        assert volumes(a, path, out) == 2
        assert f"{path.name}: is a 2D image" in capsys.readouterr().err
    assert no_output_left(out)


def test_split_options_and_out_checks(nifti_pair, tmp_path, capsys):
    a, b = nifti_pair
    out = tmp_path / "out"
    assert volumes(a, b, out, "--fractions", "0.5", "0.25", "0.25") == 2
    assert "--fractions cannot split a single case" in capsys.readouterr().err
    assert volumes(a, b, out, "--training-cases", "other") == 2
    assert "are in the data but in no split list" in capsys.readouterr().err
    assert no_output_left(out)
    assert volumes(a, b, out, "--training-cases", "sub01_ct", "--min-foreground", "0.3") == 0
    dl = load(out)
    assert dl["test"] == [] and 0 < len(dl["training"]) < 8  # a higher threshold drops more slices
    # OUT is now a data set: refused before any work without --overwrite, replaced with it
    assert volumes(a, b, out) == 2
    assert "not an empty folder" in capsys.readouterr().err
    assert volumes(a, b, out, "--overwrite", "--window", "0,400") == 0
    assert load(out)["test"] and load(out)["volumes"]["window"] == [0.0, 400.0]


def test_bad_window_is_an_argument_error(nifti_pair, tmp_path):
    a, b = nifti_pair
    with pytest.raises(SystemExit) as exc:
        volumes(a, b, tmp_path / "o", "--window", "wide")
    assert exc.value.code == 2


def test_all_slices_empty(tmp_path, capsys):
    air = save_nifti(tmp_path / "air.nii.gz", np.full(SHAPE, -1000.0, dtype=np.float32))
    mr = save_nifti(tmp_path / "mr.nii.gz", phantom(kind="mr"))
    out = tmp_path / "out"
    assert volumes(air, mr, out) == 2
    assert "all 10 axial slices were dropped as empty" in capsys.readouterr().err
    assert no_output_left(out)
