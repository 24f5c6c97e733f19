"""Writing the one product of every data_prep layout: a folder of 8-bit PNG pairs and ``datalist.json``.

Each layout reader (atlas tree, flat pair tree, volumes, demo phantom) yields :class:`SlicePair`
records holding decoded images; :func:`write_dataset` splits them **by case** and writes

- ``OUT/<pair>/<modality>/<case>_<slice:03d>.png`` for both sources, and
- ``OUT/datalist.json``: ``{"training": [...], "validation": [...], "test": [...]}``, each entry
  ``{"image_a", "image_b", "modality_a", "modality_b", "pair", "case", "slice", "mode_a",
  "mode_b"}`` with paths relative to OUT and ``mode_*`` the PIL mode (``"L"`` gray, ``"RGB"``
  pseudo-colour PET/SPECT).

The whole output is built in a sibling staging folder and renamed into place at the end, so a
failure leaves nothing half-written in OUT; a second data_prep writing the same OUT stops at once
(:class:`pipeline.outputs.OutputLock`), and what a killed run left beside OUT is cleaned up (or
the previous OUT restored) by the next. File names are built by :func:`pipeline.outputs.output_path`
from checked names only. The same records and seed give a byte-identical
datalist. Reading, validating and splitting datalists is the library's
(:mod:`pipeline.datalist`); its names are re-exported here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.datalist import SPLITS, DatalistError, SplitSpec, case_sort_key, load_datalist, split_cases
from pipeline.io import write_png
from pipeline.outputs import OutputLock, fsync_dir, output_path

__all__ = [
    "SPLITS",
    "DataPrepError",
    "SlicePair",
    "SplitSpec",
    "split_cases",
    "write_dataset",
    "staged_output",
    "load_datalist",
]

#: data_prep's name for :class:`pipeline.datalist.DatalistError` (the same class).
DataPrepError = DatalistError


@dataclass
class SlicePair:
    """One registered pair of 2D slices, decoded, with its place in the data set.

    Attributes:
        image_a: ``uint8`` ``(H, W)`` or ``(H, W, 3)``, the first modality of ``pair``.
        image_b: ``uint8``, same height and width as ``image_a``.
        modality_a: e.g. ``"CT"``.
        modality_b: e.g. ``"MRI"``.
        case: case (subject) id as a string; the split is made over these.
        slice: slice number within the case.
        source: where the pair came from (for error messages), e.g. the A file path.
    """

    image_a: np.ndarray
    image_b: np.ndarray
    modality_a: str
    modality_b: str
    case: str
    slice: int
    source: str = ""

    @property
    def pair(self) -> str:
        return f"{self.modality_a}-{self.modality_b}"


def staged_output(out: str | os.PathLike, overwrite: bool = False) -> tuple[Path, Path]:
    """Check OUT and make an empty staging folder beside it.

    Args:
        out: the output folder; it must not exist, be empty, or ``overwrite`` must be set.
        overwrite: replace a non-empty OUT when the new data set is complete.

    Returns:
        ``(out, staging)`` paths.

    Raises:
        DataPrepError: OUT is a file, or a non-empty folder without ``overwrite``.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataPrepError(f"{out}: exists and is not a folder. Choose another output folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise DataPrepError(f"{out}: the output folder is not empty. Choose a new folder or pass --overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    return out, staging


def _recover(out: Path) -> None:
    """Clean what killed runs left beside OUT (call with OUT's lock held): staging folders are
    removed; an old OUT moved aside just before the new one took its place is put back when OUT
    is missing (a run killed between the two renames), removed otherwise."""
    parent = out.parent
    if not parent.is_dir():
        return
    for p in sorted(parent.glob(f".{out.name}.old-*")):
        if not out.exists() and p.is_dir():
            os.replace(p, out)
        else:
            shutil.rmtree(p, ignore_errors=True)
    for p in parent.glob(f".{out.name}.partial-*"):
        shutil.rmtree(p, ignore_errors=True)


def _publish(staging: Path, out: Path) -> None:
    """Move the finished staging folder to OUT (replacing an old OUT only now)."""
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
        os.replace(staging, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, out)
    fsync_dir(out.parent)


def write_dataset(
    pairs: Iterable[SlicePair],
    out: str | os.PathLike,
    split: SplitSpec | None = None,
    overwrite: bool = False,
    extra: Mapping[str, object] | None = None,
) -> dict[str, list[dict]]:
    """Write the PNG pairs and ``datalist.json`` under OUT, atomically as a whole.

    Args:
        pairs: the slice pairs (any order; a generator is fine, images are written as they come).
        out: output folder (must be new or empty unless ``overwrite``).
        split: how cases go to splits; default 70/15/15 with seed 0.
        overwrite: replace a non-empty OUT once the new one is complete.
        extra: extra top-level keys for the datalist (e.g. ``{"source": "demo"}``).

    Returns:
        the datalist as written.

    Raises:
        DataPrepError: no pairs, a pair whose images differ in size, a duplicate (pair, case,
            slice), or a bad split; OUT is left untouched.
    """
    split = split or SplitSpec()
    with OutputLock(out, "data_prep"):
        _recover(Path(out))
        return _write_dataset(pairs, out, split, overwrite, extra)


def _write_dataset(pairs: Iterable[SlicePair], out: str | os.PathLike, split: SplitSpec, overwrite: bool,
                   extra: Mapping[str, object] | None) -> dict[str, list[dict]]:
    """:func:`write_dataset` with OUT's lock held."""
    out, staging = staged_output(out, overwrite)
    try:
        entries: list[dict] = []
        seen: set[tuple[str, str, int]] = set()
        for p in pairs:
            _check_pair(p)
            key = (p.pair, p.case, int(p.slice))
            if key in seen:
                raise DataPrepError(f"{p.source or key}: pair {p.pair} case {p.case} slice {p.slice} "
                                    "appears twice. Remove the duplicate")
            seen.add(key)
            name = f"{p.case}_{int(p.slice):03d}"
            path_a = output_path(staging, p.pair, p.modality_a, name, suffix=".png")
            path_b = output_path(staging, p.pair, p.modality_b, name, suffix=".png")
            rel_a, rel_b = (q.relative_to(staging).as_posix() for q in (path_a, path_b))
            # no fsync per file: the folder is published whole, after one sync below
            write_png(path_a, p.image_a, durable=False)
            write_png(path_b, p.image_b, durable=False)
            entries.append({
                "image_a": rel_a, "image_b": rel_b,
                "modality_a": p.modality_a, "modality_b": p.modality_b,
                "pair": p.pair, "case": str(p.case), "slice": int(p.slice),
                "mode_a": "RGB" if p.image_a.ndim == 3 else "L",
                "mode_b": "RGB" if p.image_b.ndim == 3 else "L",
            })
        if not entries:
            raise DataPrepError(f"no slice pairs were found for {out}. Check the input folder and its layout")
        cases_by_pair: dict[str, set[str]] = {}
        for e in entries:
            cases_by_pair.setdefault(e["pair"], set()).add(e["case"])
        assignment = split_cases(cases_by_pair, split)
        entries.sort(key=lambda e: (e["pair"], case_sort_key(e["case"]), e["slice"]))
        datalist: dict[str, object] = {s: [e for e in entries if assignment[e["case"]] == s] for s in SPLITS}
        if extra:
            datalist.update(extra)
        (staging / "datalist.json").write_text(json.dumps(datalist, indent=2, sort_keys=True) + "\n")
        if hasattr(os, "sync"):
            os.sync()  # everything on disk before OUT appears
        _publish(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return datalist  # type: ignore[return-value]


_MODALITY_NAME = re.compile(r"[A-Za-z0-9_]+")
_CASE_NAME = re.compile(r"[A-Za-z0-9_-]+")


def _check_pair(p: SlicePair) -> None:
    for what, name, pattern in (("modality_a", p.modality_a, _MODALITY_NAME),
                                ("modality_b", p.modality_b, _MODALITY_NAME), ("case", str(p.case), _CASE_NAME)):
        if not isinstance(name, str) or not pattern.fullmatch(name):
            raise DataPrepError(f"{p.source}: {what} {name!r} must be letters, digits or '_' (it names output "
                                "files and folders)")
    if isinstance(p.slice, bool) or not isinstance(p.slice, (int, np.integer)) or not 0 <= p.slice < 10**6:
        raise DataPrepError(f"{p.source}: slice {p.slice!r} must be an integer in 0..999999 "
                            "(it names output files)")
    if p.modality_a == p.modality_b:
        raise DataPrepError(f"{p.source}: both images are {p.modality_a!r}; the two modalities of a pair need "
                            "different names (e.g. T1 and T2)")
    for name, img in (("A", p.image_a), ("B", p.image_b)):
        if img.dtype != np.uint8 or not (img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 3)):
            raise DataPrepError(f"{p.source}: image {name} must be uint8 (H, W) or (H, W, 3), "
                                f"got {img.dtype} {img.shape}")
    if p.image_a.shape[:2] != p.image_b.shape[:2]:
        raise DataPrepError(f"{p.source}: the two slices differ in size ({p.image_a.shape[:2]} vs "
                            f"{p.image_b.shape[:2]}): the pair is not registered. Resample them onto one grid")
