"""``python -m data_prep harvard SRC OUT``: slice pairs of the Harvard Whole Brain Atlas (AANLIB).

Two layouts are recognised from SRC itself:

- the **flat pair tree** (as in the public flattened copies of the atlas):
  ``SRC/<A>-<B>/<A>/<case><slice3>.png`` with its partner ``SRC/<A>-<B>/<B>/<same name>``; the
  case is the name without its last three digits, the slice those digits (``34017.png``: case 34,
  slice 17);
- the **atlas's own tree**: ``SRC/cases/case<N>/<series>/<NNN>.gif`` (SRC may also be the
  ``cases`` folder itself). Which modality a series folder holds and which pair types to build
  comes from a small mapping file, ``configs/atlas_series.yaml`` by default (``--series-map``).

Both give the same case ids (``"2"`` for ``case2`` and for ``2010.png``), so a data set is split
the same way whatever layout it came in. Images are decoded by :func:`pipeline.io.read_image`
(GIF palettes expanded, gray stored as RGB collapsed) and written by
:func:`data_prep.datalist.write_dataset` as 8-bit PNG pairs plus ``datalist.json``, split by case,
atomically. MRI and CT must be grayscale; PET and SPECT stay RGB (``mode_a == "RGB"``).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_prep.cli import add_split_arguments, split_from_args
from data_prep.datalist import SPLITS, DataPrepError, SlicePair, write_dataset
from pipeline.io import read_pair
from pipeline.pairing import IMAGE_SUFFIXES, image_files, images_by_stem
from pipeline.resources import atlas_series_config

__all__ = [
    "DEFAULT_SERIES_MAP",
    "DEFAULT_SERIES_MAP_PATH",
    "IMAGE_SUFFIXES",
    "SOURCE_NOTE",
    "PairFiles",
    "SeriesMap",
    "load_series_map",
    "detect_layout",
    "find_flat_pairs",
    "find_atlas_pairs",
    "find_pairs",
    "read_slice_pairs",
    "add_arguments",
    "run",
]

#: The mapping file shipped with the project (``configs/atlas_series.yaml``, package data of the
#: wheel). Should it be missing, :data:`DEFAULT_SERIES_MAP` (the same content) is used.
DEFAULT_SERIES_MAP_PATH = atlas_series_config()

#: Built-in copy of ``configs/atlas_series.yaml`` (a test keeps the two equal).
DEFAULT_SERIES_MAP: dict[str, object] = {
    "series": {
        "mr2": "MRI", "mr1": "MRI", "mr3": "MRI", "mr4": "MRI", "ct1": "CT", "ct2": "CT",
        "tc1": "SPECT", "tl1": "SPECT", "dg1": "PET",
    },
    "pairs": ["CT-MRI", "PET-MRI", "SPECT-MRI"],
    "modalities": {"MRI": "gray", "CT": "gray", "PET": "rgb", "SPECT": "rgb"},
}

#: The datalist's ``source`` key: where the data came from and what its terms allow.
SOURCE_NOTE = "Harvard Whole Brain Atlas (AANLIB): research and development use only, do not redistribute"

_COLOUR_POLICIES = ("gray", "rgb")
_PAIR_NAME = re.compile(r"^([A-Za-z0-9_]+)-([A-Za-z0-9_]+)$")
_FLAT_NAME = re.compile(r"^(\d+)(\d{3})$")
_CASE_DIR = re.compile(r"^case([A-Za-z0-9_]+)$")


@dataclass(frozen=True)
class PairFiles:
    """One registered pair found on disk, not yet decoded.

    Attributes:
        path_a: file of the first modality of ``pair``.
        path_b: its partner, same slice.
        modality_a: e.g. ``"CT"``.
        modality_b: e.g. ``"MRI"``.
        case: case id (digits without leading zeros for numbered cases).
        slice: slice number.
    """

    path_a: Path
    path_b: Path
    modality_a: str
    modality_b: str
    case: str
    slice: int

    @property
    def pair(self) -> str:
        return f"{self.modality_a}-{self.modality_b}"


@dataclass(frozen=True)
class SeriesMap:
    """The atlas series mapping (see ``configs/atlas_series.yaml``).

    Attributes:
        series: series folder -> modality, in order of preference within a modality.
        pairs: pair types ``"A-B"`` to build from the atlas tree.
        modalities: modality -> ``"gray"`` or ``"rgb"``.
        origin: where the mapping came from (for messages).
    """

    series: Mapping[str, str]
    pairs: tuple[str, ...]
    modalities: Mapping[str, str]
    origin: str = "built-in default"

    def series_of(self, modality: str) -> list[str]:
        """Series folders holding ``modality``, most preferred first."""
        return [s for s, m in self.series.items() if m == modality]

    def colour_policy(self, modality: str) -> str | None:
        """``"gray"``, ``"rgb"``, or ``None`` for a modality the map does not know."""
        return self.modalities.get(modality)


def load_series_map(path: str | os.PathLike | None = None) -> SeriesMap:
    """Read and check a series mapping file.

    Args:
        path: YAML file; ``None`` reads ``configs/atlas_series.yaml`` of the source tree, or the
            built-in copy when that file is not there.

    Returns:
        the checked :class:`SeriesMap`.

    Raises:
        DataPrepError: the file is missing, not YAML, or its sections are malformed; the message
            names the file and the expected shape.
    """
    if path is None and not DEFAULT_SERIES_MAP_PATH.is_file():
        return _series_map_from(DEFAULT_SERIES_MAP, "built-in default")
    path = Path(path) if path is not None else DEFAULT_SERIES_MAP_PATH
    import yaml  # only this command needs it

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise DataPrepError(f"{path}: no such series map. Pass an existing file to --series-map "
                            f"(see {DEFAULT_SERIES_MAP_PATH.name} for the format)") from err
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise DataPrepError(f"{path}: is not valid YAML ({err}). Fix the file "
                            f"(see {DEFAULT_SERIES_MAP_PATH.name} for the format)") from err
    return _series_map_from(data, str(path))


def _series_map_from(data: object, origin: str) -> SeriesMap:
    shape = ("a mapping with 'series' (folder: modality), 'pairs' (list of 'A-B') and "
             "'modalities' (modality: gray|rgb)")
    if not isinstance(data, dict):
        raise DataPrepError(f"{origin}: a series map must be {shape}")
    series, pairs, modalities = data.get("series"), data.get("pairs"), data.get("modalities", {})
    if not isinstance(series, dict) or not series or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in series.items()):
        raise DataPrepError(f"{origin}: 'series' must map series folder names to modality names, "
                            "e.g. {mr2: MRI, ct1: CT}")
    if not isinstance(pairs, list) or not pairs or not all(isinstance(p, str) and _PAIR_NAME.match(p)
                                                           for p in pairs):
        raise DataPrepError(f"{origin}: 'pairs' must be a list of pair types 'A-B', e.g. [CT-MRI, PET-MRI]")
    if not isinstance(modalities, dict) or any(v not in _COLOUR_POLICIES for v in modalities.values()):
        raise DataPrepError(f"{origin}: 'modalities' must map modality names to one of {_COLOUR_POLICIES}")
    known = set(series.values())
    for p in pairs:
        for m in p.split("-"):
            if m not in known:
                raise DataPrepError(f"{origin}: pair type {p} needs modality {m}, which no series in "
                                    "'series' holds. Add its series folder to 'series'")
    return SeriesMap(series=dict(series), pairs=tuple(pairs), modalities=dict(modalities), origin=origin)


def _expected_layouts(src: Path) -> str:
    return (f"Expected either the flat pair tree {src}/<A>-<B>/<A>/<case><slice3>.png with partners in "
            f"{src}/<A>-<B>/<B>/ (e.g. CT-MRI/CT/2010.png and CT-MRI/MRI/2010.png), or the atlas tree "
            f"{src}/cases/case<N>/<series>/<NNN>.gif (e.g. cases/case2/ct1/010.gif and cases/case2/mr2/010.gif)")


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images_by_stem(folder: Path) -> dict[str, Path]:
    try:
        return images_by_stem(folder, IMAGE_SUFFIXES)
    except ValueError as err:
        raise DataPrepError(str(err)) from err


def _flat_pair_dirs(src: Path) -> list[Path]:
    """Sub-folders named ``A-B`` that hold an ``A`` or a ``B`` folder."""
    found = []
    for d in _subdirs(src):
        m = _PAIR_NAME.match(d.name)
        if m and ((d / m.group(1)).is_dir() or (d / m.group(2)).is_dir()):
            found.append(d)
    return found


def detect_layout(src: str | os.PathLike) -> tuple[str, Path]:
    """Tell which atlas layout SRC holds.

    Args:
        src: the input folder.

    Returns:
        ``("atlas", cases_folder)`` or ``("flat", src)``.

    Raises:
        DataPrepError: SRC is missing, not a folder, empty, or in neither layout.
    """
    src = Path(src)
    if not src.exists():
        raise DataPrepError(f"{src}: no such folder. {_expected_layouts(src)}")
    if not src.is_dir():
        raise DataPrepError(f"{src}: is a file, not a folder. {_expected_layouts(src)}")
    if (src / "cases").is_dir():
        return "atlas", src / "cases"
    if any(_CASE_DIR.match(d.name) for d in _subdirs(src)):
        return "atlas", src
    if _flat_pair_dirs(src):
        return "flat", src
    if not any(p for p in src.iterdir() if not p.name.startswith(".")):
        raise DataPrepError(f"{src}: the folder is empty. {_expected_layouts(src)}")
    raise DataPrepError(f"{src}: unknown layout (neither a flat pair tree nor an atlas case tree). "
                        f"{_expected_layouts(src)}")


def _normal_case(case: str) -> str:
    """``"02"`` -> ``"2"``: one subject gets one id whatever the zero padding."""
    return str(int(case)) if case.isdigit() else case


def _missing_partner(path: Path, partner: Path, more: int) -> DataPrepError:
    extra = f" ({more} more files lack a partner too)" if more else ""
    return DataPrepError(f"{path}: its partner {partner} is missing{extra}. Add the partner slice, or "
                         "remove the unpaired file from the tree")


def _wanted(pair: str, pairs: Sequence[str] | None) -> bool:
    return pairs is None or pair in pairs


def find_flat_pairs(src: str | os.PathLike, pairs: Sequence[str] | None = None) -> list[PairFiles]:
    """Find the pairs of a flat pair tree ``SRC/<A>-<B>/<A>/<case><slice3>.png``.

    Args:
        src: the tree's root.
        pairs: pair types to keep (``None``: all found).

    Returns:
        the pairs, sorted by pair type, case and slice.

    Raises:
        DataPrepError: a pair folder misses one modality folder, a file name does not follow
            ``<case><slice3>``, or a file has no partner of the same name.
    """
    src = Path(src)
    found: list[PairFiles] = []
    for pair_dir in _flat_pair_dirs(src):
        mod_a, mod_b = pair_dir.name.split("-")
        if not _wanted(pair_dir.name, pairs):
            continue
        dir_a, dir_b = pair_dir / mod_a, pair_dir / mod_b
        for d in (dir_a, dir_b):
            if not d.is_dir():
                raise DataPrepError(f"{d}: folder missing: a pair folder {pair_dir.name} needs both "
                                    f"{mod_a}/ and {mod_b}/ with files of the same names")
        files_a, files_b = _images_by_stem(dir_a), _images_by_stem(dir_b)
        for files, partners, partner_dir in ((files_a, files_b, dir_b), (files_b, files_a, dir_a)):
            lonely = sorted(set(files) - set(partners))
            if lonely:
                first = files[lonely[0]]
                raise _missing_partner(first, partner_dir / first.name, len(lonely) - 1)
        for stem in sorted(files_a):
            m = _FLAT_NAME.match(stem)
            if not m:
                raise DataPrepError(f"{files_a[stem]}: the name does not follow <case><3-digit slice> "
                                    "(e.g. 2010.png is case 2, slice 10). Rename it, or move it out of the tree")
            found.append(PairFiles(files_a[stem], files_b[stem], mod_a, mod_b, _normal_case(m.group(1)),
                                   int(m.group(2))))
    return sorted(found, key=_pair_order)


def _pair_order(p: PairFiles) -> tuple:
    return (p.pair, (0, int(p.case), "") if p.case.isdigit() else (1, 0, p.case), p.slice)


def _slice_files(series_dir: Path) -> dict[int, Path]:
    files: dict[int, Path] = {}
    for p in image_files(series_dir, IMAGE_SUFFIXES):
        if not p.stem.isdigit():
            raise DataPrepError(f"{p}: an atlas slice file must be named by its slice number (e.g. 010.gif). "
                                "Rename it, or move it out of the series folder")
        n = int(p.stem)
        if n in files:
            raise DataPrepError(f"{p}: slice {n} is also stored as {files[n]}. Keep one of the two files")
        files[n] = p
    return files


def find_atlas_pairs(
    cases_dir: str | os.PathLike,
    series_map: SeriesMap,
    pairs: Sequence[str] | None = None,
    notes: list[str] | None = None,
) -> list[PairFiles]:
    """Find the pairs of an atlas tree ``cases/case<N>/<series>/<NNN>.gif``.

    For every case and pair type ``A-B`` of the map, the most preferred A series present is
    paired slice by slice (same slice number) with the most preferred B series of the case.

    Args:
        cases_dir: the ``cases`` folder.
        series_map: which series hold which modality, and the pair types.
        pairs: pair types to keep (``None``: all of the map's).
        notes: when given, receives one line per series folder the map does not know (ignored).

    Returns:
        the pairs, sorted by pair type, case and slice.

    Raises:
        DataPrepError: a case has an A series but no B series, a slice file has no partner, or a
            slice file is not named by its number.
    """
    cases_dir = Path(cases_dir)
    found: list[PairFiles] = []
    unknown: dict[str, list[str]] = defaultdict(list)
    for case_dir in _subdirs(cases_dir):
        m = _CASE_DIR.match(case_dir.name)
        if not m:
            continue
        case = _normal_case(m.group(1))
        present = {d.name: d for d in _subdirs(case_dir)}
        for name in present:
            if name not in series_map.series:
                unknown[name].append(case_dir.name)
        for pair in series_map.pairs:
            if not _wanted(pair, pairs):
                continue
            mod_a, mod_b = pair.split("-")
            series_a = next((s for s in series_map.series_of(mod_a) if s in present), None)
            if series_a is None:
                continue
            series_b = next((s for s in series_map.series_of(mod_b) if s in present), None)
            if series_b is None:
                raise DataPrepError(f"{present[series_a]}: case {case} has a {mod_a} series but no {mod_b} "
                                    f"series (one of {series_map.series_of(mod_b)}) to pair it with. Add the "
                                    f"{mod_b} series, or map its folder name in the series map ({series_map.origin})")
            slices_a, slices_b = _slice_files(present[series_a]), _slice_files(present[series_b])
            lonely = sorted(set(slices_a) - set(slices_b))
            if lonely:
                first = slices_a[lonely[0]]
                raise _missing_partner(first, present[series_b] / first.name, len(lonely) - 1)
            for n in sorted(slices_a):
                found.append(PairFiles(slices_a[n], slices_b[n], mod_a, mod_b, case, n))
    if notes is not None:
        for name, cases in sorted(unknown.items()):
            notes.append(f"series folder {name!r} (in {', '.join(cases[:3])}{', ...' if len(cases) > 3 else ''}) "
                         f"is not in the series map ({series_map.origin}); ignored. Map it there to use it")
    return sorted(found, key=_pair_order)


def find_pairs(
    src: str | os.PathLike,
    series_map: SeriesMap | None = None,
    pairs: Sequence[str] | None = None,
    notes: list[str] | None = None,
) -> tuple[str, list[PairFiles]]:
    """Detect the layout of SRC and find its pairs.

    Args:
        src: the flat pair tree, the atlas tree, or its ``cases`` folder.
        series_map: mapping for the atlas tree (default: :func:`load_series_map`).
        pairs: pair types to keep (``None``: all).
        notes: receives remarks worth printing (ignored series folders).

    Returns:
        ``(layout, pairs)`` with layout ``"flat"`` or ``"atlas"``.

    Raises:
        DataPrepError: unknown layout, empty folder, no pairs (of the requested types), or a
            discovery error of :func:`find_flat_pairs` / :func:`find_atlas_pairs`.
    """
    series_map = series_map or load_series_map()
    layout, root = detect_layout(src)
    if layout == "flat":
        found = find_flat_pairs(root, pairs)
    else:
        found = find_atlas_pairs(root, series_map, pairs, notes)
    have = sorted({p.pair for p in found})
    if pairs is not None:
        absent = [p for p in pairs if p not in have]
        if absent:
            raise DataPrepError(f"{src}: no {', '.join(absent)} pairs found (found: {', '.join(have) or 'none'}). "
                                "Check --pairs and the folder names")
    if not found:
        raise DataPrepError(f"{src}: no slice pairs found in this {layout} tree. {_expected_layouts(Path(src))}")
    return layout, found


def read_slice_pairs(
    files: Iterable[PairFiles], series_map: SeriesMap | None = None, progress: bool = True
) -> Iterator[SlicePair]:
    """Decode found pairs and check their colour modes.

    A ``"gray"`` modality (MRI, CT) refuses a colour file; an ``"rgb"`` modality (PET, SPECT) is
    returned ``(H, W, 3)`` even for a gray slice; a modality the map does not know must keep one
    mode within its pair type.

    Args:
        files: pairs from :func:`find_pairs`.
        series_map: gives each modality's colour policy (default: :func:`load_series_map`).
        progress: show a tqdm bar on a terminal.

    Yields:
        :class:`~data_prep.datalist.SlicePair` with ``uint8`` images (0..255).

    Raises:
        ImageReadError: a missing, corrupt or truncated file, or partners of different sizes.
        DataPrepError: a colour file where the modality is gray, or a gray/colour mix in an
            unknown modality.
    """
    from tqdm import tqdm

    series_map = series_map or load_series_map()
    files = list(files)
    first_mode: dict[tuple[str, str], tuple[int, Path]] = {}
    for f in tqdm(files, desc="reading pairs", unit="pair", disable=None if progress else True, leave=False):
        a, b = read_pair(f.path_a, f.path_b)
        a = _apply_colour_policy(a, f.path_a, f.modality_a, f.pair, series_map, first_mode)
        b = _apply_colour_policy(b, f.path_b, f.modality_b, f.pair, series_map, first_mode)
        yield SlicePair(a, b, f.modality_a, f.modality_b, f.case, f.slice, source=str(f.path_a))


def _apply_colour_policy(
    image: np.ndarray, path: Path, modality: str, pair: str, series_map: SeriesMap,
    first_mode: dict[tuple[str, str], tuple[int, Path]],
) -> np.ndarray:
    policy = series_map.colour_policy(modality)
    if policy == "gray":
        if image.ndim == 3:
            raise DataPrepError(f"{path}: is a colour image, but {modality} slices must be grayscale. Check "
                                f"that the file belongs in the {modality} folder of {pair}, or convert it to gray")
        return image
    if policy == "rgb":
        return image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2)
    first = first_mode.setdefault((pair, modality), (image.ndim, path))
    if first[0] != image.ndim:
        kinds = {2: "grayscale", 3: "colour"}
        raise DataPrepError(f"{path}: is {kinds[image.ndim]} while {first[1]} of the same {modality} series is "
                            f"{kinds[first[0]]}. Make the series one kind, or declare {modality}: gray|rgb under "
                            f"'modalities' in a series map (--series-map)")
    return image


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m data_prep harvard``."""
    parser.add_argument("src", metavar="SRC", help="the flat pair tree (CT-MRI/CT/2010.png ...) or the atlas "
                        "tree (cases/case2/mr2/010.gif ...), or its cases/ folder")
    parser.add_argument("out", metavar="OUT", help="output folder (new or empty) for the PNG pairs and datalist.json")
    parser.add_argument("--pairs", type=_pair_list, default=None, metavar="A-B[,A-B...]",
                        help="pair types to keep, e.g. CT-MRI,PET-MRI (default: all found)")
    parser.add_argument("--series-map", default=None, metavar="FILE",
                        help="YAML series mapping for the atlas tree (default: "
                        f"configs/{DEFAULT_SERIES_MAP_PATH.name})")
    add_split_arguments(parser)


def _pair_list(text: str) -> list[str]:
    items = [p.strip() for p in text.split(",") if p.strip()]
    bad = [p for p in items if not _PAIR_NAME.match(p)]
    if not items or bad:
        raise argparse.ArgumentTypeError(f"pair types must look like CT-MRI,PET-MRI; got {text!r}")
    return items


def run(args: argparse.Namespace) -> int:
    """Build the data set; print a summary (pairs per pair type, cases per split, wall time).

    Returns:
        0 on success (errors are raised as DataPrepError / ImageReadError).
    """
    start = time.perf_counter()
    series_map = load_series_map(args.series_map)
    notes: list[str] = []
    layout, files = find_pairs(args.src, series_map, args.pairs, notes)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    datalist = write_dataset(read_slice_pairs(files, series_map), args.out, split_from_args(args),
                             overwrite=args.overwrite, extra={"source": SOURCE_NOTE})
    print(_summary(datalist, layout, args.src, args.out, time.perf_counter() - start))
    return 0


def _summary(datalist: Mapping[str, object], layout: str, src: str, out: str, seconds: float) -> str:
    entries = [e for s in SPLITS for e in datalist[s]]  # type: ignore[union-attr]
    per_pair = Counter(e["pair"] for e in entries)
    cases_per_pair: dict[str, set[str]] = defaultdict(set)
    for e in entries:
        cases_per_pair[e["pair"]].add(e["case"])
    kind = "atlas tree" if layout == "atlas" else "flat pair tree"
    lines = [f"harvard ({kind}): {len(entries)} pairs from {src} -> {out}"]
    for pair in sorted(per_pair):
        lines.append(f"  {pair:<10} {per_pair[pair]:>5} pairs  {len(cases_per_pair[pair]):>3} cases")
    for s in SPLITS:
        items = datalist[s]  # type: ignore[index]
        cases = sorted({e["case"] for e in items}, key=lambda c: (not c.isdigit(), int(c) if c.isdigit() else 0, c))
        lines.append(f"  {s:<10} {len(items):>5} pairs  cases {', '.join(cases) or '-'}")
    lines.append(f"  wall time {seconds:.1f} s")
    return "\n".join(lines)
