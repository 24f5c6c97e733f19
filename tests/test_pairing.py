"""Pairing by name, the one rule of inference, the metrics command and data_prep's flat pair tree."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_prep.datalist import DataPrepError
from data_prep.harvard import find_flat_pairs
from pipeline.pairing import find_pairs, image_files, images_by_stem, pair_folders


def _png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(path)
    return path


def test_hidden_and_other_files_are_not_images(tmp_path: Path) -> None:
    _png(tmp_path / "a.png")
    _png(tmp_path / ".a.png")
    (tmp_path / "notes.txt").write_text("x")
    assert [p.name for p in image_files(tmp_path)] == ["a.png"]
    assert [p.name for p in image_files(tmp_path, suffixes=None)] == ["a.png", "notes.txt"]
    assert list(images_by_stem(tmp_path)) == ["a"]


def test_two_files_of_one_name_are_an_error_everywhere(tmp_path: Path) -> None:
    for d in ("CT", "MRI"):
        _png(tmp_path / "CT-MRI" / d / "2010.png")
    _png(tmp_path / "CT-MRI" / "CT" / "2010.gif")
    with pytest.raises(ValueError, match=r"two files named 2010\.\* \(2010\.gif, 2010\.png\)"):
        find_pairs(tmp_path / "CT-MRI")
    with pytest.raises(DataPrepError, match=r"two files named 2010\.\*"):
        find_flat_pairs(tmp_path)
    with pytest.raises(ValueError, match=r"two files named 2010\.\*"):
        pair_folders(tmp_path / "CT-MRI" / "MRI", tmp_path / "CT-MRI" / "MRI", tmp_path / "CT-MRI" / "CT")


def test_pair_folders_names_the_missing_sources(tmp_path: Path) -> None:
    a, b, f = (_png(tmp_path / d / "x.png").parent for d in ("A", "B", "F"))
    _png(f / "y.png")
    with pytest.raises(ValueError, match=r"without same-named sources: y \(not in .*A\), y \(not in .*B\)"):
        pair_folders(a, b, f)
    (f / "y.png").unlink()
    assert pair_folders(a, b, f) == [("x", a / "x.png", b / "x.png", f / "x.png")]
