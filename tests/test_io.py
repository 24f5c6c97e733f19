"""pipeline.io: the one place that decodes image files."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.io import ImageReadError, MAX_PIXELS, atomic_write_bytes, is_colour, read_image, read_pair, write_png


def _png_bytes(width: int, height: int, bit_depth: int, colour_type: int, raw: bytes) -> bytes:
    """A minimal PNG written by hand, so the header can declare anything."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def test_png_round_trip_gray_and_rgb(tmp_path: Path, rng: np.random.Generator) -> None:
    gray = rng.integers(0, 256, (64, 48), dtype=np.uint8)
    rgb = rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)
    write_png(tmp_path / "sub" / "g.png", gray)
    write_png(tmp_path / "c.png", rgb)
    np.testing.assert_array_equal(read_image(tmp_path / "sub" / "g.png"), gray)
    back = read_image(tmp_path / "c.png")
    np.testing.assert_array_equal(back, rgb)
    assert back.dtype == np.uint8 and is_colour(back) and not is_colour(gray)


def test_write_png_float_is_rounded_from_unit_range(tmp_path: Path) -> None:
    img = np.array([[0.0, 0.5], [1.0, 1.2]])
    write_png(tmp_path / "f.png", img)
    np.testing.assert_array_equal(read_image(tmp_path / "f.png"), [[0, 128], [255, 255]])


def test_read_modes(tmp_path: Path, rng: np.random.Generator) -> None:
    gray = rng.integers(0, 256, (16, 16), dtype=np.uint8)
    write_png(tmp_path / "g.png", gray)
    rgb = read_image(tmp_path / "g.png", mode="rgb")
    assert rgb.shape == (16, 16, 3)
    np.testing.assert_array_equal(rgb[..., 2], gray)
    colour = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    write_png(tmp_path / "c.png", colour)
    with pytest.raises(ImageReadError, match=r"c\.png.*colour image where grayscale is expected"):
        read_image(tmp_path / "c.png", mode="gray")


def test_palette_gif_is_expanded_through_its_palette(tmp_path: Path) -> None:
    index = np.arange(64, dtype=np.uint8).reshape(8, 8) % 4
    palette = [255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 0] + [0] * (256 * 3 - 12)
    im = Image.fromarray(index, mode="P")
    im.putpalette(palette)
    im.save(tmp_path / "p.gif")
    out = read_image(tmp_path / "p.gif")
    expected = np.array(palette[:12], dtype=np.uint8).reshape(4, 3)[index]
    np.testing.assert_array_equal(out, expected)


def test_gray_stored_as_rgb_collapses_to_gray(tmp_path: Path, rng: np.random.Generator) -> None:
    gray = rng.integers(0, 256, (16, 16), dtype=np.uint8)
    Image.fromarray(np.repeat(gray[..., None], 3, axis=2), mode="RGB").save(tmp_path / "g3.png")
    out = read_image(tmp_path / "g3.png")
    assert out.shape == (16, 16)
    np.testing.assert_array_equal(out, gray)
    # a gray-palette GIF is gray too
    Image.fromarray(gray, mode="L").save(tmp_path / "g.gif")
    np.testing.assert_array_equal(read_image(tmp_path / "g.gif"), gray)


@pytest.mark.parametrize("colour_type, channels", [(0, 1), (2, 3)])
def test_16_bit_png_is_refused(tmp_path: Path, colour_type: int, channels: int) -> None:
    w = h = 4
    raw = b"".join(b"\x00" + b"\x12\x34" * channels * w for _ in range(h))
    path = tmp_path / "deep.png"
    path.write_bytes(_png_bytes(w, h, 16, colour_type, raw))
    with pytest.raises(ImageReadError, match=r"deep\.png.*16 bits"):
        read_image(path)


def test_16_bit_array_written_by_pillow_is_refused(tmp_path: Path) -> None:
    Image.fromarray(np.full((8, 8), 4000, dtype=np.uint16)).save(tmp_path / "i16.png")
    with pytest.raises(ImageReadError, match=r"i16\.png.*(16 bits|16-bit)"):
        read_image(tmp_path / "i16.png")


def test_truncated_file_is_refused(tmp_path: Path, rng: np.random.Generator) -> None:
    write_png(tmp_path / "full.png", rng.integers(0, 256, (64, 64), dtype=np.uint8))
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match=r"cut\.png.*corrupt or truncated"):
        read_image(tmp_path / "cut.png")


def test_zero_byte_and_garbage_and_missing_files(tmp_path: Path) -> None:
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageReadError, match=r"empty\.png.*0 bytes"):
        read_image(tmp_path / "empty.png")
    (tmp_path / "junk.gif").write_bytes(b"this is not an image at all" * 10)
    with pytest.raises(ImageReadError, match=r"junk\.gif.*cannot be decoded"):
        read_image(tmp_path / "junk.gif")
    with pytest.raises(ImageReadError, match=r"nope\.png.*no such file"):
        read_image(tmp_path / "nope.png")


@pytest.mark.parametrize("side", [9000, 100_000])
def test_decompression_bomb_header_is_refused_before_decoding(tmp_path: Path, side: int) -> None:
    # 9000^2 is over our limit but under Pillow's; 100000^2 is over both: same clear message
    assert side * side > MAX_PIXELS
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_bytes(side, side, 8, 0, b""))
    with pytest.raises(ImageReadError, match=r"bomb\.png.*decompression bomb"):
        read_image(path)


def test_read_pair_size_mismatch_names_both_files(tmp_path: Path) -> None:
    write_png(tmp_path / "a.png", np.zeros((32, 32), np.uint8))
    write_png(tmp_path / "b.png", np.zeros((32, 30), np.uint8))
    with pytest.raises(ImageReadError, match=r"b\.png: is 30x32 but its partner .*a\.png is 32x32"):
        read_pair(tmp_path / "a.png", tmp_path / "b.png")
    a, b = read_pair(tmp_path / "a.png", tmp_path / "a.png")
    assert a.shape == b.shape == (32, 32)


def test_write_png_refuses_nan_and_bad_shapes_and_writes_nothing(tmp_path: Path) -> None:
    img = np.zeros((8, 8))
    img[3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        write_png(tmp_path / "nan.png", img)
    with pytest.raises(ValueError, match="shape"):
        write_png(tmp_path / "four.png", np.zeros((8, 8, 4), np.uint8))
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_leaves_no_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "x.bin"
    atomic_write_bytes(target, b"zero", durable=False)  # the no-fsync path used inside staged folders
    atomic_write_bytes(target, b"first")
    assert target.read_bytes() == b"first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.bin"]

    def failing_replace(src: str, dst: str) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr("pipeline.io.os.replace", failing_replace)
    with pytest.raises(OSError, match="disk gone"):
        atomic_write_bytes(target, b"second")
    # the old content survives and the temporary file is gone
    assert target.read_bytes() == b"first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.bin"]
