"""Hyperparameter study of the ssim_fusion bundle: train a list of configurations, score each on
the validation and test splits, print one table.

Every configuration is one run of the bundle's own CLI (``python -m monai.bundle run training``,
a subprocess, tracked in MLflow: one SQLite store ``OUT/mlruns.db`` for the whole study, experiment
``train_study``, run name = configuration name), followed by ``python -m pipeline benchmark
--methods cnn`` on the test split with the run's best checkpoint. Validation metrics are those the
bundle's evaluator computes at the validation whose checkpoint became ``model.pt`` (``validations``
evenly spaced per run, 4 unless a configuration says otherwise; ``Q_Y``, ``FMI_pixel``, ``Q_ABF``,
and the key metric ``val_ssim_alpha``);
select on them, report the test columns.

Examples::

    # CPU (2 cores, minutes per run): the short settings
    python benchmarks/train_study.py --datalist data/harvard_ctmri/datalist.json --out runs/study
    python benchmarks/train_study.py ... --only base,alpha1,grad1 --jobs 2
    # GPU: longer runs, wider networks, more seeds (``--preset gpu``), same table; on a lent GPU
    # machine benchmarks/gpu_study.sh runs this with the MLflow store on tmpfs
    python benchmarks/train_study.py --datalist data/harvard_ctmri/datalist.json --out runs/study_gpu \\
        --device cuda:0 --preset gpu --jobs 12 --threads 1

``--extra-datalist`` is the datalist of the configurations marked ``data: extra`` (CT-MRI plus the
Y channel of the PET/SPECT pairs as training data, prepared with explicit case lists so that the
CT-MRI validation and test cases stay out of training; see the model card). A configuration whose
``OUT/<name>/result.json`` exists is not rerun (delete the file to redo it). Images are float
[0, 1] in the bundle; the reference metrics score 8-bit images (0..255).

Writes ``OUT/study.csv`` and ``OUT/study.md`` (the table) and per configuration ``OUT/<name>/``
(the bundle's output dir: ``models/model.pt``, samples, ``train.log``, ``test/`` benchmark).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["BASE", "PRESETS", "configurations", "run_config", "main"]

REPO = Path(__file__).resolve().parents[1]
TRAIN_CONFIG = REPO / "bundles" / "ssim_fusion" / "configs" / "train.yaml"
METRICS = ("Q_Y", "FMI_pixel", "Q_ABF")

#: Hyperparameters of every configuration unless it overrides them (bundle config ids).
BASE: dict[str, Any] = {
    "alpha": 4.0, "learning_rate": 0.005, "batch_size": 8, "patch_size": 64, "epochs": 60,
    "widths": [16, 32, 32, 16], "source_weights": [0.5, 0.5], "second_term": "none", "second_weight": 0.0,
    "clip_output": True, "init_std": 0.001, "lr_schedule": False, "seed": 0, "data": "ctmri",
    "validations": 4, "weight_sigma": None,
}

_VAR = {"source_weights": "variance"}
_VAR_GM4 = {**_VAR, "second_term": "gradient+mean", "second_weight": 4.0}
_VAR_GWM4 = {**_VAR, "second_term": "gradient+wmean", "second_weight": 4.0}

#: Named studies: configuration name -> overrides of BASE (``epochs`` scaled by ``--epoch-scale``).
#: At 60 epochs a configuration sees the 110 CT-MRI training pairs 60 times (840 batches of 8).
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "cpu": {
        # the thesis's loss on the raw output, and scored on the clipped output that inference ships
        "thesis": {"clip_output": False},
        "thesis_seed1": {"clip_output": False, "seed": 1},
        "thesis_seed2": {"clip_output": False, "seed": 2},
        "base": {},
        "base_seed1": {"seed": 1},
        "base_seed2": {"seed": 2},
        # what the thesis left open, one at a time around base (each sees the same 60 epochs)
        "alpha1": {"alpha": 1.0},
        "alpha2": {"alpha": 2.0},
        "alpha8": {"alpha": 8.0},
        "lr1e-3": {"learning_rate": 0.001},
        "lr2e-2": {"learning_rate": 0.02},
        "narrow": {"widths": [8, 16, 16, 8]},
        "wide": {"widths": [32, 64, 64, 32]},
        "patch128": {"patch_size": 128},
        "batch2": {"batch_size": 2},
        "batch32": {"batch_size": 32},
        "epochs240": {"epochs": 240},
        # loss variants: per-window source weights, second terms
        "variance": _VAR,
        "gradmean4": {"second_term": "gradient+mean", "second_weight": 4.0},
        "var_gradmean4": _VAR_GM4,
        "var_sgrad2": {**_VAR, "second_term": "sgradient", "second_weight": 2.0},
        "var_grad_fine4": {**_VAR, "second_term": "gradient+fine", "second_weight": 4.0},
        # the chosen loss, longer, with seed repeats, and with the PET/SPECT pairs' Y channels
        # (40 epochs of 672 pairs = the batches of 240 CT-MRI epochs)
        "var_gradmean4_e240": {**_VAR_GM4, "epochs": 240},
        "var_gradmean4_e240_seed1": {**_VAR_GM4, "epochs": 240, "seed": 1},
        "var_gradmean4_e240_seed2": {**_VAR_GM4, "epochs": 240, "seed": 2},
        "var_gradmean4_extra": {**_VAR_GM4, "data": "extra", "epochs": 40},
        # twice as long again (still under the 15-minute training budget on one core)
        "var_gradmean4_e480_seed1": {**_VAR_GM4, "epochs": 480, "seed": 1},
        "var_gradmean4_e480_seed2": {**_VAR_GM4, "epochs": 480, "seed": 2},
        # two more seeds, validated every 60 epochs (8 checkpoints to select from)
        "var_gradmean4_e480_seed3": {**_VAR_GM4, "epochs": 480, "seed": 3, "validations": 8},
        "var_gradmean4_e480_seed4": {**_VAR_GM4, "epochs": 480, "seed": 4, "validations": 8},
        # the variant with the best FMI_pixel at 60 epochs, as long
        "var_grad_fine4_e240": {**_VAR, "second_term": "gradient+fine", "second_weight": 4.0, "epochs": 240},
        # the intensity anchor on the variance-weighted mean of the sources instead of their average
        "var_gradwmean4": _VAR_GWM4,
        "var_gradwmean4_seed1": {**_VAR_GWM4, "seed": 1},
        # its 480-epoch GPU run ranked second on validation (gpu preset): the same on this CPU
        "var_gradwmean4_e480": {**_VAR_GWM4, "epochs": 480, "validations": 8},
        "var_gradwmean4_e480_seed2": {**_VAR_GWM4, "epochs": 480, "validations": 8, "seed": 2},
        # variance shares over a narrower Gaussian (sigma 0.75): the CT's skull edge no longer claims
        # the windows of the MRI's scalp beside it (the FMI_pixel analysis in the model card)
        "var075_gradmean4_e240": {**_VAR_GM4, "weight_sigma": 0.75, "epochs": 240},
        "var075_gradmean4_e240_seed1": {**_VAR_GM4, "weight_sigma": 0.75, "epochs": 240, "seed": 1},
        # the edge term as Q_ABF scores edges: free between 3/4 and all of the strongest source edge
        "var_bgradmean4_e240": {**_VAR_GM4, "second_term": "bgradient+mean", "epochs": 240},
        "var_bgradmean4_e240_seed1": {**_VAR_GM4, "second_term": "bgradient+mean", "epochs": 240, "seed": 1},
    },
}
_FINE4 = {**_VAR, "second_term": "gradient+fine", "second_weight": 4.0}
_WIDE = {"widths": [32, 64, 64, 32]}
#: GPU: what a GPU makes cheap around the chosen loss, at the CPU runs' patch and batch size: twice
#: the epochs (960, validated every 120), the ``fine`` variant as long, wider networks, more seeds.
PRESETS["gpu"] = {
    **{f"var_gradmean4_e960{s}": {**_VAR_GM4, "epochs": 960, "validations": 8, **seed}
       for s, seed in (("", {}), ("_seed1", {"seed": 1}), ("_seed2", {"seed": 2}))},
    **{f"var_grad_fine4_e960{s}": {**_FINE4, "epochs": 960, "validations": 8, **seed}
       for s, seed in (("", {}), ("_seed1", {"seed": 1}), ("_seed2", {"seed": 2}))},
    **{f"var_grad_fine4_e480_seed{k}": {**_FINE4, "epochs": 480, "validations": 8, "seed": k}
       for k in (1, 2)},
    **{f"var_gradwmean4_e480{s}": {**_VAR_GWM4, "epochs": 480, "validations": 8, **seed}
       for s, seed in (("", {}), ("_seed1", {"seed": 1}))},
    "wide_var_gradmean4_e480": {**_VAR_GM4, **_WIDE, "epochs": 480, "validations": 8},
    "wide_var_grad_fine4_e480": {**_FINE4, **_WIDE, "epochs": 480, "validations": 8},
    # the banded edge term (a second GPU call: six runs at once)
    **{f"var_bgrad{t}4_e480{s}": {**_VAR, "second_term": f"bgradient+{t}", "second_weight": 4.0,
                                  "epochs": 480, "validations": 4, **seed}
       for t in ("mean", "fine") for s, seed in (("", {}), ("_seed1", {"seed": 1}), ("_seed2", {"seed": 2}))},
}

_METRIC_LINE = re.compile(r"Epoch\[(\d+)\] Metrics -- (.*)")
_RUN_ID = re.compile(r"MLflow run ([0-9a-f]{32})")


def configurations(preset: str, only: list[str] | None, epoch_scale: float) -> dict[str, dict[str, Any]]:
    """The full hyperparameters of each configuration of ``preset`` (or of ``only`` among them)."""
    table = PRESETS[preset]
    names = only or list(table)
    unknown = [n for n in names if n not in table]
    if unknown:
        raise SystemExit(f"unknown configuration(s) {unknown}; {preset!r} has {list(table)}")
    out = {}
    for name in names:
        cfg = {**BASE, **table[name]}
        cfg["epochs"] = max(1, round(cfg["epochs"] * epoch_scale))
        out[name] = cfg
    return out


def _bundle_args(cfg: dict[str, Any], datalist: str, out_dir: Path, device: str, tracking_uri: str,
                 name: str) -> list[str]:
    args = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", str(TRAIN_CONFIG),
            "--datalist", datalist, "--output_dir", str(out_dir.resolve()), "--device", device,
            "--val_interval", str(max(1, cfg["epochs"] // cfg["validations"])),  # model.pt: the best of them
            "--progress_bar", "False", "--tracking", "mlflow", "--tracking_uri", tracking_uri,
            "--experiment_name", "train_study", "--run_name", name]
    for key in ("alpha", "learning_rate", "batch_size", "patch_size", "epochs", "second_term",
                "second_weight", "clip_output", "lr_schedule", "seed"):
        args += [f"--{key}", str(cfg[key])]
    if cfg.get("weight_sigma") is not None:
        args += ["--weight_sigma", str(cfg["weight_sigma"])]
    weights = cfg["source_weights"]
    args += ["--widths", json.dumps(cfg["widths"]), "--network_def#init_std", str(cfg["init_std"]),
             "--source_weights", weights if isinstance(weights, str) else json.dumps(weights)]
    return args


_BEST_LINE = re.compile(r"Key metric: val_ssim_alpha best value: \S+ at epoch: (\d+)")


def _parse_val(log: str) -> tuple[dict[str, float], str | None]:
    """Validation metrics of the epoch whose checkpoint became ``model.pt`` (the best
    ``val_ssim_alpha``; the last validation if the log names none) and the MLflow run id, from the
    bundle's console output."""
    by_epoch = {int(m.group(1)): {k: float(v) for k, v in re.findall(r"(\w+): ([-+0-9.eE]+)", m.group(2))}
                for m in _METRIC_LINE.finditer(log)}
    best = _BEST_LINE.findall(log)
    epoch = int(best[-1]) if best and int(best[-1]) in by_epoch else max(by_epoch, default=None)
    run = _RUN_ID.findall(log)
    return (by_epoch[epoch] if epoch is not None else {}), (run[-1] if run else None)


def _test_scores(ckpt: Path, datalist: str, out_dir: Path, device: str) -> dict[str, float]:
    """Mean Q_Y, FMI_pixel, Q_ABF of the checkpoint on the test split (``pipeline benchmark``)."""
    cmd = [sys.executable, "-m", "pipeline", "benchmark", "--datalist", datalist, "--split", "test",
           "--methods", "cnn", "--checkpoint", str(ckpt), "--metrics", ",".join(METRICS),
           "--out", str(out_dir), "--figures", "0", "--no-mlflow", "--device", device]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    sums: dict[str, list[float]] = {m: [] for m in METRICS}
    with open(out_dir / "results.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            for m in METRICS:
                if row.get(m) not in (None, "", "nan"):
                    sums[m].append(float(row[m]))
    return {m: sum(v) / len(v) for m, v in sums.items() if v}


def _load_row(path: Path) -> dict[str, Any]:
    """A finished configuration's row; rows of studies before a setting existed get its old value."""
    row = json.loads(path.read_text())
    log = path.parent / "train.log"
    if log.is_file():  # the validation columns as the current parser reads them
        val, _ = _parse_val(log.read_text())
        row.update({f"val_{m}": val.get(m) for m in (*METRICS, "val_ssim_alpha")})
    for key, old in (("lr_schedule", False), ("seed", 0), ("source_weights", [0.5, 0.5]),
                     ("clip_output", False), ("validations", 4), ("weight_sigma", None)):
        row.setdefault(key, old)
    return row


def run_config(name: str, cfg: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Train one configuration with the bundle, then score it on the test split.

    Returns:
        the row of the study table (also written to ``OUT/<name>/result.json``).
    """
    out_dir = Path(args.out) / name
    done = out_dir / "result.json"
    if done.is_file():
        return _load_row(done)
    datalist = args.extra_datalist if cfg["data"] == "extra" else args.datalist
    out_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    cmd = _bundle_args(cfg, datalist, out_dir, args.device, args.tracking_uri, name)
    log_path = out_dir / "train.log"
    t0 = time.perf_counter()
    with open(log_path, "w") as log_fh:  # streamed, to follow a run with tail -f
        proc = subprocess.Popen(cmd, stdout=log_fh, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own CPU time, exact with --jobs > 1
    wall = time.perf_counter() - t0
    cpu = usage.ru_utime + usage.ru_stime
    returncode = proc.returncode = os.waitstatus_to_exitcode(status)
    log = log_path.read_text()
    if returncode != 0:
        raise RuntimeError(f"{name}: training failed (rc {returncode}), see {log_path}:\n" + log[-2000:])
    val, run_id = _parse_val(log)
    row: dict[str, Any] = {"name": name, **{k: cfg[k] for k in BASE}, "train_wall_s": round(wall, 1),
                           "train_cpu_s": round(cpu, 1), "mlflow_run": run_id}
    row.update({f"val_{m}": val.get(m) for m in (*METRICS, "val_ssim_alpha")})
    if not args.no_test:
        # the test split is the CT-MRI one in both datalists (the extra one shares its test case)
        test = _test_scores(out_dir / "models" / "model.pt", args.datalist, out_dir / "test", args.device)
        row.update({f"test_{m}": test.get(m) for m in METRICS})
    done.write_text(json.dumps(row, indent=1))
    return row


def _fmt(v: Any, metric: bool = False) -> str:
    if isinstance(v, float):
        if metric:
            return f"{v:.4f}"
        return f"{v:g}" if abs(v) < 10 else f"{v:.0f}"
    if isinstance(v, list):
        return "-".join(str(x) for x in v)
    return "" if v is None else str(v)


def _init_store(tracking_uri: str) -> None:
    """Create the MLflow store and experiment once, before parallel jobs write to it."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    if client.get_experiment_by_name("train_study") is None:
        client.create_experiment("train_study")


def write_table(rows: list[dict[str, Any]], out: Path) -> str:
    """Write ``study.csv`` and ``study.md``; return the markdown table."""
    cols = ["name", "alpha", "learning_rate", "batch_size", "patch_size", "epochs", "widths",
            "source_weights", "weight_sigma", "second_term", "second_weight", "clip_output", "init_std",
            "lr_schedule", "seed", "data", "val_Q_Y", "val_FMI_pixel", "val_Q_ABF", "val_val_ssim_alpha",
            "test_Q_Y", "test_FMI_pixel", "test_Q_ABF", "train_wall_s", "train_cpu_s", "mlflow_run"]
    with open(out / "study.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    short = [c for c in cols if c != "mlflow_run"]
    head = [c.replace("val_val_", "val_").replace("learning_rate", "lr").replace("second_", "2nd_")
            .replace("source_weights", "weights").replace("clip_output", "clip") for c in short]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(short)]
    lines += ["| " + " | ".join(_fmt(r.get(c), c.startswith(("val_", "test_"))) for c in short) + " |"
              for r in rows]
    text = "\n".join(lines) + "\n"
    (out / "study.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; see the module docstring."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datalist", required=True, help="CT-MRI datalist (training/validation/test by case)")
    p.add_argument("--extra-datalist",
                   help="datalist with the PET/SPECT pairs added to training (data: extra)")
    p.add_argument("--out", required=True, help="study folder")
    p.add_argument("--device", default="cpu", help="torch device of training and test (cpu, cuda:0)")
    p.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
    p.add_argument("--only", help="comma-separated configuration names of the preset")
    p.add_argument("--epoch-scale", type=float, default=1.0, help="multiply every configuration's epochs")
    p.add_argument("--jobs", type=int, default=1, help="configurations trained at once")
    p.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS per job (0: leave as is)")
    p.add_argument("--tracking-uri", dest="tracking_uri",
                   help="MLflow store (default sqlite:///OUT/mlruns.db)")
    p.add_argument("--no-test", action="store_true", help="skip the test-split benchmark")
    p.add_argument("--table-only", action="store_true",
                   help="train nothing: write the table of the configurations already finished in OUT")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    args.tracking_uri = args.tracking_uri or f"sqlite:///{(out / 'mlruns.db').resolve()}"
    only = [n.strip() for n in args.only.split(",")] if args.only else None
    configs = configurations(args.preset, only, args.epoch_scale)
    if not args.extra_datalist:
        skipped = [n for n, c in configs.items() if c["data"] == "extra"]
        if skipped:
            print(f"skipping {skipped}: they need --extra-datalist", flush=True)
        configs = {n: c for n, c in configs.items() if c["data"] != "extra"}
    if args.table_only:
        configs = {}
    else:
        _init_store(args.tracking_uri)
    rows: dict[str, dict[str, Any]] = {}
    failed = 0
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = {pool.submit(run_config, n, c, args): n for n, c in configs.items()}
        for fut in concurrent.futures.as_completed(futures):
            try:
                row = fut.result()
            except RuntimeError as err:  # one failed configuration must not lose the others
                print(f"FAILED {futures[fut]}: {err}", flush=True)
                failed += 1
                continue
            rows[row["name"]] = row
            print(f"done {row['name']}: val {[row.get('val_' + m) for m in METRICS]} "
                  f"test {[row.get('test_' + m) for m in METRICS]} {row['train_wall_s']} s", flush=True)
    # every finished configuration in the folder, so that partial reruns still give the whole table
    for done in sorted(out.glob("*/result.json")):
        row = _load_row(done)
        rows.setdefault(row["name"], row)
    order = {n: i for i, n in enumerate(PRESETS[args.preset])}
    print(write_table(sorted(rows.values(), key=lambda r: order.get(r["name"], len(order))), out))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
