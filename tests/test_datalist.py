"""data_prep.datalist: case-wise splits, atomic dataset writing, safe datalist loading."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from data_prep.datalist import (SPLITS, DataPrepError, SlicePair, SplitSpec, load_datalist, split_cases,
                                write_dataset)
from pipeline.io import read_image


def _pairs(cases: dict[str, list[str]], slices: int = 2, size: int = 8) -> list[SlicePair]:
    out = []
    for pair, case_ids in cases.items():
        mod_a, mod_b = pair.split("-")
        for c in case_ids:
            for s in range(slices):
                a = np.full((size, size), int(c) % 250, np.uint8)
                if mod_a in ("PET", "SPECT"):  # pseudo-colour: channels differ
                    a = np.stack([a, a // 2, 255 - a], axis=-1)
                b = np.full((size, size), s, np.uint8)
                out.append(SlicePair(a, b, mod_a, mod_b, c, s, source=f"{pair}/{c}/{s}"))
    return out


def test_fraction_split_counts_and_disjoint() -> None:
    cases = {"CT-MRI": [str(i) for i in range(20)]}
    assignment = split_cases(cases, SplitSpec(fractions=(0.7, 0.15, 0.15), seed=1))
    counts = {s: sum(1 for v in assignment.values() if v == s) for s in SPLITS}
    assert counts == {"training": 14, "validation": 3, "test": 3}
    assert set(assignment) == set(cases["CT-MRI"])


def test_small_pair_type_gets_a_case_in_every_split() -> None:
    cases = {"PET-MRI": ["25", "30", "41"], "CT-MRI": [str(i) for i in range(1, 11)]}
    assignment = split_cases(cases, SplitSpec(seed=0))
    assert sorted(assignment[c] for c in cases["PET-MRI"]) == sorted(SPLITS)


def test_pair_types_sharing_cases_still_cover_every_split() -> None:
    cases = {"CT-MRI": ["2", "28", "41", "5", "6"], "PET-MRI": ["25", "30", "41"], "SPECT-MRI": ["25", "28", "3", "4"]}
    for seed in range(10):
        assignment = split_cases(cases, SplitSpec(seed=seed))
        assert set(assignment) == {c for cs in cases.values() for c in cs}
        for pair, cs in cases.items():
            if len(cs) >= 3:
                assert {assignment[c] for c in cs} == set(SPLITS), (seed, pair)


def test_split_is_deterministic_and_seed_matters() -> None:
    cases = {"CT-MRI": [str(i) for i in range(30)]}
    a = split_cases(cases, SplitSpec(seed=3))
    assert a == split_cases(cases, SplitSpec(seed=3))
    assert any(split_cases(cases, SplitSpec(seed=s)) != a for s in range(4, 8))


def test_bad_fractions() -> None:
    with pytest.raises(DataPrepError, match="summing to 1"):
        split_cases({"CT-MRI": ["1"]}, SplitSpec(fractions=(0.5, 0.2, 0.2)))
    with pytest.raises(DataPrepError, match="non-negative"):
        split_cases({"CT-MRI": ["1"]}, SplitSpec(fractions=(1.2, -0.1, -0.1)))


def test_explicit_lists() -> None:
    cases = {"CT-MRI": ["1", "2", "3"]}
    spec = SplitSpec(cases={"training": ["1"], "validation": ["2"], "test": ["3"]})
    assert split_cases(cases, spec) == {"1": "training", "2": "validation", "3": "test"}
    with pytest.raises(DataPrepError, match=r"case 2 is listed in both training and test"):
        split_cases(cases, SplitSpec(cases={"training": ["1", "2"], "test": ["2", "3"]}))
    with pytest.raises(DataPrepError, match=r"\['3'\].*in no split list"):
        split_cases(cases, SplitSpec(cases={"training": ["1"], "test": ["2"]}))


def test_write_dataset_layout_modes_and_byte_identical(tmp_path: Path) -> None:
    pairs = _pairs({"CT-MRI": ["1", "2", "3"], "PET-MRI": ["3", "4", "5", "6"]})
    dl = write_dataset(pairs, tmp_path / "a", SplitSpec(seed=5), extra={"source": "test"})
    write_dataset(list(reversed(pairs)), tmp_path / "b", SplitSpec(seed=5), extra={"source": "test"})
    text = (tmp_path / "a" / "datalist.json").read_text()
    assert text == (tmp_path / "b" / "datalist.json").read_text()  # order of input does not matter
    data = json.loads(text)
    assert data["source"] == "test"
    entries = [e for s in SPLITS for e in data[s]]
    assert len(entries) == 14 and entries == [e for s in SPLITS for e in dl[s]]
    shared = [(s, e["pair"]) for s in SPLITS for e in data[s] if e["case"] == "3"]
    assert {p for _, p in shared} == {"CT-MRI", "PET-MRI"} and len({s for s, _ in shared}) == 1
    pet = next(e for e in entries if e["pair"] == "PET-MRI")
    assert (pet["mode_a"], pet["mode_b"], pet["modality_a"]) == ("RGB", "L", "PET")
    assert pet["image_a"] == f"PET-MRI/PET/{pet['case']}_{pet['slice']:03d}.png"
    assert read_image(tmp_path / "a" / pet["image_a"]).shape == (8, 8, 3)
    for s in SPLITS:  # every case lies in one split only
        others = {e["case"] for t in SPLITS if t != s for e in data[t]}
        assert not ({e["case"] for e in data[s]} & others)
    assert not list(tmp_path.glob(".*partial*"))


def _bad_pairs() -> list[SlicePair]:
    good = _pairs({"CT-MRI": ["1", "2"]})
    bad = SlicePair(np.zeros((8, 8), np.uint8), np.zeros((8, 6), np.uint8), "CT", "MRI", "3", 0, source="bad.png")
    return [*good, bad]


def test_write_dataset_failure_leaves_out_absent_and_no_staging(tmp_path: Path) -> None:
    with pytest.raises(DataPrepError, match=r"bad\.png: the two slices differ in size"):
        write_dataset(_bad_pairs(), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert list(tmp_path.iterdir()) == []


def test_write_dataset_failure_keeps_old_out_untouched(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_dataset(_pairs({"CT-MRI": ["1", "2", "3"]}), out)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    old_text = (out / "datalist.json").read_text()
    with pytest.raises(DataPrepError):
        write_dataset(_bad_pairs(), out, overwrite=True)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert (out / "datalist.json").read_text() == old_text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_write_dataset_refuses_non_empty_out_and_duplicates_and_nothing(tmp_path: Path) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    with pytest.raises(DataPrepError, match="not empty.*--overwrite"):
        write_dataset(_pairs({"CT-MRI": ["1"]}), tmp_path / "full")
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["keep.txt"]
    dup = _pairs({"CT-MRI": ["1"]}, slices=1)
    with pytest.raises(DataPrepError, match="appears twice"):
        write_dataset(dup + dup, tmp_path / "dup")
    with pytest.raises(DataPrepError, match="no slice pairs"):
        write_dataset([], tmp_path / "none")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]
    with pytest.raises(DataPrepError, match="must be uint8"):
        write_dataset([SlicePair(np.zeros((4, 4)), np.zeros((4, 4), np.uint8), "CT", "MRI", "1", 0)], tmp_path / "f")


def test_write_dataset_into_existing_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    write_dataset(_pairs({"CT-MRI": ["1", "2", "3"]}), tmp_path / "out")
    assert (tmp_path / "out" / "datalist.json").is_file()


def test_load_datalist_absolute_paths_and_splits(tmp_path: Path) -> None:
    write_dataset(_pairs({"CT-MRI": ["1", "2", "3"]}), tmp_path / "d")
    all_splits = load_datalist(tmp_path / "d" / "datalist.json")
    assert set(all_splits) == set(SPLITS)
    test = load_datalist(tmp_path / "d" / "datalist.json", "test")
    assert test and all(Path(e["image_a"]).is_absolute() and Path(e["image_b"]).is_file() for e in test)
    with pytest.raises(DataPrepError, match="unknown split"):
        load_datalist(tmp_path / "d" / "datalist.json", "train")


@pytest.mark.parametrize("bad", ["../outside.png", "/etc/passwd", "sub/../../x.png"])
def test_load_datalist_refuses_path_escape(tmp_path: Path, bad: str) -> None:
    (tmp_path / "d").mkdir()
    entry = {"image_a": bad, "image_b": "ok.png", "case": "1", "slice": 0}
    (tmp_path / "d" / "datalist.json").write_text(json.dumps({"training": [entry]}))
    with pytest.raises(DataPrepError, match="points outside the data folder"):
        load_datalist(tmp_path / "d" / "datalist.json")


def test_load_datalist_bad_files(tmp_path: Path) -> None:
    with pytest.raises(DataPrepError, match="no such datalist"):
        load_datalist(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataPrepError, match="not valid JSON"):
        load_datalist(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text('{"items": []}')
    with pytest.raises(DataPrepError, match="not a datalist"):
        load_datalist(tmp_path / "other.json")
