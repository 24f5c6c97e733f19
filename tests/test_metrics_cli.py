"""``python -m pipeline metrics``: one triple, folders of triples, --json, errors (run in-process)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.cli import main
from pipeline.io import read_image, write_png
from pipeline.metrics import compute_metrics

NAMES = "EN,SD,FMI_pixel,PSNR"


def _write_triple(folder_a: Path, folder_b: Path, folder_f: Path, name: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, (64, 64)).astype(np.uint8)
    b = rng.integers(0, 256, (64, 64)).astype(np.uint8)
    f = ((a.astype(np.float64) + b) / 2).round().astype(np.uint8)
    for folder, image in ((folder_a, a), (folder_b, b), (folder_f, f)):
        folder.mkdir(parents=True, exist_ok=True)
        write_png(folder / f"{name}.png", image)


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path, Path]:
    dirs = tmp_path / "a", tmp_path / "b", tmp_path / "f"
    for seed, name in enumerate(("2010", "2011", "2012")):
        _write_triple(*dirs, name, seed)
    return dirs


def _expected(a: Path, b: Path, f: Path) -> dict[str, float]:
    return compute_metrics(read_image(a), read_image(b), read_image(f), NAMES.split(","))


def test_single_triple_text(folders: tuple, capsys: pytest.CaptureFixture) -> None:
    files = [str(d / "2010.png") for d in folders]
    assert main(["metrics", *files, "--metrics", NAMES]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    printed = {line.split()[0]: float(line.split()[1]) for line in lines}
    expected = _expected(*(d / "2010.png" for d in folders))
    assert list(printed) == list(expected)
    for name, value in expected.items():
        assert printed[name] == pytest.approx(value, rel=1e-5)


def test_single_triple_json(folders: tuple, capsys: pytest.CaptureFixture) -> None:
    files = [str(d / "2011.png") for d in folders]
    assert main(["metrics", *files, "--metrics", NAMES, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == _expected(*(d / "2011.png" for d in folders))


def test_folders_text_and_json(folders: tuple, capsys: pytest.CaptureFixture) -> None:
    args = ["metrics", *map(str, folders), "--metrics", NAMES]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "mean +- std over 3 image(s)" in text and all(n in text for n in ("2010", "2011", "2012"))
    assert main(args + ["--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert sorted(out["images"]) == ["2010", "2011", "2012"]
    for name in ("2010", "2011"):
        assert out["images"][name] == _expected(*(d / f"{name}.png" for d in folders))
    sd = [out["images"][k]["SD"] for k in out["images"]]
    assert out["summary"]["SD"] == {"mean": pytest.approx(np.mean(sd)),
                                    "std": pytest.approx(np.std(sd, ddof=1)), "n": 3}


def test_unpaired_fused_image_is_an_error(folders: tuple, capsys: pytest.CaptureFixture) -> None:
    a, b, f = folders
    image = read_image(a / "2012.png")
    (a / "2012.png").unlink()
    write_png(a / "2012.tmp.png", image)  # stem "2012.tmp": no longer pairs with f/2012.png
    assert main(["metrics", str(a), str(b), str(f), "--metrics", "EN"]) == 2
    assert "2012 (not in" in capsys.readouterr().err


def test_inf_is_written_as_string(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "same.png"
    write_png(path, np.full((16, 16), 0.5))
    assert main(["metrics", str(path), str(path), str(path), "--metrics", "PSNR,FMI_pixel", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"PSNR": "inf", "FMI_pixel": 1.0}


def _colour_triple(folder: Path, size: int, seed: int) -> list[str]:
    """A colour PET, a gray MRI and a colour fused image of random pixels, as PNG files."""
    rng = np.random.default_rng(seed)
    write_png(folder / "pet.png", rng.random((size, size, 3)))
    write_png(folder / "mri.png", rng.random((size, size)))
    write_png(folder / "fused.png", rng.random((size, size, 3)))
    return [str(folder / n) for n in ("pet.png", "mri.png", "fused.png")]


def test_colour_option(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    files = _colour_triple(tmp_path, 32, seed=3)
    results = {}
    for mode in ("y", "per-channel"):
        assert main(["metrics", *files, "--metrics", "SF", "--colour", mode, "--json"]) == 0
        results[mode] = json.loads(capsys.readouterr().out)["SF"]
    fused = read_image(tmp_path / "fused.png")
    assert results["per-channel"] == pytest.approx(compute_metrics(fused, fused, fused, ["SF"],
                                                                   colour="per-channel")["SF"])
    assert results["y"] != pytest.approx(results["per-channel"])


def test_errors(folders: tuple, capsys: pytest.CaptureFixture) -> None:
    files = [str(d / "2010.png") for d in folders]
    assert main(["metrics", *files, "--metrics", "Q_Y,FMI_pixl"]) == 2
    assert "Valid names" in capsys.readouterr().err
    assert main(["metrics", files[0], files[1], str(folders[2])]) == 2
    assert "not a mix" in capsys.readouterr().err
    assert main(["metrics", files[0], files[1], files[2] + ".missing"]) == 2
    assert "no such file" in capsys.readouterr().err


def test_convention_columns_in_order(folders: tuple, capsys: pytest.CaptureFixture) -> None:
    from pipeline.metrics.conventions import get_convention

    files = [d / "2010.png" for d in folders]
    for name in ("cddfuse", "vifb"):
        conv = get_convention(name)
        assert main(["metrics", *map(str, files), "--convention", name, "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert list(out) == list(conv.names)
        expected = compute_metrics(*(conv.read(p) for p in files), convention=name)
        assert out == pytest.approx(expected, rel=1e-12)
    args = ["metrics", *map(str, folders), "--convention", "cddfuse", "--metrics", "Qabf,EN", "--json"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out["images"]["2011"]) == ["Qabf", "EN"] and list(out["summary"]) == ["Qabf", "EN"]
    assert main(["metrics", *map(str, files), "--convention", "vifb", "--metrics", "Ssim,Qcv"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == ["Ssim", "Qcv"]


def test_convention_reads_colour_as_opencv_gray(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from pipeline.metrics.conventions import opencv_gray

    files = _colour_triple(tmp_path, 40, seed=5)
    assert main(["metrics", *files, "--convention", "cddfuse", "--metrics", "SD,SF", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    gray = [opencv_gray(read_image(p)) for p in files]
    assert out == compute_metrics(*gray, ["SD", "SF"], convention="cddfuse")


def test_convention_errors(folders: tuple, capsys: pytest.CaptureFixture) -> None:
    files = [str(d / "2010.png") for d in folders]
    assert main(["metrics", *files, "--convention", "matlab"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: unknown convention 'matlab'; valid conventions: project, cddfuse, vifb"]
    assert main(["metrics", *files, "--convention", "cddfuse", "--metrics", "Q_ABF"]) == 2
    assert "Valid names: EN, SD, SF, MI, SCD, VIF, Qabf, SSIM" in capsys.readouterr().err
    assert main(["metrics", *files, "--convention", "vifb", "--colour", "y"]) == 2
    assert "per-channel" in capsys.readouterr().err
