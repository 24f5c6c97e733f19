"""Hypothesis strategies and byte-level builders for hostile input files.

Used by ``tests/test_hostile_inputs.py``. Everything is generated in memory (no data files in the
repository): small valid images in every format ``pipeline.io.read_image`` decodes, hand-built PNG
and TIFF headers that declare anything, truncations and bit flips of valid files, hostile path
texts (traversal, absolute, NUL, backslashes, unicode look-alikes, percent-encoding), random JSON
and datalist-shaped JSON, and NIfTI headers that declare more data than the file holds.

Images here are ``uint8`` 0..255, as the readers return them.
"""

from __future__ import annotations

import io
import struct
import zlib

import nibabel as nib
import numpy as np
from hypothesis import strategies as st
from PIL import Image

__all__ = [
    "IMAGE_KINDS",
    "encode_image",
    "png_chunk",
    "png_bytes",
    "tiff_retag",
    "nifti_declaring",
    "valid_image_files",
    "cut_points",
    "bit_flips",
    "apply_bit_flips",
    "TRAVERSAL_PIECES",
    "hostile_path_texts",
    "hostile_names",
    "json_values",
    "datalist_documents",
]

#: (format, what it holds, save options): the kinds of valid file the image fuzzers start from.
IMAGE_KINDS: dict[str, tuple[str, str, dict]] = {
    "png_gray": ("PNG", "L", {}),
    "png_rgb": ("PNG", "RGB", {}),
    "png_palette": ("PNG", "P", {}),
    "png_1bit": ("PNG", "1", {}),
    "gif": ("GIF", "P", {}),
    "tiff_raw": ("TIFF", "L", {}),
    "tiff_lzw_rgb": ("TIFF", "RGB", {"compression": "tiff_lzw"}),
    "tiff_packbits": ("TIFF", "L", {"compression": "packbits"}),
    "jpeg_gray": ("JPEG", "L", {"quality": 90}),
    "jpeg_rgb": ("JPEG", "RGB", {"quality": 90}),
    "jpeg_cmyk": ("JPEG", "CMYK", {"quality": 90}),
    "bmp": ("BMP", "RGB", {}),
}


def encode_image(pixels: np.ndarray, fmt: str, mode: str, **options: object) -> bytes:
    """Encode ``pixels`` (``uint8`` ``(H, W, 3)``) as ``fmt`` in Pillow ``mode``.

    Args:
        pixels: colour pixels; converted to ``mode`` (``"L"``, ``"RGB"``, ``"P"``, ``"1"``, ``"CMYK"``).
        fmt: Pillow format name (``"PNG"``, ``"GIF"``, ``"TIFF"``, ``"JPEG"``, ``"BMP"``).
        mode: the mode stored in the file.
        options: Pillow save options.

    Returns:
        the encoded file.
    """
    im = Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8), "RGB")
    if mode != "RGB":
        im = im.convert(mode)
    buf = io.BytesIO()
    im.save(buf, format=fmt, **options)
    return buf.getvalue()


def png_chunk(tag: bytes, data: bytes) -> bytes:
    """One PNG chunk with a correct CRC (so that only what it declares is hostile)."""
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def png_bytes(width: int, height: int, bit_depth: int = 8, colour_type: int = 0, raw: bytes = b"\0" * 64,
              extra_chunks: bytes = b"") -> bytes:
    """A PNG built by hand: the IHDR declares anything, with valid CRCs.

    Args:
        width: declared width (may be huge: a decompression bomb).
        height: declared height.
        bit_depth: 1, 2, 4, 8 or 16.
        colour_type: 0 gray, 2 RGB, 3 palette, 4 gray+alpha, 6 RGBA.
        raw: filtered scanlines, deflated into one IDAT.
        extra_chunks: chunks placed between IHDR and IDAT (e.g. PLTE, tRNS).
    """
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + extra_chunks
            + png_chunk(b"IDAT", zlib.compress(raw)) + png_chunk(b"IEND", b""))


def tiff_retag(data: bytes, tag: int, field_type: int) -> bytes:
    """Change the field type of ``tag`` in the first IFD of a little-endian TIFF (e.g. make the
    strip offsets a FLOAT or RATIONAL): a header that is well-formed but means nonsense.

    Raises:
        KeyError: the TIFF has no such tag.
    """
    assert data[:4] == b"II*\0", "little-endian TIFF expected"
    ifd = struct.unpack_from("<I", data, 4)[0]
    out = bytearray(data)
    for i in range(struct.unpack_from("<H", data, ifd)[0]):
        entry = ifd + 2 + 12 * i
        if struct.unpack_from("<H", data, entry)[0] == tag:
            struct.pack_into("<H", out, entry + 2, field_type)
            return bytes(out)
    raise KeyError(tag)


def nifti_declaring(shape: tuple[int, ...], payload: np.ndarray, gz: bool = False) -> bytes:
    """A NIfTI-1 single file whose header declares ``shape`` (float32) but holds only ``payload``.

    A header that declares gigabytes over a few bytes is the volume form of a decompression bomb.
    """
    import gzip

    header = nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), np.eye(4)).header.copy()
    header.set_data_shape(shape)
    raw = header.binaryblock + b"\0" * 4 + np.asarray(payload, np.float32).tobytes()
    return gzip.compress(raw) if gz else raw


@st.composite
def valid_image_files(draw: st.DrawFn, kinds: tuple[str, ...] = tuple(IMAGE_KINDS)) -> tuple[str, bytes]:
    """A small valid image file of one of ``kinds``: ``(kind, bytes)``."""
    kind = draw(st.sampled_from(kinds))
    h, w = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    seed = draw(st.integers(0, 2**16))
    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    fmt, mode, options = IMAGE_KINDS[kind]
    return kind, encode_image(pixels, fmt, mode, **options)


@st.composite
def cut_points(draw: st.DrawFn, size: int) -> int:
    """A truncation length for a file of ``size`` bytes, drawn by class so that every class is
    covered: 0 bytes, inside the signature (1..7), inside the header (8..63), inside the body,
    and the last few bytes (end marker / checksum) cut."""
    classes = [(0, 0), (1, min(7, size - 1)), (8, min(63, size - 1)), (64, size - 9),
               (max(0, size - 8), size - 1)]
    lo, hi = draw(st.sampled_from([c for c in classes if c[0] <= c[1]]))
    return draw(st.integers(lo, hi))


def bit_flips(size: int, max_flips: int = 4) -> st.SearchStrategy[list[tuple[int, int]]]:
    """Positions ``(byte index, bit)`` to flip in a file of ``size`` bytes."""
    return st.lists(st.tuples(st.integers(0, size - 1), st.integers(0, 7)), min_size=1, max_size=max_flips)


def apply_bit_flips(data: bytes, flips: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for index, bit in flips:
        out[index] ^= 1 << bit
    return bytes(out)


#: Pieces of path text that try to leave a folder, or to smuggle odd characters into a name.
TRAVERSAL_PIECES = (
    "..", ".", "/", "\\", "../", "..\\", "/etc/passwd", "C:\\", "C:", "~", "//server/share/",
    "%2e%2e%2f", "%2e%2e/", "..%2f", "%2F", "%5c", "%00", "\x00", "\n", " ", "\u2024\u2024/",
    "\uff0e\uff0e\uff0f", "\u202e", "\u0661\u0662", "\uff10\uff11", "file:///", "http://evil.example/",
    "?x=1", "#frag", "a", "010.gif", "7.png", "case2", "ct1",
)


def hostile_path_texts(max_pieces: int = 5) -> st.SearchStrategy[str]:
    """Path-like texts assembled from :data:`TRAVERSAL_PIECES` and arbitrary text."""
    piece = st.one_of(st.sampled_from(TRAVERSAL_PIECES), st.text(max_size=4))
    return st.lists(piece, min_size=1, max_size=max_pieces).map("".join)


def hostile_names() -> st.SearchStrategy[str]:
    """Names for cases, modalities and series: hostile texts and arbitrary unicode."""
    return st.one_of(hostile_path_texts(3), st.text(max_size=8))


def json_values(max_leaves: int = 12) -> st.SearchStrategy[object]:
    """Arbitrary JSON values (what ``json.dumps`` writes)."""
    leaves = st.one_of(st.none(), st.booleans(), st.integers(-(2**40), 2**40),
                       st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=6))
    def containers(inner: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
        return st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4))

    return st.recursive(leaves, containers, max_leaves=max_leaves)


@st.composite
def datalist_documents(draw: st.DrawFn, well_typed: bool) -> dict:
    """Datalist-shaped JSON: split keys (known or not) holding entries with hostile paths.

    Args:
        well_typed: ``True`` gives only lists of dicts with string paths (hostile text only);
            ``False`` also gives wrong types at every level (a number for a split, a string for an
            entry, a list for a path).
    """
    path_text = hostile_path_texts(4)
    if well_typed:
        path_text = path_text.filter(lambda s: "\x00" not in s)
    path_value = path_text if well_typed else st.one_of(path_text, json_values(3))
    entry = st.fixed_dictionaries({}, optional={"image_a": path_value, "image_b": path_value,
                                               "case": st.text(max_size=3), "slice": st.integers(-3, 3)})
    if not well_typed:
        entry = st.one_of(entry, json_values(3))
    split_value = st.lists(entry, max_size=3)
    if not well_typed:
        split_value = st.one_of(split_value, json_values(4))
    keys = st.sampled_from(("training", "validation", "test", "train", "source"))
    return draw(st.dictionaries(keys, split_value, max_size=4))


def slice_values() -> st.SearchStrategy[object]:
    """``slice`` values of a datalist entry: good integers, out-of-range ones and wrong types."""
    return st.one_of(st.integers(0, 999), st.integers(-(2**40), 2**40), st.booleans(), st.none(),
                     st.floats(allow_nan=True), st.text(max_size=4), st.lists(st.integers(), max_size=2))


def naming_values() -> st.SearchStrategy[object]:
    """Values of the naming fields (``pair``, ``case``, ``modality_*``): hostile names, plain safe
    names (so that collisions happen) and wrong JSON types."""
    safe = st.sampled_from(["1", "2", "A", "a", "CT-MRI", "ct-mri", "T1", "case_3"])
    return st.one_of(safe, hostile_names(), json_values(2))


@st.composite
def datalists_with_hostile_fields(draw: st.DrawFn) -> dict:
    """Datalists whose image paths are valid (``a.png``/``b.png``) and whose naming fields
    (``pair``, ``case``, ``slice``, ``modality_a``, ``modality_b``, ``mode_*``) are hostile."""
    entry = st.fixed_dictionaries({"image_a": st.just("a.png"), "image_b": st.just("b.png")}, optional={
        "pair": naming_values(), "case": naming_values(), "slice": slice_values(),
        "modality_a": naming_values(), "modality_b": naming_values(),
        "mode_a": st.sampled_from(["L", "RGB", "CMYK", "", "l"])})
    return draw(st.fixed_dictionaries({"test": st.lists(entry, min_size=1, max_size=4)},
                                      optional={s: st.lists(entry, max_size=3)
                                                for s in ("training", "validation")}))


def output_dir_overrides() -> st.SearchStrategy[str]:
    """``--output_dir`` values a user may pass: relative hostile path texts (``..``, dots, odd
    characters), never absolute (the tests run them inside a sandbox folder) and never MONAI
    config syntax (``$``, ``@``, ``%``)."""
    return hostile_path_texts(4).filter(
        lambda s: not s.startswith(("/", "$", "@", "%", "~")) and "//" not in s)


#: What a name in a pre-existing output folder can be.
LAYOUT_KINDS = ("absent", "file", "folder", "folder-with-file", "link-to-outside-file",
                "link-to-outside-folder", "dangling-link")
#: What a killed run can have left beside the output folder.
LEFTOVER_KINDS = ("none", "dead-lock", "junk-lock", "staging", "publishing-staging", "staging-file",
                  "linked-staging", "linked-lock")


def output_layouts() -> st.SearchStrategy[dict]:
    """A pre-existing output folder: the folder itself (absent, empty, with entries, or a file),
    what each of a few names in it is (outputs of the run and others), and leftovers beside it."""
    kinds = st.sampled_from(LAYOUT_KINDS)
    names = st.fixed_dictionaries({n: kinds for n in ("000.png", "001.png", "keep.txt")})
    return st.fixed_dictionaries({"out": st.sampled_from(["absent", "empty", "entries", "file"]),
                                  "names": names, "leftover": st.sampled_from(LEFTOVER_KINDS)})
