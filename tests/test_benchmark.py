"""``python -m pipeline benchmark`` on a tiny generated datalist."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from data_prep.datalist import SlicePair, SplitSpec, load_datalist, write_dataset
from pipeline.cli import main
from pipeline.io import read_image

METRICS = ["EN", "SD", "RMSE", "FMI_pixel"]


@pytest.fixture
def datalist(tmp_path, rng):
    pairs = []
    for case in ("1", "2", "3", "4"):
        for sl in (5, 6):
            ct = rng.integers(0, 256, (32, 32), dtype=np.uint8)
            mri = rng.integers(0, 256, (32, 32), dtype=np.uint8)
            pairs.append(SlicePair(ct, mri, "CT", "MRI", case, sl))
    spec = SplitSpec(cases={"training": ["1"], "validation": ["2"], "test": ["3", "4"]})
    write_dataset(pairs, tmp_path / "data", split=spec)
    return tmp_path / "data" / "datalist.json"


def test_benchmark_end_to_end(datalist, tmp_path, capsys):
    out = tmp_path / "bench"
    code = main(["benchmark", "--datalist", str(datalist), "--split", "test", "--methods", "wa,dwt,lp,cnn",
                 "--out", str(out), "--metrics", ",".join(METRICS), "--checkpoint", str(tmp_path / "none.pt"),
                 "--figures", "1"])
    assert code == 0
    captured = capsys.readouterr()
    assert "skipping cnn: no trained checkpoint" in captured.err

    # fused images: one per method and pair, 8-bit, the input size
    for method in ("wa", "dwt", "lp"):
        names = sorted(p.name for p in (out / "fused" / method).iterdir())
        assert names == ["3_005.png", "3_006.png", "4_005.png", "4_006.png"]
        assert read_image(out / "fused" / method / "3_005.png").shape == (32, 32)
    assert not (out / "fused" / "cnn").exists()

    with open(out / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["method", "pair", "case", "slice", "seconds", *METRICS]
    assert len(rows) == 12 and {r["method"] for r in rows} == {"wa", "dwt", "lp"}
    assert {(r["case"], r["slice"]) for r in rows} == {("3", "5"), ("3", "6"), ("4", "5"), ("4", "6")}
    assert all(r["pair"] == "CT-MRI" and float(r["seconds"]) >= 0 for r in rows)

    summary = (out / "summary.md").read_text()
    assert "| metric | wa | dwt | lp |" in summary
    assert summary.count("**") >= 2 * 4  # one best per row
    for name in (*METRICS, "seconds"):
        assert f"| {name} |" in summary
    # the best RMSE is the smallest mean: the registry's direction, named for the requested columns
    assert "lower is better for RMSE, seconds" in summary
    rmse = {m: np.mean([float(r["RMSE"]) for r in rows if r["method"] == m]) for m in ("wa", "dwt", "lp")}
    rmse_row = next(line for line in summary.splitlines() if line.startswith("| RMSE |"))
    best_cell = rmse_row.split(" | ")[1 + ("wa", "dwt", "lp").index(min(rmse, key=rmse.get))]
    assert best_cell.startswith("**")
    assert "`cnn`: no trained checkpoint" in summary
    # every number says which definition it is: FMI the reference code's (fmi.m as it runs)
    assert "- `FMI_pixel`: Haghighat's Fast-FMI fmi.m" in summary
    assert "mode='reference'" in summary.split("- `FMI_pixel`:")[1].splitlines()[0]
    figures = list((out / "figures").glob("*.png"))
    assert len(figures) == 1 and read_image(figures[0]).shape[0] > 100

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlruns.db'}")
    experiment = client.get_experiment_by_name("benchmark")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["methods"] == "wa,dwt,lp" and run.data.params["skipped"] == "cnn"
    assert run.data.params["fmi_mode"] == "reference"
    wa_en = np.mean([float(r["EN"]) for r in rows if r["method"] == "wa"])
    assert run.data.metrics["wa/EN"] == pytest.approx(wa_en, rel=1e-5)  # the CSV holds 6 significant digits
    assert {"results.csv", "summary.md", "figures"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
    assert not (tmp_path / "mlruns").exists()


def test_benchmark_errors(datalist, tmp_path, capsys):
    out = str(tmp_path / "b")
    assert main(["benchmark", "--datalist", str(datalist), "--methods", "wa,sift", "--out", out]) == 2
    assert "unknown method(s) sift" in capsys.readouterr().err
    assert main(["benchmark", "--datalist", str(tmp_path / "missing.json"), "--methods", "wa", "--out", out]) == 2
    assert "no such datalist" in capsys.readouterr().err


@pytest.fixture
def datalist48(tmp_path, rng):
    """One CT-MRI test pair of 48x48 (VIF's 'valid' windows need 33x33)."""
    pairs = []
    for case in ("1", "2", "3"):
        ct = rng.integers(0, 256, (48, 48), dtype=np.uint8)
        mri = rng.integers(0, 256, (48, 48), dtype=np.uint8)
        pairs.append(SlicePair(ct, mri, "CT", "MRI", case, 1))
    spec = SplitSpec(cases={"training": ["1"], "validation": ["2"], "test": ["3"]})
    write_dataset(pairs, tmp_path / "data48", split=spec)
    return tmp_path / "data48" / "datalist.json"


def test_benchmark_convention_columns(datalist48, tmp_path, capsys):
    from pipeline.metrics import compute_metrics
    from pipeline.metrics.conventions import get_convention

    out = tmp_path / "bench_cddfuse"
    assert main(["benchmark", "--datalist", str(datalist48), "--methods", "wa,lp", "--out", str(out),
                 "--convention", "cddfuse", "--figures", "0", "--no-mlflow"]) == 0
    names = list(get_convention("cddfuse").names)
    with open(out / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["method", "pair", "case", "slice", "seconds", *names]
    summary = (out / "summary.md").read_text()
    assert "(ycbcr; cddfuse convention)" in summary
    assert [line.split(" | ")[0][2:] for line in summary.splitlines() if line.startswith("| ")][1:] == [
        *names, "seconds"]
    entry = load_datalist(datalist48, "test")[0]
    a, b = read_image(entry["image_a"]), read_image(entry["image_b"])
    f = read_image(out / "fused" / "wa" / "3_001.png")
    expected = compute_metrics(a, b, f, convention="cddfuse")
    row = next(r for r in rows if r["method"] == "wa")
    assert {k: float(row[k]) for k in names} == pytest.approx(expected, rel=1e-5)

    # VIFB's names; its lower-is-better columns (Qcv, Rmse, Cross_entropy) take the smallest mean.
    out = tmp_path / "bench_vifb"
    assert main(["benchmark", "--datalist", str(datalist48), "--methods", "wa,lp", "--out", str(out),
                 "--convention", "vifb", "--metrics", "Rmse,Ssim", "--figures", "0", "--no-mlflow"]) == 0
    with open(out / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0])[5:] == ["Rmse", "Ssim"]
    summary = (out / "summary.md").read_text()
    assert "lower is better for Rmse, seconds" in summary
    rmse = {m: float(next(r["Rmse"] for r in rows if r["method"] == m)) for m in ("wa", "lp")}
    cells = next(line for line in summary.splitlines() if line.startswith("| Rmse |")).split(" | ")
    assert cells[1 + ("wa", "lp").index(min(rmse, key=rmse.get))].startswith("**")

    assert main(["benchmark", "--datalist", str(datalist48), "--methods", "wa", "--out", str(out),
                 "--convention", "matlab", "--no-mlflow"]) == 2
    assert "valid conventions: project, cddfuse, vifb" in capsys.readouterr().err
