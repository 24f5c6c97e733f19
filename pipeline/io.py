"""Safe reading and writing of 2D slice images: the one place in the project that decodes files.

Every reader returns ``uint8`` arrays in 0..255: ``(H, W)`` for grayscale, ``(H, W, 3)`` for colour.
Library code divides by 255 after loading; metrics take 0..255 as the reference toolboxes do.

Errors are :class:`ImageReadError` (a ``ValueError``) whose message names the file and the fix.
Writers are atomic: a temporary file in the target folder, then ``os.replace``, so a crash never
leaves a half-written image behind.
"""

from __future__ import annotations

import io as _io
import os
import pickle
import struct
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = [
    "ImageReadError",
    "MAX_PIXELS",
    "read_image",
    "read_pair",
    "write_png",
    "atomic_write_bytes",
    "is_colour",
    "CheckpointError",
    "load_checkpoint",
]

#: Largest image (in pixels) a reader accepts: a guard against decompression bombs. Slices are
#: 256x256 in the atlas; 8192x8192 leaves room for any real 2D medical image.
MAX_PIXELS = 8192 * 8192

Mode = Literal["any", "gray", "rgb"]


class ImageReadError(ValueError):
    """An image file that cannot be used, with the file name and what to do in the message."""


def _fail(path: Path | str, problem: str, fix: str) -> ImageReadError:
    return ImageReadError(f"{path}: {problem}. {fix}")


def read_image(path: str | os.PathLike, mode: Mode = "any") -> np.ndarray:
    """Decode one 2D image file fully and check it.

    Palette images (GIF, palette PNG) are expanded through their palette. A colour image whose
    three channels are equal is returned as grayscale, since that is what it holds.

    Args:
        path: image file (PNG, GIF, TIFF, JPEG, BMP: whatever Pillow decodes).
        mode: ``"any"`` returns what the file holds; ``"gray"`` refuses colour; ``"rgb"`` returns
            ``(H, W, 3)`` and repeats a grayscale image into three channels.

    Returns:
        ``uint8`` array, ``(H, W)`` or ``(H, W, 3)``, values 0..255.

    Raises:
        ImageReadError: missing, empty, truncated, corrupt, too large, 16-bit or float, or of the
            wrong colour mode; the message names the file and the fix.
    """
    path = Path(path)
    if not path.is_file():
        raise _fail(path, "no such file", "Check the path, or the partner file of the pair")
    if path.stat().st_size == 0:
        raise _fail(path, "the file is empty (0 bytes)", "Re-create or re-download it")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                if w * h > MAX_PIXELS:
                    raise _fail(path, f"declared size {w}x{h} exceeds {MAX_PIXELS} pixels "
                                "(a decompression bomb or not a slice)", "Crop or downsample it first")
                # Pillow decodes 16-bit RGB(A) PNGs to 8 bits without a word: refuse them here,
                # before decoding, from the declared raw mode of the encoded data.
                if _declares_16_bit(im):
                    raise _fail(path, "holds 16 bits per channel, which would be cut to 8 bits silently",
                                "Convert it to 8 bits with an explicit window first")
                im.load()  # decodes every byte now: truncation and corruption surface here
                arr = _to_uint8(path, im)
    except ImageReadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise _fail(path, f"declares a size beyond the safety limit ({err})",
                    "It is a decompression bomb or not a slice: crop or downsample it first") from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, TypeError, ArithmeticError, EOFError,
            LookupError, struct.error) as err:  # Pillow plugins raise all of these for corrupt headers
        raise _fail(path, f"cannot be decoded as an image ({err})",
                    "The file is corrupt or truncated: re-create or re-download it") from err
    if arr.ndim == 3 and np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2]):
        arr = arr[..., 0]
    if mode == "gray" and arr.ndim == 3:
        raise _fail(path, "is a colour image where grayscale is expected",
                    "Pass the colour source (PET/SPECT) as the first image of the pair, or convert it to gray")
    if mode == "rgb" and arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    return np.ascontiguousarray(arr)


def _declares_16_bit(im: Image.Image) -> bool:
    """True when the encoded data of an opened (not yet decoded) image has 16-bit samples."""
    for tile in im.tile:
        args = tile[3] if len(tile) > 3 else None  # the raw mode, e.g. "RGB;16B", leads the args
        if ";16" in str(args):
            return True
    return False


def _to_uint8(path: Path, im: Image.Image) -> np.ndarray:
    """Convert a decoded Pillow image to uint8 gray or RGB, refusing what would lose data silently."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F") or im.mode.startswith("I;"):
        raise _fail(path, f"is a {im.mode} (16-bit, 32-bit or float) image, not 8-bit",
                    "Convert it to 8 bits with an explicit window (for volumes use `python -m data_prep volumes`)")
    if im.mode in ("P", "PA"):
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("LA", "RGBA"):
        alpha = np.asarray(im.getchannel("A"))
        if alpha.min() < 255:
            raise _fail(path, "has transparent pixels", "Flatten the alpha channel onto black first")
        im = im.convert("L" if im.mode == "LA" else "RGB")
    if im.mode == "1":
        im = im.convert("L")
    if im.mode not in ("L", "RGB"):
        try:
            im = im.convert("RGB")
        except ValueError as err:
            raise _fail(path, f"has an unsupported mode {im.mode}", "Save it as 8-bit gray or RGB PNG") from err
    return np.asarray(im, dtype=np.uint8)


def is_colour(image: np.ndarray) -> bool:
    """True for an ``(H, W, 3)`` colour array (after :func:`read_image` collapsed gray-as-RGB)."""
    return image.ndim == 3 and image.shape[-1] == 3


def read_pair(path_a: str | os.PathLike, path_b: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a registered pair and check that the two slices share one grid.

    Args:
        path_a: first source (any mode; a colour PET/SPECT source goes here or in ``path_b``).
        path_b: second source.

    Returns:
        the two ``uint8`` arrays.

    Raises:
        ImageReadError: either file is unusable, or their sizes differ (the pair is not registered).
    """
    a, b = read_image(path_a), read_image(path_b)
    if a.shape[:2] != b.shape[:2]:
        raise _fail(path_b, f"is {b.shape[1]}x{b.shape[0]} but its partner {path_a} is "
                    f"{a.shape[1]}x{a.shape[0]}: the pair is not registered to one grid",
                    "Resample both slices onto one grid (`python -m data_prep volumes` does it for volumes)")
    return a, b


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, durable: bool = True) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``.

    Args:
        path: target file; its folder is created.
        data: the bytes.
        durable: ``fsync`` the file before the rename (default). Writers that publish a whole
            folder at once (:func:`data_prep.datalist.write_dataset`) pass ``False`` and sync once.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_png(path: str | os.PathLike, image: np.ndarray, *, durable: bool = True) -> None:
    """Write an 8-bit gray ``(H, W)`` or RGB ``(H, W, 3)`` PNG atomically.

    Args:
        path: target file; its folder is created.
        image: ``uint8`` array, or a float array in [0, 1] (rounded to 0..255).
        durable: ``fsync`` before the rename (see :func:`atomic_write_bytes`).

    Raises:
        ValueError: the array is not 2D gray or 3-channel colour, or holds NaN/Inf.
    """
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        arr = arr.astype(np.float64)
        if not np.isfinite(arr).all():
            raise ValueError(f"{path}: the image to write holds NaN or Inf; nothing was written")
        arr = np.clip(np.rint(arr * 255.0), 0, 255).astype(np.uint8)
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3)):
        raise ValueError(f"{path}: expected an (H, W) or (H, W, 3) image, got shape {arr.shape}")
    buf = _io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue(), durable=durable)


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and the fix."""


def load_checkpoint(path: str | os.PathLike, map_location: object = "cpu",
                    missing: str = "no such checkpoint") -> dict:
    """A checkpoint dict, read with ``torch.load(weights_only=True)``; every failure is a clear error.

    Args:
        path: the ``.pt`` file.
        map_location: as in ``torch.load``.
        missing: what to tell the user when the file does not exist (the fix depends on the caller).

    Returns:
        the loaded dict.

    Raises:
        CheckpointError: missing file, truncated or corrupt file, a file that needs arbitrary code
            to unpickle (refused), or not a dict.
    """
    import torch  # only checkpoint users pay for it

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: {missing}")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        found = [ln.strip() for ln in str(err).splitlines() if "global" in ln.lower() and "weights_only" not in ln]
        if found:  # the weights-only unpickler met a class or function: code would run on a plain load
            raise CheckpointError(f"{path}: refused: it holds objects other than tensors and plain containers "
                                  f"({found[0][:200]}), which weights_only loading does not run. Only use "
                                  "checkpoints you trust; re-create it with this bundle") from err
        raise CheckpointError(_corrupt_checkpoint(path, err)) from err
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as err:
        raise CheckpointError(_corrupt_checkpoint(path, err)) from err
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a checkpoint dict. Use a "
                              "models/model.pt or latest.pt written by the training bundle")
    return obj


def _corrupt_checkpoint(path: Path, err: BaseException) -> str:
    first = (str(err).strip().splitlines() or [""])[0][:200]
    return (f"{path}: cannot be loaded: truncated or corrupt ({type(err).__name__}: {first}). It was not "
            "written whole (the bundle's saver writes atomically); delete it and use another copy, or train "
            "again (for a resume: start without --resume True)")
