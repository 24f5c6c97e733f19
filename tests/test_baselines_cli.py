"""``python -m pipeline fuse`` end to end on generated 8-bit PNGs."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.baselines.cli import method_params, parse_param
from pipeline.cli import main
from pipeline.io import read_image, write_png


@pytest.fixture
def pair(tmp_path, rng):
    a = rng.integers(0, 256, (64, 64), dtype=np.uint8)
    b = rng.integers(0, 256, (64, 64), dtype=np.uint8)
    pet = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    for name, img in (("a.png", a), ("b.png", b), ("pet.png", pet)):
        write_png(tmp_path / name, img)
    return tmp_path, a, b, pet


def test_fuse_wa_writes_the_exact_mean(pair, capsys):
    folder, a, b, _ = pair
    out = folder / "out" / "wa.png"
    assert main(["fuse", "--method", "wa", str(folder / "a.png"), str(folder / "b.png"), str(out)]) == 0
    expected = np.rint((0.5 * (a / 255.0) + 0.5 * (b / 255.0)) * 255.0).astype(np.uint8)  # write_png's rounding
    written = read_image(out)
    np.testing.assert_array_equal(written, expected)
    assert np.abs(written - (a.astype(float) + b) / 2.0).max() <= 0.5
    assert "wa: wrote" in capsys.readouterr().out


def test_fuse_params_and_colour(pair):
    folder, a, b, pet = pair
    out = folder / "w.png"
    args = [str(folder / "a.png"), str(folder / "b.png"), str(out)]
    assert main(["fuse", "--method", "wa", *args, "--param", "weight_a=1", "--param", "weight_b=0"]) == 0
    np.testing.assert_array_equal(read_image(out), a)
    assert main(["fuse", "--method", "gff", *args, "--param", "r1=5", "--param", "eps2=1e-4"]) == 0
    assert read_image(out).shape == (64, 64)
    for colour in ("ycbcr", "per-channel"):
        assert main(["fuse", "--method", "lp", str(folder / "pet.png"), str(folder / "b.png"), str(out),
                     "--colour", colour]) == 0
        assert read_image(out).shape == (64, 64, 3)


def test_fuse_errors_are_clear(pair, capsys):
    folder, *_ = pair
    args = [str(folder / "a.png"), str(folder / "b.png"), str(folder / "x.png")]
    assert main(["fuse", "--method", "wa", *args, "--param", "radius=3"]) == 2
    assert "has no parameter(s) radius; it takes: weight_a, weight_b" in capsys.readouterr().err
    assert main(["fuse", "--method", "wa", str(folder / "missing.png"), *args[1:]]) == 2
    assert "missing.png" in capsys.readouterr().err
    assert not (folder / "x.png").exists()
    with pytest.raises(SystemExit):
        main(["fuse", "--method", "sift", *args])


def test_parse_param_types():
    assert parse_param("r1=45") == ("r1", 45)
    assert parse_param("eps2=1e-6") == ("eps2", 1e-6)
    assert parse_param("wavelet=db2") == ("wavelet", "db2")
    assert parse_param("flag=true") == ("flag", True)
    assert parse_param("weight-a=0.3") == ("weight_a", 0.3)
    with pytest.raises(ValueError, match="NAME=VALUE"):
        parse_param("r1")
    assert method_params("dwt", {"wavelet": "db2", "levels": 2}) == {"wavelet": "db2", "levels": 2}


def test_fuse_cnn_uses_the_network_of_the_named_pair_type(pair):
    from pipeline.baselines.cnn import fuse as cnn_fuse

    folder, _, b, pet = pair
    args = [str(folder / "pet.png"), str(folder / "b.png")]
    assert main(["fuse", "--method", "cnn", *args, str(folder / "spect.png"), "--modality-a", "SPECT",
                 "--device", "cpu"]) == 0
    assert main(["fuse", "--method", "cnn", *args, str(folder / "ct.png"), "--device", "cpu"]) == 0  # default CT
    for name, kind in (("spect.png", "SPECT-MRI"), ("ct.png", "CT-MRI")):
        expected = cnn_fuse(pet / 255.0, b / 255.0, device="cpu", pair=kind)
        np.testing.assert_array_equal(read_image(folder / name),
                                      np.clip(np.rint(expected * 255.0), 0, 255).astype(np.uint8))
    assert not np.array_equal(read_image(folder / "spect.png"), read_image(folder / "ct.png"))
