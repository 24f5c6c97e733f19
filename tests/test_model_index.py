"""pipeline.model_index: which shipped checkpoint fuses which pair type."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.io import CheckpointError
from pipeline.model_index import (canonical_modality, checkpoint_for, entry_pair_type, models_dir, pair_type,
                                  read_index)


def test_modality_names_as_users_write_them() -> None:
    assert [canonical_modality(m) for m in ("ct", "MR", "mri", "T2", "pet", "PT", "spect", "NM")] == [
        "CT", "MRI", "MRI", "MRI", "PET", "PET", "SPECT", "SPECT"]
    assert canonical_modality("us") == "US"
    assert pair_type("spect", "MR") == "SPECT-MRI"
    assert entry_pair_type({"modality_a": "PET", "modality_b": "MRI", "pair": "x"}) == "PET-MRI"
    assert entry_pair_type({"pair": "ct-mr"}) == "CT-MRI"
    assert entry_pair_type({"pair": "pairs"}) is None
    assert entry_pair_type({}) is None


def test_the_index_picks_a_network_per_pair_type(tmp_path: Path) -> None:
    (tmp_path / "models.json").write_text(json.dumps(
        {"default": "model.pt", "pairs": {"CT-MRI": "ct.pt", "spect-mr": "spect.pt"}}))
    assert checkpoint_for("CT-MRI", tmp_path) == tmp_path / "ct.pt"
    assert checkpoint_for("SPECT-MRI", tmp_path) == tmp_path / "spect.pt"  # the index's key normalised
    assert checkpoint_for("PET-MRI", tmp_path) == tmp_path / "model.pt"  # not listed: the default
    assert checkpoint_for(None, tmp_path) == tmp_path / "model.pt"
    assert checkpoint_for("CT-MRI", tmp_path / "none") == tmp_path / "none" / "model.pt"  # no index


@pytest.mark.parametrize("index", ['{"default": "../x.pt", "pairs": {}}', '{"pairs": {"CT-MRI": "/etc/x"}}',
                                   '{"pairs": ["a"]}', "not json"])
def test_a_bad_index_is_one_clear_error(tmp_path: Path, index: str) -> None:
    (tmp_path / "models.json").write_text(index)
    with pytest.raises(CheckpointError, match="models.json"):
        read_index(tmp_path)


def test_the_bundle_ships_a_network_for_every_pair_type() -> None:
    index = read_index()
    assert set(index["pairs"]) == {"CT-MRI", "PET-MRI", "SPECT-MRI"}
    for name in (index["default"], *index["pairs"].values()):
        assert (models_dir() / name).is_file(), name
