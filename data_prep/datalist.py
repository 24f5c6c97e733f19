"""The one product of every data_prep layout: a folder of 8-bit PNG pairs and ``datalist.json``.

Each layout reader (atlas tree, flat pair tree, volumes, demo phantom) yields :class:`SlicePair`
records holding decoded images; :func:`write_dataset` splits them **by case** and writes

- ``OUT/<pair>/<modality>/<case>_<slice:03d>.png`` for both sources, and
- ``OUT/datalist.json``: ``{"training": [...], "validation": [...], "test": [...]}``, each entry
  ``{"image_a", "image_b", "modality_a", "modality_b", "pair", "case", "slice", "mode_a",
  "mode_b"}`` with paths relative to OUT and ``mode_*`` the PIL mode (``"L"`` gray, ``"RGB"``
  pseudo-colour PET/SPECT).

The whole output is built in a sibling staging folder and renamed into place at the end, so a
failure leaves nothing half-written in OUT. The same records and seed give a byte-identical
datalist.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.io import write_png

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

SPLITS = ("training", "validation", "test")


class DataPrepError(ValueError):
    """Input that data_prep cannot turn into a dataset; the message names the file and the fix."""


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


@dataclass
class SplitSpec:
    """How cases are assigned to splits: fractions, or explicit case lists, and a seed.

    With explicit lists, every case must be named in exactly one of them. With fractions, cases
    are shuffled with ``seed`` and assigned per pair type (so that each pair type with three or
    more cases gets at least one case in every split), while a case shared by two pair types
    (the same subject) stays in one split.
    """

    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    seed: int = 0
    cases: Mapping[str, Sequence[str]] | None = field(default=None)


def split_cases(cases_by_pair: Mapping[str, Iterable[str]], spec: SplitSpec) -> dict[str, str]:
    """Assign every case to one split.

    Args:
        cases_by_pair: case ids per pair type, e.g. ``{"CT-MRI": ["2", "20"], ...}``.
        spec: fractions or explicit lists, and the seed.

    Returns:
        mapping case id -> split name (one of :data:`SPLITS`).

    Raises:
        DataPrepError: explicit lists that miss a case, name one twice, or fractions that do not
            sum to 1.
    """
    all_cases = sorted({str(c) for cs in cases_by_pair.values() for c in cs}, key=_case_key)
    if spec.cases is not None:
        assigned: dict[str, str] = {}
        for split in SPLITS:
            for case in spec.cases.get(split, ()):
                case = str(case)
                if case in assigned:
                    raise DataPrepError(f"case {case} is listed in both {assigned[case]} and {split}: "
                                        "a case may be in one split only")
                assigned[case] = split
        missing = [c for c in all_cases if c not in assigned]
        if missing:
            raise DataPrepError(f"cases {missing} are in the data but in no split list: add them to "
                                "--training-cases, --validation-cases or --test-cases")
        return {c: assigned[c] for c in all_cases}

    fr = np.asarray(spec.fractions, dtype=np.float64)
    if fr.shape != (3,) or (fr < 0).any() or abs(fr.sum() - 1.0) > 1e-6:
        raise DataPrepError(f"split fractions {tuple(spec.fractions)} must be three non-negative numbers summing to 1")
    rng = random.Random(spec.seed)
    assigned = {}
    # Pair types with the fewest cases first: they are the hardest to cover in every split.
    for pair in sorted(cases_by_pair, key=lambda p: (len(set(cases_by_pair[p])), p)):
        cases = sorted({str(c) for c in cases_by_pair[pair]}, key=_case_key)
        target = _target_counts(len(cases), fr)
        have = [sum(1 for c in cases if assigned.get(c) == s) for s in SPLITS]
        free = [c for c in cases if c not in assigned]
        rng.shuffle(free)
        for case in free:
            # A wanted split still without a case of this pair type comes first (cases shared with
            # pair types placed earlier may have filled other splits); then the split furthest
            # below its target; ties go to the earlier split.
            i = max(range(3), key=lambda j: (target[j] > 0 and have[j] == 0, target[j] - have[j], -j))
            assigned[case] = SPLITS[i]
            have[i] += 1
    return {c: assigned[c] for c in all_cases}


def _target_counts(n: int, fractions: np.ndarray) -> list[int]:
    """Integer case counts per split, summing to ``n``; one case at least for every non-zero split."""
    counts = np.floor(fractions * n).astype(int)
    if n >= int((fractions > 0).sum()):
        counts[(fractions > 0) & (counts == 0)] = 1
    while counts.sum() > n:
        counts[int(np.argmax(counts))] -= 1
    remainders = fractions * n - counts
    while counts.sum() < n:
        i = int(np.argmax(remainders))
        counts[i] += 1
        remainders[i] = -np.inf
    return counts.tolist()


def _case_key(case: str) -> tuple[int, str]:
    return (int(case), case) if case.isdigit() else (1 << 30, case)


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


def _publish(staging: Path, out: Path) -> None:
    """Move the finished staging folder to OUT (replacing an old OUT only now)."""
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
        os.replace(staging, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, out)


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
            name = f"{p.case}_{int(p.slice):03d}.png"
            rel_a = f"{p.pair}/{p.modality_a}/{name}"
            rel_b = f"{p.pair}/{p.modality_b}/{name}"
            # no fsync per file: the folder is published whole, after one sync below
            write_png(staging / rel_a, p.image_a, durable=False)
            write_png(staging / rel_b, p.image_b, durable=False)
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
        entries.sort(key=lambda e: (e["pair"], _case_key(e["case"]), e["slice"]))
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


def load_datalist(path: str | os.PathLike, split: str | None = None) -> list[dict] | dict[str, list[dict]]:
    """Read ``datalist.json`` and make its image paths absolute (relative to the file's folder).

    Args:
        path: the datalist file.
        split: return only this split's entries; ``None`` returns all splits.

    Returns:
        entries of one split, or the dict of all splits.

    Raises:
        DataPrepError: the file is missing or not a datalist, the split is unknown, or an entry's
            path escapes the data folder.
    """
    path = Path(path)
    if split is not None and split not in SPLITS:
        raise DataPrepError(f"{path}: unknown split {split!r}; choose one of {SPLITS}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise DataPrepError(f"{path}: no such datalist. Create one with `python -m data_prep ...`") from err
    except OSError as err:
        raise DataPrepError(f"{path}: cannot be read ({err.strerror or err}). "
                            "Give the datalist.json file") from err
    except (ValueError, RecursionError) as err:
        raise DataPrepError(f"{path}: is not valid JSON ({err}). Re-create it with `python -m data_prep`") from err
    if not isinstance(data, dict) or not any(s in data for s in SPLITS):
        raise DataPrepError(f"{path}: has none of the keys {SPLITS}; it is not a datalist")
    root = path.resolve().parent
    result: dict[str, list[dict]] = {}
    for s in SPLITS:
        items = data.get(s, [])
        if not isinstance(items, list):
            raise DataPrepError(f"{path}: {s!r} must be a list of entries, got {type(items).__name__}")
        fixed = []
        for e in items:
            if not isinstance(e, dict):
                raise DataPrepError(f"{path}: an entry of {s} must be an object with image_a and image_b, "
                                    f"got {type(e).__name__}")
            e = dict(e)
            for k in ("image_a", "image_b"):
                if k not in e:
                    raise DataPrepError(f"{path}: an entry of {s} has no {k!r}: {e}")
                if not isinstance(e[k], str) or not e[k] or "\x00" in e[k]:
                    raise DataPrepError(f"{path}: {k}={e[k]!r} in {s} must be a non-empty relative path")
                try:
                    full = (root / e[k]).resolve()
                except (OSError, RuntimeError, ValueError) as err:
                    raise DataPrepError(f"{path}: {k}={e[k]!r} cannot be resolved ({err})") from err
                if root not in full.parents:
                    raise DataPrepError(f"{path}: {k}={e[k]!r} points outside the data folder {root}; "
                                        "datalist paths must stay inside it")
                e[k] = str(full)
            fixed.append(e)
        result[s] = fixed
    if split is not None:
        return result[split]
    return result
