"""The datalist format, read and validated: ``{"training": [...], "validation": [...], "test": [...]}``.

Each entry is ``{"image_a", "image_b", "modality_a", "modality_b", "pair", "case", "slice",
"mode_a", "mode_b"}`` with image paths relative to the datalist's folder and ``mode_*`` the PIL
mode (``"L"`` gray, ``"RGB"`` pseudo-colour PET/SPECT). The split is made **by case**, never by
slice (:func:`split_cases`). ``python -m data_prep`` writes datalists
(:func:`data_prep.datalist.write_dataset`); training, inference and the benchmark read them here.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.outputs import OutputPathError, check_name, check_slice

__all__ = [
    "SPLITS",
    "NAME_FIELDS",
    "MODES",
    "DatalistError",
    "SplitSpec",
    "split_cases",
    "case_sort_key",
    "load_datalist",
]

SPLITS = ("training", "validation", "test")
#: Entry fields that become parts of output paths (with ``slice``); checked like the image paths.
NAME_FIELDS = ("pair", "case", "modality_a", "modality_b")
#: Values of ``mode_a``/``mode_b``.
MODES = ("L", "RGB")


class DatalistError(ValueError):
    """Input that cannot become or be read as a datalist; the message names the file and the fix.

    ``data_prep.DataPrepError`` is the same class.
    """


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
        DatalistError: explicit lists that miss a case, name one twice, or fractions that do not
            sum to 1.
    """
    all_cases = sorted({str(c) for cs in cases_by_pair.values() for c in cs}, key=case_sort_key)
    if spec.cases is not None:
        assigned: dict[str, str] = {}
        for split in SPLITS:
            for case in spec.cases.get(split, ()):
                case = str(case)
                if case in assigned:
                    raise DatalistError(f"case {case} is listed in both {assigned[case]} and {split}: "
                                        "a case may be in one split only")
                assigned[case] = split
        missing = [c for c in all_cases if c not in assigned]
        if missing:
            raise DatalistError(f"cases {missing} are in the data but in no split list: add them to "
                                "--training-cases, --validation-cases or --test-cases")
        return {c: assigned[c] for c in all_cases}

    fr = np.asarray(spec.fractions, dtype=np.float64)
    if fr.shape != (3,) or (fr < 0).any() or abs(fr.sum() - 1.0) > 1e-6:
        raise DatalistError(f"split fractions {tuple(spec.fractions)} must be three non-negative numbers "
                            "summing to 1")
    rng = random.Random(spec.seed)
    assigned = {}
    # Pair types with the fewest cases first: they are the hardest to cover in every split.
    for pair in sorted(cases_by_pair, key=lambda p: (len(set(cases_by_pair[p])), p)):
        cases = sorted({str(c) for c in cases_by_pair[pair]}, key=case_sort_key)
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


def _check_fields(path: Path, split: str, index: int, entry: dict) -> None:
    """Refuse an entry whose naming fields could not safely name an output file.

    Args:
        path: the datalist, for the message.
        split: the split, for the message.
        index: the entry's position in its split.
        entry: the entry.

    Raises:
        DatalistError: see :func:`load_datalist`.
    """
    where = f"{path}: entry {index} of {split} ({_short(entry)})"
    try:
        for key in NAME_FIELDS:
            if key in entry:
                check_name(entry[key], key)
        if "slice" in entry:
            check_slice(entry["slice"])
    except OutputPathError as err:
        raise DatalistError(f"{where}: {err}") from err
    for key in ("mode_a", "mode_b"):
        if key in entry and entry[key] not in MODES:
            raise DatalistError(f"{where}: {key}={entry[key]!r} must be one of {MODES}")


def _short(entry: dict) -> str:
    text = json.dumps(entry, ensure_ascii=True, default=str)
    return text if len(text) <= 120 else text[:117] + "..."


def case_sort_key(case: str) -> tuple[int, str]:
    """Sort key of a case id: numeric ids by value first, then the others by name.

    Args:
        case: the case id.

    Returns:
        ``(number, case)`` for a numeric id, ``(2**30, case)`` otherwise.
    """
    return (int(case), case) if case.isdigit() else (1 << 30, case)


def load_datalist(path: str | os.PathLike, split: str | None = None) -> list[dict] | dict[str, list[dict]]:
    """Read ``datalist.json`` and make its image paths absolute (relative to the file's folder).

    Args:
        path: the datalist file.
        split: return only this split's entries; ``None`` returns all splits.

    Returns:
        entries of one split, or the dict of all splits.

    Raises:
        DatalistError: the file is missing or not a datalist, the split is unknown, an entry's
            path escapes the data folder, or a field that names output files (``pair``, ``case``,
            ``slice``, ``modality_*``) or ``mode_*`` is of the wrong type or not one safe name;
            the message names the datalist, the split and the entry.
    """
    path = Path(path)
    if split is not None and split not in SPLITS:
        raise DatalistError(f"{path}: unknown split {split!r}; choose one of {SPLITS}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise DatalistError(f"{path}: no such datalist. Create one with `python -m data_prep ...`") from err
    except OSError as err:
        raise DatalistError(f"{path}: cannot be read ({err.strerror or err}). "
                            "Give the datalist.json file") from err
    except (ValueError, RecursionError) as err:
        raise DatalistError(f"{path}: is not valid JSON ({err}). "
                            "Re-create it with `python -m data_prep`") from err
    if not isinstance(data, dict) or not any(s in data for s in SPLITS):
        raise DatalistError(f"{path}: has none of the keys {SPLITS}; it is not a datalist")
    root = path.resolve().parent
    result: dict[str, list[dict]] = {}
    for s in SPLITS:
        items = data.get(s, [])
        if not isinstance(items, list):
            raise DatalistError(f"{path}: {s!r} must be a list of entries, got {type(items).__name__}")
        fixed = []
        for index, e in enumerate(items):
            if not isinstance(e, dict):
                raise DatalistError(f"{path}: entry {index} of {s} must be an object with image_a and "
                                    f"image_b, got {type(e).__name__}")
            e = dict(e)
            _check_fields(path, s, index, e)
            for k in ("image_a", "image_b"):
                if k not in e:
                    raise DatalistError(f"{path}: an entry of {s} has no {k!r}: {e}")
                if not isinstance(e[k], str) or not e[k] or "\x00" in e[k]:
                    raise DatalistError(f"{path}: {k}={e[k]!r} in {s} must be a non-empty relative path")
                try:
                    full = (root / e[k]).resolve()
                except (OSError, RuntimeError, ValueError) as err:
                    raise DatalistError(f"{path}: {k}={e[k]!r} cannot be resolved ({err})") from err
                if root not in full.parents:
                    raise DatalistError(f"{path}: {k}={e[k]!r} points outside the data folder {root}; "
                                        "datalist paths must stay inside it")
                e[k] = str(full)
            fixed.append(e)
        result[s] = fixed
    if split is not None:
        return result[split]
    return result
