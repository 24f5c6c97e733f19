"""Pairing files by name: two folders of same-named images, or sources beside a folder of fused images.

One rule everywhere (inference, the ``metrics`` command, data_prep's flat pair tree): files are
matched by their name without suffix (``CT/2010.png`` with ``MRI/2010.png``), hidden files are
ignored, and two files of one name in a folder are an error naming both.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

__all__ = ["IMAGE_SUFFIXES", "image_files", "images_by_stem", "find_pairs", "pair_folders"]

#: File suffixes taken as images when pairing folders.
IMAGE_SUFFIXES = (".png", ".gif", ".tif", ".tiff", ".bmp", ".jpg", ".jpeg")


def image_files(folder: Path, suffixes: Sequence[str] | None = IMAGE_SUFFIXES) -> list[Path]:
    """The files of ``folder`` that pairing considers, sorted by name.

    Args:
        folder: a folder.
        suffixes: file suffixes to keep (any case); ``None`` keeps every file.

    Returns:
        its non-hidden files with one of ``suffixes``.
    """
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".")
                  and (suffixes is None or p.suffix.lower() in suffixes))


def images_by_stem(folder: Path, suffixes: Sequence[str] | None = IMAGE_SUFFIXES) -> dict[str, Path]:
    """The files of ``folder`` (see :func:`image_files`) by name without suffix.

    Args:
        folder: a folder.
        suffixes: file suffixes to keep; ``None`` keeps every file.

    Returns:
        stem -> file, in name order.

    Raises:
        ValueError: two files of one stem (e.g. ``2010.png`` and ``2010.gif``).
    """
    files: dict[str, Path] = {}
    for path in image_files(folder, suffixes):
        if path.stem in files:
            raise ValueError(f"{folder}: two files named {path.stem}.* ({files[path.stem].name}, "
                             f"{path.name}); keep one image per name")
        files[path.stem] = path
    return files


def find_pairs(
    input_dir: str | os.PathLike, subdirs: Sequence[str] | None = None
) -> list[tuple[str, Path, Path]]:
    """Pairs of same-named images in the two subfolders of ``input_dir`` (inference's input).

    The network was trained with the MRI as source B (data_prep writes pairs as CT/PET/SPECT, MRI),
    so a subfolder named ``MR``/``MRI`` (any case) is taken as B; otherwise A and B are the two
    subfolders in alphabetical order. ``subdirs`` names them explicitly.

    Args:
        input_dir: folder with exactly two subfolders of images.
        subdirs: ``(A, B)`` subfolder names, to override the rule above.

    Returns:
        ``(stem, path_a, path_b)`` sorted by stem; files are matched by name without suffix.

    Raises:
        FileNotFoundError: the folder or a named subfolder does not exist.
        ValueError: not exactly two subfolders, an image without a partner, no pairs, or two files
            with the same stem in one subfolder; the message names the file.
    """
    root = Path(input_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such input folder. It must hold two subfolders of paired images")
    if subdirs is not None:
        dirs = [root / s for s in subdirs]
        for d in dirs:
            if not d.is_dir():
                raise FileNotFoundError(f"{d}: no such subfolder of {root}")
        if len(dirs) != 2:
            raise ValueError(f"subdirs must name two folders (A, B), got {list(subdirs)}")
    else:
        dirs = sorted((d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")),
                      key=lambda d: d.name)
        if len(dirs) != 2:
            raise ValueError(f"{root}: expected exactly two subfolders (one per modality, same file names), "
                             "found "
                             f"{[d.name for d in dirs]}. Arrange the pairs as DIR/<modality A>/x.png and "
                             "DIR/<modality B>/x.png, or pass a datalist")
        if dirs[0].name.lower() in ("mr", "mri"):
            dirs.reverse()
    fa, fb = (images_by_stem(d) for d in dirs)
    for mine, other, other_dir in ((fa, fb, dirs[1]), (fb, fa, dirs[0])):
        lonely = sorted(set(mine) - set(other))
        if lonely:
            raise ValueError(f"{mine[lonely[0]]}: has no partner in {other_dir} "
                             f"(expected {other_dir / lonely[0]}.*)"
                             f"{f' and {len(lonely) - 1} more unpaired' if len(lonely) > 1 else ''}. "
                             "Add the partner or remove the unpaired file")
    if not fa:
        raise ValueError(f"{root}: no images in {dirs[0].name}/ and {dirs[1].name}/ "
                         f"({', '.join(IMAGE_SUFFIXES)})")
    return [(stem, fa[stem], fb[stem]) for stem in sorted(fa)]


def pair_folders(a: Path, b: Path, f: Path) -> list[tuple[str, Path, Path, Path]]:
    """Triples ``(name, a_file, b_file, f_file)`` for every fused image in folder ``f`` (the ``metrics``
    command's input); every non-hidden file counts, whatever its suffix.

    Args:
        a: the folder of sources A.
        b: the folder of sources B.
        f: the folder of fused images.

    Returns:
        one triple per fused image, in name order.

    Raises:
        ValueError: ``f`` holds no files, or a fused image has no same-named source in ``a`` or
            ``b`` (the message lists them).
    """
    in_a, in_b, in_f = (images_by_stem(x, suffixes=None) for x in (a, b, f))
    if not in_f:
        raise ValueError(f"{f}: the fused folder holds no images")
    missing = [f"{name} (not in {folder})" for name in in_f for folder, files in ((a, in_a), (b, in_b))
               if name not in files]
    if missing:
        raise ValueError("fused images without same-named sources: " + ", ".join(missing[:10])
                         + (" ..." if len(missing) > 10 else ""))
    return [(name, in_a[name], in_b[name], path) for name, path in in_f.items()]
