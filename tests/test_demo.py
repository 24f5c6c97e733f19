"""data_prep.demo: the synthetic CT/MR phantom from nilearn's MNI152 template."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from data_prep.cli import main
from data_prep.datalist import SPLITS, DataPrepError
from data_prep.demo import SOURCE_NOTE, Template, case_styles, iter_demo_pairs, load_template, tissue_maps
from pipeline.io import read_image

SIZE = 64


@pytest.fixture(scope="module")
def template() -> Template:
    return load_template()


@pytest.fixture(scope="module")
def pairs(template: Template) -> list:
    return list(iter_demo_pairs(n_cases=3, n_slices=2, size=SIZE, seed=0, template=template))


def test_template_comes_from_the_installed_wheel(template: Template) -> None:
    assert template.t1.shape == template.gm.shape == template.wm.shape == (197, 233, 189)
    assert 0.0 <= template.gm.min() and template.wm.max() <= 1.0


def test_shape_dtype_modalities_cases(pairs: list) -> None:
    assert len(pairs) == 6
    assert {p.case for p in pairs} == {"demo01", "demo02", "demo03"}
    for p in pairs:
        assert (p.modality_a, p.modality_b, p.pair) == ("CT", "MRI", "CT-MRI")
        assert p.image_a.shape == p.image_b.shape == (SIZE, SIZE)
        assert p.image_a.dtype == p.image_b.dtype == np.uint8
    # cases come from different heights of the brain
    first_slices = sorted(min(p.slice for p in pairs if p.case == c) for c in {p.case for p in pairs})
    assert first_slices[0] < first_slices[1] < first_slices[2]


def _head(image: np.ndarray, threshold: int) -> np.ndarray:
    return ndimage.binary_fill_holes(image > threshold)


def test_contrasts_are_registered(pairs: list) -> None:
    for p in pairs:
        ct_head, mr_head = _head(p.image_a, 0), _head(p.image_b, 40)
        iou = (ct_head & mr_head).sum() / (ct_head | mr_head).sum()
        assert iou > 0.85, (p.case, p.slice, iou)
        assert ct_head.mean() > 0.15  # a head, not an empty frame
        assert not ct_head[0].any() and not ct_head[-1].any()  # the head is not cut by the frame


def test_tissue_contrasts_ct_and_t2(template: Template) -> None:
    style = case_styles(1, 1, 4, seed=0)[0]
    z = style.slices[0]
    maps = tissue_maps(template, z, style, 128)
    pair = next(iter_demo_pairs(n_cases=1, n_slices=1, size=128, seed=0, template=template))
    ct, mr = pair.image_a.astype(float), pair.image_b.astype(float)

    def mean_in(image: np.ndarray, tissue: str) -> float:
        return float(image[maps[tissue] > 0.9].mean())

    # CT: bone white, CSF darker than brain, little grey/white contrast, air black
    assert mean_in(ct, "bone") > 250
    assert mean_in(ct, "csf") < mean_in(ct, "wm") - 15
    assert 5 < mean_in(ct, "gm") - mean_in(ct, "wm") < 40
    filled = sum(maps[k] for k in ("gm", "wm", "csf", "bone", "scalp"))
    assert ct[filled < 0.01].max() == 0
    # T2-like MR: CSF brightest, grey above white matter, skull dark
    assert mean_in(mr, "csf") > mean_in(mr, "gm") + 40 > mean_in(mr, "wm") + 40 + 20
    assert mean_in(mr, "bone") < 40


def test_written_dataset_split_by_case_and_deterministic(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["demo", "--cases", "3", "--slices", "2", "--size", str(SIZE), "--seed", "4"]
    assert main([*argv[:1], str(tmp_path / "a"), *argv[1:]]) == 0
    assert main([*argv[:1], str(tmp_path / "b"), *argv[1:]]) == 0
    assert "not for clinical evaluation" in capsys.readouterr().out
    text = (tmp_path / "a" / "datalist.json").read_text()
    assert text == (tmp_path / "b" / "datalist.json").read_text()
    data = json.loads(text)
    assert data["source"] == SOURCE_NOTE == "demo (synthetic phantom, not for clinical evaluation)"
    cases = {s: {e["case"] for e in data[s]} for s in SPLITS}
    assert all(len(cases[s]) == 1 for s in SPLITS)  # 3 cases: one per split
    assert len(set().union(*cases.values())) == 3
    for s in SPLITS:
        for e in data[s]:
            assert (tmp_path / "a" / e["image_a"]).read_bytes() == (tmp_path / "b" / e["image_a"]).read_bytes()
            assert (tmp_path / "a" / e["image_b"]).read_bytes() == (tmp_path / "b" / e["image_b"]).read_bytes()
            assert read_image(tmp_path / "a" / e["image_b"]).shape == (SIZE, SIZE)
            assert (e["mode_a"], e["mode_b"]) == ("L", "L")


def test_seed_changes_the_phantom(template: Template, pairs: list) -> None:
    other = list(iter_demo_pairs(n_cases=3, n_slices=2, size=SIZE, seed=1, template=template))
    assert any(not np.array_equal(p.image_b, q.image_b) for p, q in zip(pairs, other))
    again = list(iter_demo_pairs(n_cases=3, n_slices=2, size=SIZE, seed=0, template=template))
    assert all(np.array_equal(p.image_a, q.image_a) and np.array_equal(p.image_b, q.image_b)
               for p, q in zip(pairs, again))


def test_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(DataPrepError, match="--size 8"):
        next(iter_demo_pairs(size=8))
    with pytest.raises(DataPrepError, match="slab"):
        case_styles(2, 40, 4, seed=0)
    assert main(["demo", str(tmp_path / "out"), "--cases", "0"]) == 2
    assert "need at least one case" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
