"""studies/: every configuration merges over train.yaml into a valid loss; the table is read from MLflow."""

from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path

import pytest

from conftest import REPO

STUDIES = REPO / "studies"


def _study_module():
    spec = importlib.util.spec_from_file_location("train_study", STUDIES / "train_study.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["train_study"] = module
    spec.loader.exec_module(module)
    return module


def test_every_configuration_merges_into_a_valid_loss() -> None:
    from monai.bundle import ConfigParser

    study = _study_module()
    table = study.presets()
    names = {p.stem for p in (STUDIES / "configs").glob("*.yaml")}
    listed = {n for preset in table.values() for n in preset}
    assert listed == names, "every configuration file is in a preset and every preset name has a file"
    losses = {}
    for name in sorted(names):
        parser = ConfigParser(ConfigParser.load_config_files(study.config_files(name)))
        losses[name] = parser.get_parsed_content("loss")
        assert losses[name].clip is (name not in {"thesis", "thesis_seed1", "thesis_seed2"}), name
        assert parser.get_parsed_content("val_interval") >= 1
    shipped = losses["var_gradwmean4_e480"]  # the shipped model's recipe (model card)
    assert shipped.term_weights == {"gradient": 4.0, "wmean": 4.0} and shipped.adaptive and shipped.clip
    stage1 = losses["all_grad8_maxint4_e140_cos"]  # the shipped networks' first stage (model card)
    assert stage1.term_weights == {"gradient": 8.0, "maxint": 4.0} and stage1.adaptive and stage1.clip
    assert losses["var075_gradmean4_e240"].weight_sigma == 0.75
    assert losses["base"].term_weights == {} and not losses["base"].adaptive
    cfgs = study.configurations("cpu", ["var_gradwmean4_e480", "var_gradmean4_extra"], 0.5)
    assert cfgs == {"var_gradwmean4_e480": {"epochs": 240, "data": "ctmri"},
                    "var_gradmean4_extra": {"epochs": 20, "data": "extra"}}


def test_terms_override_on_the_command_line_syntax() -> None:
    """What ``--terms "{'gradient': 4.0}"`` and ``--terms#gradient 2.0`` do to the parsed config."""
    from monai.bundle import ConfigParser

    base = ConfigParser.load_config_files([str(REPO / "bundles" / "ssim_fusion" / "configs" / "train.yaml")])
    for override, expected in (({"terms": {"gradient": 4.0, "wmean": 4.0}}, {"gradient": 4.0, "wmean": 4.0}),
                               ({"terms#gradient": 2.0}, {"gradient": 2.0}), ({}, {})):
        parser = ConfigParser(copy.deepcopy(base))
        parser.update(override)
        assert parser.get_parsed_content("loss").term_weights == expected


def test_table_reads_runs_from_mlflow(tmp_path: Path) -> None:
    import mlflow

    study = _study_module()
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.create_experiment(study.EXPERIMENT)
    params = {"alpha": "4.0", "epochs": "8", "widths": "16,32,32,16", "source_weights": "variance",
              "terms": "{'gradient': 4.0, 'wmean': 4.0}", "clip_output": "True", "seed": "0"}
    new = client.create_run(exp, run_name="new")
    for k, v in params.items():
        client.log_param(new.info.run_id, k, v)
    for step, key in ((4, 0.70), (8, 0.75)):
        client.log_metric(new.info.run_id, "val_ssim_alpha", key, step=step)
        client.log_metric(new.info.run_id, "Q_Y", key + 0.1, step=step)
    client.log_metric(new.info.run_id, "test_Q_Y", 0.8)
    client.set_terminated(new.info.run_id)
    old = client.create_run(exp, run_name="old")  # a run of bundle < 0.4.0, killed at epoch 4
    client.log_param(old.info.run_id, "second_term", "gradient+mean")
    client.log_param(old.info.run_id, "second_weight", "4.0")
    client.log_metric(old.info.run_id, "val_ssim_alpha", 0.6, step=4)
    rows = {r["name"]: r for r in study.study_rows(uri, ["old", "new"])}
    assert rows["new"]["terms"] == "gradient 4 + wmean 4" and rows["old"]["terms"] == "gradient 4 + mean 4"
    assert rows["new"]["val_epoch"] == 8 and rows["new"]["val_Q_Y"] == pytest.approx(0.85)
    assert rows["new"]["test_Q_Y"] == 0.8 and isinstance(rows["new"]["train_wall_s"], float)
    assert rows["old"]["train_wall_s"] == "* (epoch 4)"
    text = study.write_table(list(rows.values()), tmp_path)
    assert "| new | 4.0 |" in text and "16-32-32-16" in text and (tmp_path / "study.csv").is_file()


def test_help_runs() -> None:
    import subprocess

    proc = subprocess.run([sys.executable, str(STUDIES / "train_study.py"), "--help"], capture_output=True,
                          text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0 and "--table-only" in proc.stdout
