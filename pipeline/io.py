"""Safe reading and writing of 2D slice images: the one place in the project that decodes files.

Every reader returns ``uint8`` arrays in 0..255: ``(H, W)`` for grayscale, ``(H, W, 3)`` for colour.
Library code divides by 255 after loading; metrics take 0..255 as the reference toolboxes do.

Errors are :class:`ImageReadError` (a ``ValueError``) whose message names the file and the fix.
Writers are atomic: a temporary file in the target folder, then ``os.replace`` and an ``fsync`` of
the folder, so a crash never leaves a half-written image behind; files get the user's umask, and
a failing write (disk full, read-only folder, a folder where the file should be) is an
:class:`pipeline.outputs.OutputWriteError` naming the path.

Memory has a budget (:func:`memory_budget`, ``$SSIM_FUSION_MEMORY_BUDGET``): the largest image a
reader accepts (:func:`pixel_limit`) is the budget over what reading, the network and the metrics
hold per pixel (:func:`bytes_per_pixel`), and a checkpoint whose tensors declare more than the
budget is refused before anything is allocated.
"""

from __future__ import annotations

import collections
import io as _io
import os
import pickle
import re
import struct
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

from pipeline.outputs import file_mode, fsync_dir, write_error

__all__ = [
    "ImageReadError",
    "MAX_PIXELS",
    "MEMORY_BUDGET_ENV",
    "DEFAULT_MEMORY_BUDGET",
    "memory_budget",
    "bytes_per_pixel",
    "pixel_limit",
    "read_image",
    "read_pair",
    "write_png",
    "atomic_write_bytes",
    "is_colour",
    "CheckpointError",
    "load_checkpoint",
    "check_checkpoint_sizes",
]

#: Environment variable holding the memory budget in bytes (suffixes K, M, G, T allowed: ``4G``).
MEMORY_BUDGET_ENV = "SSIM_FUSION_MEMORY_BUDGET"
#: Budget when the variable is unset: what one image (a pair, its fusion and its metrics) may use.
DEFAULT_MEMORY_BUDGET = 8 * 1024**3

#: Bytes per pixel that decoding and converting one pair holds: two ``uint8`` RGB sources, their
#: float64 copies and the YCbCr planes of the colour rule (32 float64 planes).
READ_BYTES_PER_PIXEL = 6 + 32 * 8
#: Bytes per pixel the metrics of :data:`pipeline.metrics.DEFAULT_METRICS` hold at their peak (a
#: bound checked by ``tests/test_io.py``: 256 float64 planes).
METRIC_BYTES_PER_PIXEL = 256 * 8

Mode = Literal["any", "gray", "rgb"]


def memory_budget() -> int:
    """The memory budget in bytes: ``$SSIM_FUSION_MEMORY_BUDGET`` or :data:`DEFAULT_MEMORY_BUDGET`.

    Returns:
        bytes.

    Raises:
        ValueError: the variable is not a positive size (``8589934592``, ``512M``, ``8G``).
    """
    text = os.environ.get(MEMORY_BUDGET_ENV, "").strip()
    if not text:
        return DEFAULT_MEMORY_BUDGET
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?", text, flags=re.IGNORECASE)
    if m is None or float(m.group(1)) <= 0:
        raise ValueError(f"${MEMORY_BUDGET_ENV}={text!r} is not a memory size; give bytes or e.g. 512M, 8G")
    scale = 1024 ** ("KMGT".find(m.group(2).upper()) + 1) if m.group(2) else 1
    return int(float(m.group(1)) * scale)


def bytes_per_pixel(widths: tuple[int, ...] = (16, 32, 32, 16)) -> int:
    """What fusing and scoring one image holds per pixel at its peak.

    Reading (:data:`READ_BYTES_PER_PIXEL`) plus the larger of the network and the metrics
    (:data:`METRIC_BYTES_PER_PIXEL`), which run one after the other. The network holds float32
    activations: its input, the output and two adjacent layers (each with a padded copy).

    Args:
        widths: the network's layer widths.

    Returns:
        bytes per pixel.
    """
    chans = [2, *(int(w) for w in widths), 1]
    network = 4 * (2 + 1 + 2 * max(a + b for a, b in zip(chans, chans[1:])))
    return READ_BYTES_PER_PIXEL + max(network, METRIC_BYTES_PER_PIXEL)


def pixel_limit(budget: int | None = None, widths: tuple[int, ...] = (16, 32, 32, 16)) -> int:
    """The largest image (pixels) a reader accepts: the budget over :func:`bytes_per_pixel`.

    Args:
        budget: bytes; default :func:`memory_budget`.
        widths: the network's layer widths.

    Returns:
        pixels.
    """
    return max(1, (memory_budget() if budget is None else int(budget)) // bytes_per_pixel(widths))


#: Largest image (in pixels) a reader accepts under the budget at import time: a guard against
#: decompression bombs and against images whose fusion and metrics would exhaust memory.
MAX_PIXELS = pixel_limit()


class ImageReadError(ValueError):
    """An image file that cannot be used, with the file name and what to do in the message."""


def _fail(path: Path | str, problem: str, fix: str) -> ImageReadError:
    return ImageReadError(f"{path}: {problem}. {fix}")


def read_image(path: str | os.PathLike, mode: Mode = "any", max_pixels: int | None = None) -> np.ndarray:
    """Decode one 2D image file fully and check it.

    Palette images (GIF, palette PNG) are expanded through their palette. A colour image whose
    three channels are equal is returned as grayscale, since that is what it holds.

    Args:
        path: image file (PNG, GIF, TIFF, JPEG, BMP: whatever Pillow decodes).
        mode: ``"any"`` returns what the file holds; ``"gray"`` refuses colour; ``"rgb"`` returns
            ``(H, W, 3)`` and repeats a grayscale image into three channels.
        max_pixels: the size limit; default :func:`pixel_limit` under the current budget.

    Returns:
        ``uint8`` array, ``(H, W)`` or ``(H, W, 3)``, values 0..255.

    Raises:
        ImageReadError: missing, empty, truncated, corrupt, too large, 16-bit or float,
            multi-frame (animated GIF, multi-page TIFF), or of the wrong colour mode; the message
            names the file and the fix.
    """
    path = Path(path)
    limit = pixel_limit() if max_pixels is None else int(max_pixels)
    if path.is_dir():
        raise _fail(path, "is a folder where an image file is expected", "Give the image file inside it")
    if not path.is_file():
        raise _fail(path, "no such file", "Check the path, or the partner file of the pair")
    if path.stat().st_size == 0:
        raise _fail(path, "the file is empty (0 bytes)", "Re-create or re-download it")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                if w * h > limit:
                    raise _fail(path, f"declared size {w}x{h} exceeds {limit} pixels, what the memory budget "
                                f"of {memory_budget()} bytes allows (a decompression bomb or not a slice)",
                                f"Crop or downsample it first, or raise ${MEMORY_BUDGET_ENV}")
                frames = getattr(im, "n_frames", 1)
                if frames != 1:
                    raise _fail(path, f"holds {frames} frames (an animated GIF or a multi-page TIFF), not "
                                "one slice", "Save the one slice to fuse as its own file")
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
        durable: ``fsync`` the file before the rename and its folder after (default). Writers
            that publish a whole folder at once (:func:`data_prep.datalist.write_dataset`) pass
            ``False`` and sync once.

    Raises:
        pipeline.outputs.OutputWriteError: the file system refused (the message names the path).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise write_error(path, err) from err
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.chmod(tmp, file_mode())  # mkstemp creates 0600: give the file the user's umask
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise write_error(path, err) from err
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


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
            to unpickle (refused), tensors declared larger than their data or than the memory
            budget (refused before allocation), or not a dict.
    """
    import torch  # only checkpoint users pay for it

    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder where a checkpoint file is expected; give the .pt file "
                              "(e.g. <output_dir>/models/model.pt)")
    if not path.is_file():
        raise CheckpointError(f"{path}: {missing}")
    check_checkpoint_sizes(path)
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


#: Bytes per element of torch's typed storages, by class name (a name not listed counts 8).
_STORAGE_BYTES = {"Double": 8, "Float": 4, "Half": 2, "BFloat16": 2, "Long": 8, "Int": 4, "Short": 2,
                  "Char": 1, "Byte": 1, "Bool": 1, "ComplexFloat": 8, "ComplexDouble": 16, "Untyped": 1,
                  "QInt8": 1, "QUInt8": 1, "QInt32": 4}
#: Largest pickle of a checkpoint's structure (the tensors' data lie beside it in the archive).
MAX_CHECKPOINT_PICKLE = 64 * 1024**2


class _Stub:
    """Any global a checkpoint's pickle names, taken as inert while sizes are scanned (nothing runs)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def __setstate__(self, state: object) -> None:
        pass

    def __call__(self, *args: object, **kwargs: object) -> _Stub:
        return _Stub()


class _StorageKind:
    """A storage class named in the pickle, with its element size."""

    def __init__(self, name: str) -> None:
        self.itemsize = _STORAGE_BYTES.get(name.removesuffix("Storage"), 8)


class _SizeScan(pickle.Unpickler):
    """Reads a torch archive's pickle with inert stubs, noting each storage's declared bytes and
    each tensor's extent; raises ``ValueError`` for what cannot be loaded as declared."""

    def __init__(self, data: bytes, records: dict[str, int]) -> None:
        super().__init__(_io.BytesIO(data))
        self.records = records
        self.storages: dict[str, int] = {}

    def find_class(self, module: str, name: str) -> object:
        if module in ("torch", "torch.storage") and name.endswith("Storage"):
            return _StorageKind(name)
        if (module, name) in (("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_tensor")):
            return self._rebuild
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        return _Stub

    def persistent_load(self, pid: object) -> object:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise ValueError(f"an unknown storage reference {str(pid)[:80]}")
        _, kind, key, _, numel = pid
        if not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
            raise ValueError(f"a malformed storage reference {str(pid)[:80]}")
        itemsize = kind.itemsize if isinstance(kind, _StorageKind) else 8
        declared = numel * itemsize
        if key not in self.records:
            raise ValueError(f"storage {key!r} is declared but its data is missing")
        if declared != self.records[key]:
            raise ValueError(f"storage {key!r} declares {declared} bytes but holds {self.records[key]}")
        self.storages[key] = declared
        return (numel, key)

    def _rebuild(self, storage: object, offset: object, size: object, stride: object,
                 *rest: object) -> object:
        if not (isinstance(storage, tuple) and isinstance(offset, int) and isinstance(size, tuple)
                and isinstance(stride, tuple) and len(size) == len(stride)
                and all(isinstance(v, int) and v >= 0 for v in (*size, *stride)) and offset >= 0):
            raise ValueError("a tensor with a malformed size or stride")
        if 0 not in size:
            extent = offset + sum((n - 1) * s for n, s in zip(size, stride)) + 1
            if extent > storage[0]:
                raise ValueError(f"a tensor of size {list(size)} reaches element {extent} of a storage of "
                                 f"{storage[0]}")
        return _Stub()


def check_checkpoint_sizes(path: str | os.PathLike, budget: int | None = None) -> int:
    """Refuse, before anything is allocated, a checkpoint whose tensors are not what its data holds.

    The archive's pickle is read with inert stubs (no object of the file is built, no code of it
    runs): every storage must declare exactly the bytes its record holds, every tensor must lie
    inside its storage, and the total must fit the memory budget. A crafted small file that
    declares a huge tensor is refused here, not by an allocation failure.

    Args:
        path: the ``.pt`` file.
        budget: bytes; default :func:`memory_budget`.

    Returns:
        the bytes its tensors' storages hold.

    Raises:
        CheckpointError: not a zip archive (torch's legacy format, truncated, or not a checkpoint),
            declarations that do not match the data, or more than the budget.
    """
    path = Path(path)
    budget = memory_budget() if budget is None else int(budget)
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            pickles = [i for i in infos if i.filename.endswith("/data.pkl") or i.filename == "data.pkl"]
            if len(pickles) != 1:
                raise zipfile.BadZipFile(f"{len(pickles)} data.pkl records")
            prefix = pickles[0].filename[: -len("data.pkl")]
            total = sum(i.file_size for i in infos)
            if total > budget or pickles[0].file_size > MAX_CHECKPOINT_PICKLE:
                raise CheckpointError(f"{path}: declares {total} bytes of content, more than the memory "
                                      f"budget of {budget} bytes (${MEMORY_BUDGET_ENV}); refused before "
                                      "loading")
            records = {i.filename[len(prefix) + len("data/"):]: i.file_size for i in infos
                       if i.filename.startswith(prefix + "data/")}
            data = archive.read(pickles[0])
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, NotImplementedError,
            RuntimeError) as err:
        raise CheckpointError(_corrupt_checkpoint(path, err) + " (a checkpoint is a torch.save zip archive; "
                              "torch's legacy format is not read)") from err
    scan = _SizeScan(data, records)
    try:
        scan.load()
    except (ValueError, TypeError, AttributeError, IndexError, KeyError, EOFError, RecursionError,
            pickle.UnpicklingError, struct.error, OverflowError, MemoryError) as err:
        raise CheckpointError(f"{path}: refused before loading: {err}. It was not written by torch.save as "
                              "it stands (crafted or corrupt); use a checkpoint written by this bundle"
                              ) from err
    held = sum(scan.storages.values())
    if held > budget:
        raise CheckpointError(f"{path}: its tensors need {held} bytes, more than the memory budget of "
                              f"{budget} bytes (${MEMORY_BUDGET_ENV}); refused before loading")
    return held


def _corrupt_checkpoint(path: Path, err: BaseException) -> str:
    first = (str(err).strip().splitlines() or [""])[0][:200]
    return (f"{path}: cannot be loaded: truncated or corrupt ({type(err).__name__}: {first}). It was not "
            "written whole (the bundle's saver writes atomically); delete it and use another copy, or train "
            "again (for a resume: start without --resume True)")
