"""Where the files that ship with the project are: the MONAI bundle, its model, the atlas series map.

The bundle (``bundles/ssim_fusion``) and ``configs/`` are Python packages holding only data, so the
same lookup, :func:`importlib.resources.files`, finds them in a source checkout, an editable
install and an installed wheel; nothing is located by a path relative to this file.
``python -m pipeline bundle-path`` prints the bundle folder, for MONAI's command line::

    python -m monai.bundle run inference \\
        --config_file "$(python -m pipeline bundle-path)/configs/inference.yaml" --input_dir PAIRS ...
"""

from __future__ import annotations

import argparse
import importlib.resources
from pathlib import Path

__all__ = [
    "BUNDLE_PACKAGE",
    "bundle_root",
    "shipped_checkpoint",
    "atlas_series_config",
    "METADATA_SCHEMA_SHA256",
    "metadata_schema",
    "add_arguments",
    "run",
]

#: The package that holds the ssim_fusion bundle's files.
BUNDLE_PACKAGE = "bundles.ssim_fusion"
#: SHA-256 of ``configs/metadata_schema.json``: MONAI's ``verify_metadata --hash_val`` checks the shipped
#: schema against it (the README's command), so an edited or damaged schema is refused, not trusted.
METADATA_SCHEMA_SHA256 = "c6e2dcc17631c29b119e478bc706ac3474e0ee2cbb9f57c20c76b1118f4e9b97"


def _package_folder(package: str) -> Path:
    """The folder of a data package on the file system.

    Args:
        package: dotted package name.

    Returns:
        its absolute folder.

    Raises:
        FileNotFoundError: the package is not installed, or not as plain files (e.g. a zip).
    """
    try:
        root = importlib.resources.files(package)
    except ModuleNotFoundError as err:
        raise FileNotFoundError(f"the package {package!r} is not installed; reinstall ssim-fusion "
                                "(pip install ssim-fusion, or pip install -e . in a checkout)") from err
    if not isinstance(root, Path):
        raise FileNotFoundError(f"the package {package!r} is not installed as plain files ({root}); "
                                "install the wheel unzipped (pip does)")
    return root.resolve()


def bundle_root() -> Path:
    """The ssim_fusion bundle folder (``configs/``, ``models/``, ``docs/``).

    Returns:
        its absolute path.

    Raises:
        FileNotFoundError: the bundle package is not installed.
    """
    return _package_folder(BUNDLE_PACKAGE)


def shipped_checkpoint() -> Path:
    """The trained weights that ship with the bundle, ``models/model.pt``.

    Returns:
        its absolute path (the file may be absent in a checkout that removed it).
    """
    return bundle_root() / "models" / "model.pt"


def atlas_series_config() -> Path:
    """The Harvard atlas series mapping, ``configs/atlas_series.yaml``.

    Returns:
        its absolute path.
    """
    return _package_folder("configs") / "atlas_series.yaml"


def metadata_schema() -> Path:
    """The JSON schema of the bundle's ``metadata.json``, shipped so that ``verify_metadata`` runs offline.

    MONAI's ``verify_metadata`` downloads the schema named by ``metadata.json``'s ``schema`` URL unless
    ``--filepath`` names a file that exists; this one holds the mandatory keys of the MONAI Bundle
    Specification (its hash: :data:`METADATA_SCHEMA_SHA256`).

    Returns:
        its absolute path.
    """
    return bundle_root() / "configs" / "metadata_schema.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``bundle-path`` command takes no arguments.

    Args:
        parser: the sub-command's parser.
    """
    parser.epilog = "e.g. --config_file \"$(python -m pipeline bundle-path)/configs/inference.yaml\""


def run(args: argparse.Namespace) -> int:
    """Print the bundle folder.

    Args:
        args: the parsed (empty) arguments.

    Returns:
        0.
    """
    print(bundle_root())
    return 0
