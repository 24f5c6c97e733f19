"""The bundle's metadata verifies offline against the schema it ships (checked by its hash)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from pipeline.resources import METADATA_SCHEMA_SHA256, bundle_root, metadata_schema

META = bundle_root() / "configs" / "metadata.json"


def test_shipped_schema_matches_its_hash() -> None:
    assert hashlib.sha256(metadata_schema().read_bytes()).hexdigest() == METADATA_SCHEMA_SHA256
    schema = json.loads(metadata_schema().read_text())
    assert {"version", "monai_version", "network_data_format"} <= set(schema["required"])


def _no_network(*args: object, **kwargs: object) -> None:
    raise AssertionError("verify_metadata tried to download the schema")


def test_verify_metadata_offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pytest.importorskip("jsonschema", reason="MONAI's verify_metadata needs jsonschema (install_requires)")
    import monai.apps.utils
    from monai.bundle import verify_metadata

    monkeypatch.setattr(monai.apps.utils, "_download_with_progress", _no_network)
    monkeypatch.setattr(monai.apps.utils, "urlopen", _no_network)
    verify_metadata(meta_file=str(META), filepath=str(metadata_schema()), hash_val=METADATA_SCHEMA_SHA256,
                    hash_type="sha256")
    # a metadata file without a mandatory key is refused
    broken = json.loads(META.read_text())
    del broken["network_data_format"]
    (tmp_path / "metadata.json").write_text(json.dumps(broken))
    with pytest.raises(ValueError, match="network_data_format"):
        verify_metadata(meta_file=str(tmp_path / "metadata.json"), filepath=str(metadata_schema()),
                        hash_val=METADATA_SCHEMA_SHA256, hash_type="sha256")
    # a schema that is not the shipped one is refused by the hash
    other = tmp_path / "schema.json"
    other.write_text(metadata_schema().read_text() + "\n")
    with pytest.raises(Exception, match="hash check"):
        verify_metadata(meta_file=str(META), filepath=str(other), hash_val=METADATA_SCHEMA_SHA256,
                        hash_type="sha256")
