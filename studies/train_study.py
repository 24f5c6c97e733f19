"""Training studies of the ssim_fusion bundle: train a preset of configurations, score each, print one table.

A configuration is a YAML file, ``studies/configs/<name>.yaml``, merged over the bundle's
``train.yaml`` and ``studies/defaults.yaml``; ``studies/presets.yaml`` lists the configurations of
each preset. Every configuration is one run of the bundle's own CLI (``python -m monai.bundle run
training``, a subprocess) tracked in one MLflow store for the whole study (``OUT/mlruns.db``,
experiment ``train_study``, run name = configuration name), followed by ``python -m pipeline
benchmark --methods cnn`` on the test split with the run's best checkpoint; the study logs the test
means (``test_Q_Y``, ...) and the training's CPU time (``train_cpu_s``) into the same MLflow run.
The table is read back from MLflow: the validation metrics at the epoch whose checkpoint became
``model.pt`` (the first best ``val_ssim_alpha``), the test metrics, the wall time of the run. Select
on validation, report the test columns.

Examples::

    python studies/train_study.py --datalist data/harvard_ctmri/datalist.json --out runs/study
    python studies/train_study.py ... --only base,alpha1 --jobs 2 --threads 1
    python studies/train_study.py ... --preset gpu --device cuda:0 --jobs 12 --threads 1   # gpu_study.sh
    python studies/train_study.py --datalist ... --out runs/study --table-only   # the table, no training

A configuration with a finished MLflow run of its name (and its test metrics, unless ``--no-test``)
is not rerun. ``--extra-datalist`` is the datalist of the configurations marked ``study_data: extra``.
Images are float [0, 1] in the bundle; the reference metrics score 8-bit images (0..255).
Writes ``OUT/study.csv``, ``OUT/study.md`` and per configuration ``OUT/<name>/`` (the bundle's
output dir: ``models/model.pt``, samples, ``train.log``, ``test/`` benchmark).
"""

from __future__ import annotations

import argparse
import ast
import concurrent.futures
import csv
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

__all__ = ["STUDIES", "TRAIN_CONFIG", "DEFAULTS", "presets", "config_files", "configurations", "run_config",
           "study_rows", "write_table", "main"]

STUDIES = Path(__file__).resolve().parent
REPO = STUDIES.parent
if str(REPO) not in sys.path:  # this checkout's pipeline, not another one's editable install
    sys.path.insert(0, str(REPO))
TRAIN_CONFIG = REPO / "bundles" / "ssim_fusion" / "configs" / "train.yaml"
DEFAULTS = STUDIES / "defaults.yaml"
EXPERIMENT = "train_study"
METRICS = ("Q_Y", "FMI_pixel", "Q_ABF")
#: Parameters of the table, as the bundle's RunInfoHandler logs them to MLflow.
PARAMS = ("alpha", "learning_rate", "batch_size", "patch_size", "epochs", "widths", "source_weights",
          "weight_sigma", "terms", "clip_output", "seed")


def presets() -> dict[str, list[str]]:
    """Preset name -> configuration names, from ``studies/presets.yaml``."""
    return yaml.safe_load((STUDIES / "presets.yaml").read_text())


def config_files(name: str) -> list[str]:
    """The config files of configuration ``name``, in merge order.

    Args:
        name: a file stem of ``studies/configs``.

    Returns:
        ``[train.yaml, studies/defaults.yaml, studies/configs/<name>.yaml]`` as strings.
    """
    own = STUDIES / "configs" / f"{name}.yaml"
    if not own.is_file():
        raise SystemExit(f"no configuration {name!r}: {own} is missing")
    return [str(TRAIN_CONFIG), str(DEFAULTS), str(own)]


def configurations(preset: str, only: list[str] | None, epoch_scale: float) -> dict[str, dict[str, Any]]:
    """The resolved settings each configuration of ``preset`` (or of ``only`` among them) trains with.

    Args:
        preset: a key of ``studies/presets.yaml``.
        only: a subset of its names, or None for all.
        epoch_scale: factor of every configuration's epochs.

    Returns:
        name -> ``{"epochs": int, "data": "ctmri" | "extra"}``.
    """
    from monai.bundle import ConfigParser

    table = presets()
    if preset not in table:
        raise SystemExit(f"unknown preset {preset!r}; studies/presets.yaml has {sorted(table)}")
    names = only or table[preset]
    unknown = [n for n in names if n not in table[preset]]
    if unknown:
        raise SystemExit(f"unknown configuration(s) {unknown}; {preset!r} has {table[preset]}")
    out = {}
    for name in names:
        parser = ConfigParser(ConfigParser.load_config_files(config_files(name)))
        epochs = max(1, round(int(parser["epochs"]) * epoch_scale))
        out[name] = {"epochs": epochs, "data": parser.get("study_data", "ctmri")}
    return out


def _bundle_args(name: str, cfg: dict[str, Any], datalist: str, out_dir: Path, device: str,
                 tracking_uri: str) -> list[str]:
    return [sys.executable, "-m", "monai.bundle", "run", "training",
            "--config_file", repr(config_files(name)),
            "--datalist", datalist, "--output_dir", str(out_dir.resolve()), "--device", device,
            "--epochs", str(cfg["epochs"]), "--tracking", "mlflow", "--tracking_uri", tracking_uri,
            "--experiment_name", EXPERIMENT, "--run_name", name]


def _client(tracking_uri: str) -> Any:
    import mlflow

    return mlflow.MlflowClient(tracking_uri=tracking_uri)


def _latest_run(client: Any, name: str) -> Any | None:
    exp = client.get_experiment_by_name(EXPERIMENT)
    if exp is None:
        return None
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.mlflow.runName = '{name}'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def _test_scores(ckpt: Path, datalist: str, out_dir: Path, device: str) -> dict[str, float]:
    """Mean Q_Y, FMI_pixel, Q_ABF of the checkpoint on the test split (``pipeline benchmark``)."""
    cmd = [sys.executable, "-m", "pipeline", "benchmark", "--datalist", datalist, "--split", "test",
           "--methods", "cnn", "--checkpoint", str(ckpt), "--metrics", ",".join(METRICS),
           "--out", str(out_dir), "--figures", "0", "--no-mlflow", "--device", device]
    subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO)
    sums: dict[str, list[float]] = {m: [] for m in METRICS}
    with open(out_dir / "results.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            for m in METRICS:
                if row.get(m) not in (None, "", "nan"):
                    sums[m].append(float(row[m]))
    return {m: sum(v) / len(v) for m, v in sums.items() if v}


def _is_done(run: Any | None, need_test: bool) -> bool:
    if run is None or run.info.status != "FINISHED":
        return False
    return not need_test or all(f"test_{m}" in run.data.metrics for m in METRICS)


def run_config(name: str, cfg: dict[str, Any], args: argparse.Namespace) -> str:
    """Train one configuration with the bundle, then score it on the test split, all into MLflow.

    Args:
        name: the configuration.
        cfg: its settings from :func:`configurations`.
        args: the parsed command line.

    Returns:
        the MLflow run id.

    Raises:
        RuntimeError: the training failed (the end of its log attached).
    """
    client = _client(args.tracking_uri)
    run = _latest_run(client, name)
    if _is_done(run, not args.no_test):
        return run.info.run_id
    out_dir = Path(args.out) / name
    datalist = args.extra_datalist if cfg["data"] == "extra" else args.datalist
    if run is None or run.info.status != "FINISHED":
        out_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        if args.threads:
            env["OMP_NUM_THREADS"] = str(args.threads)
        cmd = _bundle_args(name, cfg, datalist, out_dir, args.device, args.tracking_uri)
        log_path = out_dir / "train.log"
        with open(log_path, "w") as log_fh:  # streamed, to follow a run with tail -f
            proc = subprocess.Popen(cmd, stdout=log_fh, stderr=subprocess.STDOUT, env=env, cwd=REPO)
            _, status, usage = os.wait4(proc.pid, 0)  # this child's own CPU time, exact with --jobs > 1
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"{name}: training failed, see {log_path}:\n" + log_path.read_text()[-2000:])
        run = _latest_run(client, name)
        if run is None:
            raise RuntimeError(f"{name}: no MLflow run named {name!r} in {args.tracking_uri}")
        client.log_metric(run.info.run_id, "train_cpu_s", round(usage.ru_utime + usage.ru_stime, 1))
    if not args.no_test:
        # the test split is the CT-MRI one in both datalists (the extra one shares its test case)
        test = _test_scores(out_dir / "models" / "model.pt", args.datalist, out_dir / "test", args.device)
        for m, v in test.items():
            client.log_metric(run.info.run_id, f"test_{m}", v)
    return run.info.run_id


def _terms_param(params: dict[str, str]) -> str:
    """The ``terms`` column: ``gradient 4 + wmean 4``, from ``terms`` or an older run's ``second_term``."""
    from pipeline.losses.terms import legacy_terms

    if "terms" in params:
        terms = ast.literal_eval(params["terms"])
    else:
        weight = params.get("second_weight")
        terms = legacy_terms(params.get("second_term"), None if weight is None else float(weight))
    return " + ".join(f"{k} {v:g}" for k, v in terms.items()) or "none"


def _row(client: Any, run: Any) -> dict[str, Any]:
    """One table row from an MLflow run: parameters, the selected validation, test, times."""
    params, rid = run.data.params, run.info.run_id
    row: dict[str, Any] = {"name": run.info.run_name, "mlflow_run": rid}
    row.update({k: params.get(k) for k in PARAMS})
    row["terms"] = _terms_param(params)
    key = client.get_metric_history(rid, "val_ssim_alpha")
    if key:  # model.pt: the first validation with the best key metric
        best = max(key, key=lambda m: (m.value, -m.step))
        row["val_epoch"], row["val_val_ssim_alpha"] = best.step, best.value
        for m in METRICS:
            at = [h.value for h in client.get_metric_history(rid, m) if h.step == best.step]
            row[f"val_{m}"] = at[-1] if at else None
    for m in METRICS:
        row[f"test_{m}"] = run.data.metrics.get(f"test_{m}")
    row["train_cpu_s"] = run.data.metrics.get("train_cpu_s")
    if run.info.status == "FINISHED" and run.info.end_time:
        row["train_wall_s"] = round((run.info.end_time - run.info.start_time) / 1000, 1)
    else:  # cut short (a killed run stays RUNNING): its last validation
        last = max((h.step for h in key), default=0)
        row["train_wall_s"] = f"* (epoch {last})"
    return row


def study_rows(tracking_uri: str, order: list[str] | None = None) -> list[dict[str, Any]]:
    """The table rows of every run of the study's MLflow experiment, latest run per name.

    Args:
        tracking_uri: the study's MLflow store.
        order: configuration names in table order (others follow by name).

    Returns:
        one dict per configuration.
    """
    client = _client(tracking_uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    if exp is None:
        return []
    latest: dict[str, Any] = {}
    for run in client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"]):
        latest[run.info.run_name] = run
    rank = {n: i for i, n in enumerate(order or [])}
    names = sorted(latest, key=lambda n: (rank.get(n, len(rank)), n))
    return [_row(client, latest[n]) for n in names]


def _fmt(v: Any, metric: bool = False) -> str:
    if isinstance(v, float):
        if metric:
            return f"{v:.4f}"
        return f"{v:g}" if abs(v) < 10 else f"{v:.0f}"
    if isinstance(v, str) and "," in v and v.replace(",", "").replace(".", "").isdigit():
        return v.replace(",", "-")  # widths, fixed source weights
    return "" if v is None or v == "None" else str(v)


COLUMNS = ["name", *PARAMS, "val_epoch", "val_Q_Y", "val_FMI_pixel", "val_Q_ABF", "val_val_ssim_alpha",
           "test_Q_Y", "test_FMI_pixel", "test_Q_ABF", "train_wall_s", "train_cpu_s", "mlflow_run"]


def write_table(rows: list[dict[str, Any]], out: Path) -> str:
    """Write ``study.csv`` and ``study.md``.

    Args:
        rows: from :func:`study_rows`.
        out: the study folder.

    Returns:
        the markdown table.
    """
    with open(out / "study.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    short = [c for c in COLUMNS if c != "mlflow_run"]
    head = [c.replace("val_val_", "val_").replace("learning_rate", "lr").replace("source_weights", "weights")
            .replace("clip_output", "clip") for c in short]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(short)]
    lines += ["| " + " | ".join(_fmt(r.get(c), c.startswith(("val_", "test_")) and c != "val_epoch")
                                for c in short) + " |" for r in rows]
    text = "\n".join(lines) + "\n"
    (out / "study.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; see the module docstring."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datalist", help="CT-MRI datalist (training/validation/test by case)")
    p.add_argument("--extra-datalist",
                   help="datalist with the PET/SPECT pairs added to training (study_data: extra)")
    p.add_argument("--out", required=True, help="study folder")
    p.add_argument("--device", default="cpu", help="torch device of training and test (cpu, cuda:0)")
    p.add_argument("--preset", default="cpu", help="a preset of studies/presets.yaml")
    p.add_argument("--only", help="comma-separated configuration names of the preset")
    p.add_argument("--epoch-scale", type=float, default=1.0, help="multiply every configuration's epochs")
    p.add_argument("--jobs", type=int, default=1, help="configurations trained at once")
    p.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS per job (0: leave as is)")
    p.add_argument("--tracking-uri", dest="tracking_uri",
                   help="MLflow store (default sqlite:///OUT/mlruns.db)")
    p.add_argument("--no-test", action="store_true", help="skip the test-split benchmark")
    p.add_argument("--table-only", action="store_true",
                   help="train nothing: the table of the runs in the store")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    args.tracking_uri = args.tracking_uri or f"sqlite:///{(out / 'mlruns.db').resolve()}"
    failed = 0
    if not args.table_only:
        if not args.datalist:
            p.error("--datalist is required unless --table-only")
        only = [n.strip() for n in args.only.split(",")] if args.only else None
        configs = configurations(args.preset, only, args.epoch_scale)
        if not args.extra_datalist:
            skipped = [n for n, c in configs.items() if c["data"] == "extra"]
            if skipped:
                print(f"skipping {skipped}: they need --extra-datalist", flush=True)
            configs = {n: c for n, c in configs.items() if c["data"] != "extra"}
        client = _client(args.tracking_uri)  # the store and experiment once, before parallel jobs write
        if client.get_experiment_by_name(EXPERIMENT) is None:
            local = args.tracking_uri.startswith("sqlite:")  # its artifacts beside the store, not in the cwd
            client.create_experiment(EXPERIMENT, artifact_location=(out / "mlruns").resolve().as_uri()
                                     if local else None)
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            t0 = time.perf_counter()
            futures = {pool.submit(run_config, n, c, args): n for n, c in configs.items()}
            for fut in concurrent.futures.as_completed(futures):
                try:
                    rid = fut.result()
                except (RuntimeError, subprocess.CalledProcessError) as err:  # the others go on
                    print(f"FAILED {futures[fut]}: {err}", flush=True)
                    failed += 1
                    continue
                print(f"done {futures[fut]} (MLflow run {rid}, {time.perf_counter() - t0:.0f} s)", flush=True)
    print(write_table(study_rows(args.tracking_uri, presets().get(args.preset)), out))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
