"""Which shipped checkpoint fuses which pair type: the bundle's ``models/models.json``.

The bundle ships one network per pair type (CT-MRI, PET-MRI, SPECT-MRI), each trained and selected on
that pair type, and a default ``model.pt`` for any other pair. ``models.json`` maps pair types to
files::

    {"default": "model.pt", "pairs": {"CT-MRI": "model_ct-mri.pt", "PET-MRI": "model_pet-mri.pt", ...}}

A pair's type comes from the names of its modalities as the user already gives them (the input
subfolders ``DIR/SPECT`` and ``DIR/MRI``, a datalist entry's ``pair`` or ``modality_a/_b``, a volume's
``--modality_a``), so inference picks the right network without being told. An explicit checkpoint
(``--ckpt_path``) is used for every pair instead.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline.io import CheckpointError
from pipeline.resources import bundle_root

__all__ = ["INDEX_FILE", "MODALITY_ALIASES", "canonical_modality", "pair_type", "entry_pair_type",
           "models_dir", "read_index", "checkpoint_for"]

#: The index file in the bundle's ``models/`` folder.
INDEX_FILE = "models.json"

#: Lower-case modality names (folder names, datalist fields, DICOM Modality) -> the index's names.
MODALITY_ALIASES: dict[str, str] = {
    "ct": "CT", "pet": "PET", "pt": "PET", "spect": "SPECT", "nm": "SPECT",
    "mr": "MRI", "mri": "MRI", "t1": "MRI", "t2": "MRI", "flair": "MRI", "pd": "MRI",
}


def canonical_modality(name: str) -> str:
    """The index's name of a modality (``"mr"``, ``"T2"`` -> ``"MRI"``; ``"pt"`` -> ``"PET"``).

    Args:
        name: a modality as a folder, datalist field or DICOM ``Modality`` names it.

    Returns:
        ``CT``, ``PET``, ``SPECT`` or ``MRI``; any other name upper-cased as given.
    """
    key = str(name).strip()
    return MODALITY_ALIASES.get(key.lower(), key.upper())


def pair_type(modality_a: str, modality_b: str) -> str:
    """The pair type of two modalities, ``"<A>-<B>"`` in the index's names (``("spect", "MR")`` -> ``"SPECT-MRI"``).

    Args:
        modality_a: source A's modality.
        modality_b: source B's modality (the MRI in the shipped pair types).

    Returns:
        the pair type.
    """
    return f"{canonical_modality(modality_a)}-{canonical_modality(modality_b)}"


def entry_pair_type(entry: Mapping[str, Any]) -> str | None:
    """The pair type of a datalist entry: its ``modality_a``/``modality_b``, else its ``pair`` field.

    Args:
        entry: a datalist entry.

    Returns:
        the pair type, or ``None`` when the entry names neither.
    """
    if entry.get("modality_a") and entry.get("modality_b"):
        return pair_type(entry["modality_a"], entry["modality_b"])
    pair = entry.get("pair")
    if isinstance(pair, str) and pair.count("-") == 1:
        return pair_type(*pair.split("-"))
    return None


def models_dir() -> Path:
    """The bundle's ``models/`` folder (checkout or installed wheel alike)."""
    return bundle_root() / "models"


def read_index(folder: str | os.PathLike | None = None) -> dict[str, Any]:
    """The model index of a ``models/`` folder.

    Args:
        folder: the folder holding ``models.json`` (default: the bundle's).

    Returns:
        ``{"default": file name, "pairs": {pair type: file name}}``; a folder without an index
        is ``{"default": "model.pt", "pairs": {}}``.

    Raises:
        CheckpointError: the index is not valid JSON or names a file outside its folder.
    """
    root = Path(folder) if folder is not None else models_dir()
    path = root / INDEX_FILE
    try:
        mtime = path.stat().st_mtime_ns
    except OSError:
        return {"default": "model.pt", "pairs": {}}
    index = _parsed_index(str(path), mtime)
    return {"default": index["default"], "pairs": dict(index["pairs"])}


@functools.lru_cache(maxsize=8)
def _parsed_index(path: str, mtime: int) -> dict[str, Any]:
    """``models.json`` read and checked once per (file, modification time): pairs ask per entry."""
    root = Path(path).parent
    try:
        index = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable model index ({err}); reinstall the bundle") from None
    pairs = index.get("pairs", {}) if isinstance(index, dict) else None
    default = index.get("default", "model.pt") if isinstance(index, dict) else None
    if not isinstance(pairs, dict) or not isinstance(default, str):
        raise CheckpointError(f"{path}: expected {{'default': file, 'pairs': {{pair type: file}}}}")
    for name in (default, *pairs.values()):
        if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
            raise CheckpointError(f"{path}: {name!r} is not a file name inside {root}")
    return {"default": default, "pairs": {pair_type(*k.split("-", 1)) if "-" in k else k: v
                                          for k, v in pairs.items()}}


def checkpoint_for(pair: str | None, folder: str | os.PathLike | None = None) -> Path:
    """The checkpoint that fuses pairs of type ``pair``: its own, else the default.

    Args:
        pair: a pair type (:func:`pair_type`), or ``None`` when unknown.
        folder: a ``models/`` folder with its ``models.json`` (default: the bundle's).

    Returns:
        the checkpoint path (it may not exist; loading it says so).
    """
    root = Path(folder) if folder is not None else models_dir()
    index = read_index(root)
    key = pair_type(*pair.split("-", 1)) if pair and "-" in pair else pair
    return root / index["pairs"].get(key, index["default"])
