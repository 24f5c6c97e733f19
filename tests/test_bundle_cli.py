"""A user mistake made through the bundle is one ``error:`` line and a non-zero exit; ``--help`` lists ids.

MONAI wraps every exception of a config expression in ``RuntimeError("Failed to evaluate ...")``; the
bundle's ``initialize`` step (:func:`pipeline.bundle_cli.start`) turns the project's own error at the
bottom of that chain into the one line a user reads. Each mistake runs the real command in a subprocess.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.bundle_cli import bundle_ids, excepthook, format_ids, user_error

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bundles" / "ssim_fusion" / "configs"
#: The ids DESIGN.md promises a user may override on the training command line.
DESIGN_IDS = ("datalist", "output_dir", "epochs", "batch_size", "learning_rate", "alpha", "patch_size",
              "device", "seed")


def _bundle(workflow: str, config: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])  # this checkout
    cmd = [sys.executable, "-m", "monai.bundle", "run", workflow, "--config_file", str(CONFIGS / config),
           *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    """The run failed with one ``error:`` line last on stderr and no traceback anywhere."""
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr + proc.stdout and "Failed to evaluate" not in proc.stderr
    for f in fragments:
        assert f in last, last
    return last


def _pair_folder(root: Path, names_a: tuple[str, ...] = ("x",), names_b: tuple[str, ...] = ("x",)) -> Path:
    rng = np.random.default_rng(0)
    for sub, names in (("CT", names_a), ("MRI", names_b)):
        (root / sub).mkdir(parents=True)
        for n in names:
            Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8)).save(root / sub / f"{n}.png")
    return root


def test_train_ids_hold_the_documented_ones() -> None:
    ids = {i.name: i for i in bundle_ids(CONFIGS / "train.yaml")}
    assert set(DESIGN_IDS) <= set(ids)
    assert ids["datalist"].default == "runs/demo/data/datalist.json"  # where `make demo` writes
    assert "luminance exponent" in ids["alpha"].meaning
    assert "pipeline/losses/terms.py" in ids["terms"].meaning  # a continued comment joins the meaning
    assert not {"imports", "network_def", "network", "training", "initialize"} & set(ids)
    table = format_ids(list(ids.values()))
    assert all(len(line) <= 110 for line in table.splitlines()) and "--epochs 60" in table


def test_inference_and_evaluate_ids() -> None:
    assert {"input_dir", "output_dir", "ckpt_path", "subdirs"} <= {i.name for i in bundle_ids("inference")}
    assert [i.name for i in bundle_ids(CONFIGS / "evaluate.yaml")] == ["ckpt_path", "evaluate_split",
                                                                        "progress_bar"]
    with pytest.raises(FileNotFoundError, match="no such bundle config"):
        bundle_ids("nonsense")


def test_user_error_is_found_along_the_chain(capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline.io import ImageReadError

    try:
        try:
            raise ImageReadError("a.png: not an image. Re-export it")
        except ImageReadError as inner:
            raise RuntimeError("Failed to evaluate ConfigExpression") from inner
    except RuntimeError as outer:
        assert isinstance(user_error(outer), ImageReadError)
        with pytest.raises(SystemExit) as done:
            excepthook(type(outer), outer, outer.__traceback__)
    assert done.value.code == 2
    assert capsys.readouterr().err == "error: a.png: not an image. Re-export it\n"
    assert user_error(RuntimeError("a bug")) is None
    assert user_error(ValueError("raised by a dependency")) is None  # not the project's: a traceback


def test_bundle_ids_command(capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline.cli import main

    assert main(["bundle-ids", "--config", "inference"]) == 0
    assert "--input_dir null" in capsys.readouterr().out


@pytest.mark.slow
def test_missing_input_folder(tmp_path: Path) -> None:
    proc = _bundle("inference", "inference.yaml", "--input_dir", str(tmp_path / "nowhere"),
                   "--output_dir", str(tmp_path / "out"), cwd=tmp_path)
    _one_line_error(proc, str(tmp_path / "nowhere"), "no such input folder")


@pytest.mark.slow
def test_unregistered_pair(tmp_path: Path) -> None:
    pairs = _pair_folder(tmp_path / "pairs", ("x", "y"), ("x",))
    proc = _bundle("inference", "inference.yaml", "--input_dir", str(pairs),
                   "--output_dir", str(tmp_path / "o"), cwd=tmp_path)
    _one_line_error(proc, "y.png", "has no partner")
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


@pytest.mark.slow
def test_corrupt_png(tmp_path: Path) -> None:
    pairs = _pair_folder(tmp_path / "pairs")
    (pairs / "MRI" / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    proc = _bundle("inference", "inference.yaml", "--input_dir", str(pairs),
                   "--output_dir", str(tmp_path / "o"), cwd=tmp_path)
    _one_line_error(proc, str(pairs / "MRI" / "x.png"))


@pytest.mark.slow
def test_missing_datalist_names_the_file_and_the_fix(tmp_path: Path) -> None:
    proc = _bundle("training", "train.yaml", "--output_dir", str(tmp_path / "run"), cwd=tmp_path)
    _one_line_error(proc, "runs/demo/data/datalist.json", "python -m data_prep")


@pytest.mark.slow
def test_help_lists_the_ids_and_does_not_train(tmp_path: Path) -> None:
    proc = _bundle("training", "train.yaml", "--output_dir", str(tmp_path / "run"), "--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "usage: python -m monai.bundle run training" in proc.stdout
    assert all(f"--{name} " in proc.stdout for name in DESIGN_IDS)
    assert not (tmp_path / "run").exists() and "Engine run" not in proc.stdout


def test_validation_progress_lines(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from ignite.engine import Engine

    from pipeline.handlers import ValidationProgress

    evaluator = Engine(lambda engine, batch: batch)
    ValidationProgress(progress_bar=False).attach(evaluator)
    with caplog.at_level(logging.INFO, logger="Validation"):
        evaluator.run([1, 2, 3])
    messages = [r.getMessage() for r in caplog.records if r.name == "Validation"]
    assert messages[0] == "validation: 3 batches" and messages[1].startswith("validation done in ")
