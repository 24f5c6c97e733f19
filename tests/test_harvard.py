"""data_prep.harvard: the atlas GIF tree, the flat pair tree, and every bad input."""

from __future__ import annotations

import json
import re
import zlib
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import REPO, shared_path
from data_prep.cli import main
from data_prep.datalist import SPLITS, DataPrepError
from data_prep.harvard import (DEFAULT_SERIES_MAP, DEFAULT_SERIES_MAP_PATH, SOURCE_NOTE, detect_layout,
                               find_pairs, load_series_map)
from pipeline.io import read_image, write_png

SIZE = 32
GRAY_RAMP = [v for i in range(256) for v in (i, i, i)]
#: a "hot" pseudo-colour palette like the atlas's SPECT/PET series
HOT = [v for i in range(256) for v in (min(255, 3 * i), max(0, min(255, 3 * i - 255)), max(0, 3 * i - 510))]


def _colour(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)


def _index_image(*key: object) -> np.ndarray:
    """Palette indices of one generated slice, reproducible from its (case, series, slice) key."""
    seed = zlib.crc32(repr(key).encode())
    return np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE), dtype=np.uint8)


def _write_gif(path: Path, index: np.ndarray, palette: list[int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(index, mode="P")
    im.putpalette(palette)
    im.save(path)


def _expand(index: np.ndarray, palette: list[int]) -> np.ndarray:
    return np.asarray(palette, dtype=np.uint8).reshape(256, 3)[index]


def _run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    rc = main(["harvard", *map(str, argv)])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def _entries(out: Path) -> list[dict]:
    data = json.loads((out / "datalist.json").read_text())
    return [e for s in SPLITS for e in data[s]]


# ---------------------------------------------------------------------------------- atlas tree

@pytest.fixture
def atlas(tmp_path: Path) -> Path:
    """``atlas/cases/case{2,3,4}/<series>/NNN.gif``: CT, colour SPECT, colour PET, an unmapped series."""
    cases = tmp_path / "atlas" / "cases"
    layout = {
        "case2": {"mr2": [1, 2, 3, 4], "ct1": [1, 2, 3]},      # MRI slice 4 has no CT: not used
        "case3": {"mr2": [1, 2], "tc1": [1, 2]},
        "case4": {"mr2": [1, 2], "mr1": [1, 2], "dg1": [1, 2], "pd9": [1]},
    }
    for case, series in layout.items():
        for name, slices in series.items():
            palette = HOT if name in ("tc1", "dg1") else GRAY_RAMP
            for n in slices:
                _write_gif(cases / case / name / f"{n:03d}.gif", _index_image(case, name, n), palette)
    return tmp_path / "atlas"


def test_atlas_tree_pairs_modes_and_pixels(atlas: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    rc, stdout, err = _run(capsys, atlas, out)
    assert rc == 0, err
    assert "series folder 'pd9'" in err and "ignored" in err
    entries = _entries(out)
    counts = {p: sum(e["pair"] == p for e in entries) for p in ("CT-MRI", "SPECT-MRI", "PET-MRI")}
    assert counts == {"CT-MRI": 3, "SPECT-MRI": 2, "PET-MRI": 2}
    assert {e["case"] for e in entries} == {"2", "3", "4"}
    assert "CT-MRI" in stdout and "wall time" in stdout
    spect = next(e for e in entries if e["pair"] == "SPECT-MRI" and e["slice"] == 2)
    assert (spect["mode_a"], spect["mode_b"]) == ("RGB", "L")
    expected = _expand(_index_image("case3", "tc1", 2), HOT)
    np.testing.assert_array_equal(read_image(out / spect["image_a"]), expected)
    mri = read_image(out / spect["image_b"])
    np.testing.assert_array_equal(mri, _index_image("case3", "mr2", 2))
    # mr2 is preferred over mr1 for case 4
    pet = next(e for e in entries if e["pair"] == "PET-MRI" and e["slice"] == 1)
    np.testing.assert_array_equal(read_image(out / pet["image_b"]), _index_image("case4", "mr2", 1))
    assert json.loads((out / "datalist.json").read_text())["source"] == SOURCE_NOTE


def test_atlas_tree_via_cases_folder_and_pairs_filter(atlas: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert detect_layout(atlas / "cases") == ("atlas", atlas / "cases")
    rc, _, err = _run(capsys, atlas / "cases", tmp_path / "out", "--pairs", "CT-MRI,SPECT-MRI")
    assert rc == 0, err
    assert {e["pair"] for e in _entries(tmp_path / "out")} == {"CT-MRI", "SPECT-MRI"}
    rc, _, err = _run(capsys, atlas, tmp_path / "out2", "--pairs", "MRI-CT")
    assert rc == 2 and "no MRI-CT pairs found" in err and not (tmp_path / "out2").exists()


def test_custom_series_map(atlas: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (atlas / "cases" / "case2" / "mr2").rename(atlas / "cases" / "case2" / "t2w")
    custom = tmp_path / "map.yaml"
    custom.write_text(yaml.safe_dump({"series": {"t2w": "MRI", "ct1": "CT"}, "pairs": ["CT-MRI"],
                                      "modalities": {"MRI": "gray", "CT": "gray"}}))
    rc, _, err = _run(capsys, atlas, tmp_path / "out", "--series-map", custom)
    assert rc == 0, err
    entries = _entries(tmp_path / "out")
    assert {(e["pair"], e["case"]) for e in entries} == {("CT-MRI", "2")} and len(entries) == 3


def test_shipped_series_map_matches_built_in_default() -> None:
    assert DEFAULT_SERIES_MAP_PATH == REPO / "configs" / "atlas_series.yaml"
    assert yaml.safe_load(DEFAULT_SERIES_MAP_PATH.read_text()) == DEFAULT_SERIES_MAP
    m = load_series_map()
    assert m.series_of("MRI") == ["mr2", "mr1", "mr3", "mr4"] and m.series_of("CT") == ["ct1", "ct2"] and m.pairs == ("CT-MRI", "PET-MRI", "SPECT-MRI")
    assert m.colour_policy("SPECT") == "rgb" and m.colour_policy("CT") == "gray"


@pytest.mark.parametrize("text, match", [
    ("series: [mr2]\npairs: [CT-MRI]\n", "'series' must map"),
    ("series: {mr2: MRI}\npairs: [CT-MRI]\n", "needs modality CT"),
    ("series: {mr2: MRI, ct1: CT}\npairs: [CTMRI]\n", "'pairs' must be a list"),
    ("series: {mr2: MRI, ct1: CT}\npairs: [CT-MRI]\nmodalities: {CT: colour}\n", "'modalities'"),
    ("series: {mr2: MRI\n", "not valid YAML"),
])
def test_bad_series_map(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(text)
    with pytest.raises(DataPrepError, match=match):
        load_series_map(path)
    with pytest.raises(DataPrepError, match="no such series map"):
        load_series_map(tmp_path / "absent.yaml")


def test_atlas_missing_mri_series_and_partner_and_bad_name(atlas: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    mr2 = atlas / "cases" / "case2" / "mr2"
    (mr2 / "002.gif").unlink()
    rc, _, err = _run(capsys, atlas, tmp_path / "out")
    assert rc == 2 and "case2/ct1/002.gif: its partner" in err and "mr2/002.gif is missing" in err
    for f in mr2.iterdir():
        f.unlink()
    mr2.rmdir()
    rc, _, err = _run(capsys, atlas, tmp_path / "out")
    assert rc == 2 and "case 2 has a CT series but no MRI series" in err
    (atlas / "cases" / "case3" / "tc1" / "first.gif").write_bytes(b"GIF89a")
    with pytest.raises(DataPrepError, match=r"first\.gif: an atlas slice file must be named by its slice number"):
        find_pairs(atlas / "cases", pairs=["SPECT-MRI"])
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------- flat tree

def _flat_tree(root: Path) -> Path:
    rng = np.random.default_rng(7)
    for name in ("2010", "2011", "34017"):
        write_png(root / "CT-MRI" / "CT" / f"{name}.png", rng.integers(0, 256, (SIZE, SIZE), dtype=np.uint8))
        write_png(root / "CT-MRI" / "MRI" / f"{name}.png", rng.integers(0, 256, (SIZE, SIZE), dtype=np.uint8))
    for name in ("25001", "25002", "30001"):
        write_png(root / "PET-MRI" / "PET" / f"{name}.png", rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))
        write_png(root / "PET-MRI" / "MRI" / f"{name}.png", rng.integers(0, 256, (SIZE, SIZE), dtype=np.uint8))
    return root


def test_flat_tree_pairs_names_and_byte_identical_rerun(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _flat_tree(tmp_path / "flat")
    assert detect_layout(src) == ("flat", src)
    for out in ("a", "b"):
        rc, stdout, err = _run(capsys, src, tmp_path / out, "--seed", "3")
        assert rc == 0, err
    text = (tmp_path / "a" / "datalist.json").read_text()
    assert text == (tmp_path / "b" / "datalist.json").read_text()
    entries = _entries(tmp_path / "a")
    keys = sorted((e["pair"], e["case"], e["slice"]) for e in entries)
    assert keys == [("CT-MRI", "2", 10), ("CT-MRI", "2", 11), ("CT-MRI", "34", 17),
                    ("PET-MRI", "25", 1), ("PET-MRI", "25", 2), ("PET-MRI", "30", 1)]
    ct = next(e for e in entries if e["case"] == "34")
    np.testing.assert_array_equal(read_image(tmp_path / "a" / ct["image_a"]),
                                  read_image(src / "CT-MRI" / "CT" / "34017.png"))
    assert {e["mode_a"] for e in entries if e["pair"] == "PET-MRI"} == {"RGB"}
    rc, _, err = _run(capsys, src, tmp_path / "a")  # OUT is no longer empty
    assert rc == 2 and "not empty" in err and "--overwrite" in err


def test_flat_gray_pet_slice_is_stored_as_rgb(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _flat_tree(tmp_path / "flat")
    write_png(src / "PET-MRI" / "PET" / "30001.png", np.full((SIZE, SIZE), 9, np.uint8))
    rc, _, err = _run(capsys, src, tmp_path / "out")
    assert rc == 0, err
    e = next(e for e in _entries(tmp_path / "out") if e["case"] == "30")
    assert e["mode_a"] == "RGB"
    np.testing.assert_array_equal(read_image(tmp_path / "out" / e["image_a"], mode="rgb"), 9)


def test_flat_unknown_modality_must_not_mix_gray_and_colour(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "flat"
    write_png(src / "XA-MRI" / "XA" / "1001.png", np.zeros((SIZE, SIZE), np.uint8))
    write_png(src / "XA-MRI" / "XA" / "1002.png", _colour(0))
    for n in ("1001", "1002"):
        write_png(src / "XA-MRI" / "MRI" / f"{n}.png", np.zeros((SIZE, SIZE), np.uint8))
    rc, _, err = _run(capsys, src, tmp_path / "out")
    assert rc == 2 and "XA/1002.png: is colour while" in err and "1001.png" in err
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------- bad input

def _leftovers(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in tmp_path.iterdir() if p.name != "flat")


def _corrupt(path: Path) -> None:
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("breaks, match", [
    (lambda s: write_png(s / "CT-MRI" / "MRI" / "2011.png", np.zeros((SIZE, SIZE - 4), np.uint8)),
     r"MRI/2011\.png: is 28x32 but its partner .*CT/2011\.png is 32x32"),
    (lambda s: (s / "CT-MRI" / "MRI" / "2011.png").unlink(),
     r"CT/2011\.png: its partner .*MRI/2011\.png is missing"),
    (lambda s: (s / "PET-MRI" / "PET" / "25002.png").unlink(),
     r"MRI/25002\.png: its partner .*PET/25002\.png is missing"),
    (lambda s: write_png(s / "CT-MRI" / "MRI" / "2010.png", _colour(1)),
     r"MRI/2010\.png: is a colour image, but MRI slices must be grayscale"),
    (lambda s: write_png(s / "CT-MRI" / "CT" / "34017.png", _colour(1)),
     r"CT/34017\.png: is a colour image, but CT slices must be grayscale"),
    (lambda s: _corrupt(s / "PET-MRI" / "PET" / "30001.png"),
     r"PET/30001\.png: cannot be decoded.*corrupt or truncated"),
    (lambda s: _truncate(s / "CT-MRI" / "CT" / "34017.png"), r"CT/34017\.png: cannot be decoded.*corrupt or truncated"),
    (lambda s: (s / "CT-MRI" / "CT" / "2010.png").write_bytes(b""), r"CT/2010\.png: the file is empty"),
    (lambda s: [write_png(s / "CT-MRI" / m / "slice.png", np.zeros((SIZE, SIZE), np.uint8)) for m in ("CT", "MRI")],
     r"CT/slice\.png: the name does not follow <case><3-digit slice>"),
], ids=["size-mismatch", "missing-partner", "orphan-partner", "colour-mri", "colour-ct", "corrupt", "truncated",
        "zero-bytes", "bad-name"])
def test_bad_flat_input_is_named_and_out_stays_absent(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      breaks, match: str) -> None:
    src = _flat_tree(tmp_path / "flat")
    breaks(src)
    rc, stdout, err = _run(capsys, src, tmp_path / "out")
    assert rc == 2 and stdout == ""
    assert err.startswith("error: ") and re.search(match, err), err
    assert _leftovers(tmp_path) == []  # no OUT, no staging folder


def test_failure_keeps_an_existing_empty_out_empty(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _flat_tree(tmp_path / "flat")
    _truncate(src / "PET-MRI" / "MRI" / "30001.png")
    (tmp_path / "out").mkdir()
    rc, _, err = _run(capsys, src, tmp_path / "out")
    assert rc == 2 and "30001.png" in err
    assert list((tmp_path / "out").iterdir()) == [] and _leftovers(tmp_path) == ["out"]


def test_unknown_layout_empty_and_missing_folders(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    rc, _, err = _run(capsys, tmp_path / "empty", tmp_path / "o1")
    assert rc == 2 and "empty: the folder is empty" in err and "cases/case<N>/<series>" in err
    odd = tmp_path / "odd"
    (odd / "images").mkdir(parents=True)
    (odd / "notes.txt").write_text("x")
    rc, _, err = _run(capsys, odd, tmp_path / "o2")
    assert rc == 2 and "odd: unknown layout" in err and "<A>-<B>/<A>/<case><slice3>.png" in err
    rc, _, err = _run(capsys, tmp_path / "nowhere", tmp_path / "o3")
    assert rc == 2 and "nowhere: no such folder" in err
    half = tmp_path / "half"
    (half / "CT-MRI" / "CT").mkdir(parents=True)
    rc, _, err = _run(capsys, half, tmp_path / "o4")
    assert rc == 2 and "CT-MRI/MRI: folder missing" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "half", "odd"]


# ---------------------------------------------------------------------------------- real data

@pytest.mark.shared_data
def test_real_harvard_counts_and_case_wise_split(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = shared_path("harvard")
    layout, files = find_pairs(src)
    assert layout == "flat"
    counts = {p: sum(f.pair == p for f in files) for p in ("CT-MRI", "PET-MRI", "SPECT-MRI")}
    assert counts == {"CT-MRI": 149, "PET-MRI": 269, "SPECT-MRI": 293}
    rc, stdout, err = _run(capsys, src, tmp_path / "out")
    assert rc == 0, err
    data = json.loads((tmp_path / "out" / "datalist.json").read_text())
    entries = [e for s in SPLITS for e in data[s]]
    assert {p: sum(e["pair"] == p for e in entries) for p in counts} == counts
    cases = {s: {e["case"] for e in data[s]} for s in SPLITS}
    assert not (cases["training"] & cases["validation"] or cases["training"] & cases["test"]
                or cases["validation"] & cases["test"])
    assert cases["training"] and cases["validation"] and cases["test"]
    for pair in counts:  # every pair type is represented in every split
        assert all(any(e["pair"] == pair for e in data[s]) for s in SPLITS), pair
    assert {(e["mode_a"], e["mode_b"]) for e in entries if e["pair"] != "CT-MRI"} == {("RGB", "L")}
    assert "149" in stdout and "269" in stdout and "293" in stdout
