"""``python -m pipeline benchmark``: fuse a datalist split with several methods and score them.

Example::

    python -m pipeline benchmark --datalist data/datalist.json --split test \\
        --methods wa,gff,lpcnn,dwt,lp,cnn --out runs/benchmark

For every pair of the split and every method it writes

- ``OUT/fused/<method>/<case>_<slice:03d>.png`` (``<pair>/<case>_<slice:03d>.png`` when the split
  mixes pair types, e.g. CT-MRI and SPECT-MRI, whose case/slice numbers may coincide),
- ``OUT/results.csv``: one row per (method, pair) with ``method, pair, case, slice, seconds`` and
  one column per metric,
- ``OUT/summary.md``: mean +- std per method and metric, the best in bold, and the seconds per pair,
  like the thesis's Tables 4.1/4.2 but over every pair of the split,
- ``OUT/figures/<pair>_<case>_<slice:03d>.png``: the two sources on top and each method's result
  below, labelled, like the thesis's Figures 4.5/4.6,

and logs the parameters, the mean metrics and those files as one run of the MLflow experiment
``benchmark`` (tracking URI default ``sqlite:///OUT/mlruns.db``; artifacts under ``OUT/mlartifacts``
for a new experiment). A remote tracking server is checked before any work and every request
to it is bounded, as in training (:mod:`pipeline.tracking`).

Every file name is built from checked datalist fields inside OUT (:mod:`pipeline.outputs`); two
entries with one output name are an error. The files are written into a staging folder beside
OUT and published together once all are written, so a failed run leaves OUT as it was; a second
benchmark into the same OUT stops at once.

Images are read as 8-bit, fused as float in [0, 1] and written as 8-bit PNG; metrics score the
written 8-bit images on the 0..255 scale, as the reference toolboxes score saved files (colour
pairs on the Y channel). ``--convention cddfuse`` (or ``vifb``) scores them as that evaluator does
instead, under its column names and in its order (:mod:`pipeline.metrics.conventions`): the CSV
columns, the summary rows and the MLflow keys are then that convention's. A metric that is
undefined for a pair (NaN) is kept in the CSV with a warning and left out of the means. Methods
whose requirements are missing (LP-CNN weights, the trained checkpoint) are skipped with a message.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.baselines import METHODS
from pipeline.baselines.cli import collect_params
from pipeline.io import read_image, read_pair
from pipeline.outputs import StagedOutput, output_path
from pipeline.scoring import fused_name, name_parts, score_entry

__all__ = ["add_arguments", "run", "run_benchmark", "BenchmarkResult", "lower_is_better",
           "definitions", "add_engine_arguments", "ray_options_from_args"]

DEFAULT_METHODS = ",".join(METHODS)


@dataclass
class BenchmarkResult:
    """What a benchmark run produced."""

    out: Path
    methods: list[str]
    skipped: dict[str, str]
    metrics: list[str]
    rows: list[dict[str, Any]] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)
    run_id: str | None = None


def _split_list(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def _method_requirements(method: str, lpcnn_weights: str | None, checkpoint: str | None) -> str | None:
    """Why ``method`` cannot run here, or None when it can."""
    try:
        if method == "lpcnn":
            from pipeline.baselines.lpcnn import resolve_weights_path

            resolve_weights_path(lpcnn_weights)
        elif method == "cnn":
            from pipeline.baselines.cnn import DEFAULT_CHECKPOINT

            path = Path(checkpoint) if checkpoint else DEFAULT_CHECKPOINT
            if not path.is_file():
                return f"no trained checkpoint at {path} (train the bundle, or pass --checkpoint PATH)"
        else:
            from pipeline.baselines import get_method

            get_method(method)
    except FileNotFoundError as err:
        return f"{err} (or pass --lpcnn-weights PATH)"
    except ImportError as err:
        return f"cannot import it ({err})"
    return None


def _fmt(value: float) -> str:
    if not math.isfinite(value):
        return "nan"
    magnitude = abs(value)
    if magnitude != 0 and (magnitude >= 1e4 or magnitude < 1e-3):
        return f"{value:.3e}"
    return f"{value:.4f}"


def definitions(columns: Sequence[str], convention: str = "project") -> dict[str, str]:
    """What each column's number is: the reference its metric reproduces (registry ``reference``).

    Args:
        columns: metric columns of the summary (vocabulary names, or the convention's).
        convention: whose column names ``columns`` are.

    Returns:
        ``{column: "<metric>: <reference>"}`` in the order of ``columns``.
    """
    from pipeline.metrics import get_spec
    from pipeline.metrics.conventions import get_convention

    conv = get_convention(convention)
    metrics = {c: c if conv.name == "project" else conv.metric_of(c) for c in columns}
    return {c: get_spec(m).reference if c == m else f"{m}: {get_spec(m).reference}" for c, m in metrics.items()}


def lower_is_better(columns: Sequence[str], convention: str = "project") -> frozenset[str]:
    """The columns whose smallest mean is the best: ``seconds`` and those whose metric says so.

    The direction is the registry's (:attr:`pipeline.metrics.MetricSpec.higher_is_better`); under
    another convention each column takes the direction of the metric that computes it.

    Args:
        columns: metric columns of the summary (vocabulary names, or the convention's).
        convention: whose column names ``columns`` are.

    Returns:
        the lower-is-better columns among ``columns``, plus ``seconds``.

    Raises:
        UnknownMetricError: a vocabulary name that is not registered (project convention).
        ValueError: an unknown convention or column name.
    """
    from pipeline.metrics import get_spec
    from pipeline.metrics.conventions import get_convention

    conv = get_convention(convention)
    if conv.name == "project":
        lower = (name for name in columns if not get_spec(name).higher_is_better)
    else:
        lower = (name for name in columns if not conv.higher_is_better(name))
    return frozenset({"seconds", *lower})


def summarise(
    rows: Sequence[dict[str, Any]], methods: Sequence[str], metrics: Sequence[str]
) -> dict[str, dict[str, tuple[float, float]]]:
    """Mean and standard deviation per method and metric (``seconds`` included), NaNs ignored.

    Args:
        rows: result rows (``method`` key plus one key per metric and ``seconds``).
        methods: methods to summarise.
        metrics: metric columns.

    Returns:
        ``{method: {metric: (mean, std)}}``; ``(nan, nan)`` where a method has no finite value.
    """
    table: dict[str, dict[str, tuple[float, float]]] = {}
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        table[method] = {}
        for name in [*metrics, "seconds"]:
            values = np.array([float(r[name]) for r in mine], dtype=np.float64)
            values = values[np.isfinite(values)]
            table[method][name] = (float(values.mean()), float(values.std())) if values.size else (math.nan, math.nan)
    return table


def summary_markdown(
    table: dict[str, dict[str, tuple[float, float]]], metrics: Sequence[str], title: str, n_pairs: int,
    skipped: dict[str, str], lower: frozenset[str] | None = None, notes: Mapping[str, str] | None = None,
) -> str:
    """The summary table as Markdown: metrics as rows, methods as columns, the best in bold.

    Args:
        table: output of :func:`summarise`.
        metrics: metric columns in order.
        title: heading line.
        n_pairs: number of pairs scored.
        skipped: methods skipped and why.
        lower: the columns for which a smaller mean is the best (default: ``seconds`` and the
            registry's lower-is-better metrics, :func:`lower_is_better` of ``metrics``).
        notes: what each column is, listed under the table (default: :func:`definitions` of
            ``metrics``, so that a reader knows which definition of, e.g., FMI a number follows).

    Returns:
        the Markdown text.
    """
    methods = list(table)
    columns = [*metrics, "seconds"]
    if lower is None:
        lower = lower_is_better(metrics)
    best: dict[str, float] = {}
    for name in columns:
        means = [table[m][name][0] for m in methods if math.isfinite(table[m][name][0])]
        if means:
            best[name] = min(means) if name in lower else max(means)
    lines = [f"# {title}", "", f"Mean +- standard deviation over {n_pairs} pairs; best in bold "
             f"(lower is better for {', '.join(sorted(lower))}, higher for the rest). "
             "`seconds` is the fusion time per pair.", ""]
    # metrics as rows and methods as columns, like the thesis's Tables 4.1/4.2
    lines.append("| metric | " + " | ".join(methods) + " |")
    lines.append("|---|" + "---|" * len(methods))
    for name in columns:
        cells = []
        for m in methods:
            mean, std = table[m][name]
            text = f"{_fmt(mean)} +- {_fmt(std)}"
            cells.append(f"**{text}**" if name in best and mean == best[name] else text)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    notes = definitions(metrics) if notes is None else notes
    if notes:
        lines += ["", "Definitions:", ""] + [f"- `{name}`: {text}" for name, text in notes.items()]
    if skipped:
        lines += ["", "Skipped methods:", ""] + [f"- `{m}`: {why}" for m, why in skipped.items()]
    return "\n".join(lines) + "\n"


def write_figure(path: Path, sources: tuple[np.ndarray, np.ndarray], labels: tuple[str, str],
                 fused: dict[str, np.ndarray], title: str) -> None:
    """Save a comparison figure: the two sources on the top row, each method below, labelled.

    Args:
        path: PNG to write.
        sources: the two 8-bit sources (gray or RGB).
        labels: their modality names.
        fused: method name -> 8-bit fused image.
        title: figure title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ncols = max(2, min(3, len(fused)))
    nrows = 1 + math.ceil(len(fused) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.6 * ncols, 2.8 * nrows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    panels = [(axes[0, i], img, lab) for i, (img, lab) in enumerate(zip(sources, labels))]
    panels += [(axes[1 + i // ncols, i % ncols], img, name) for i, (name, img) in enumerate(fused.items())]
    for ax, img, label in panels:
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=255)
        ax.set_title(label, fontsize=10)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def _figure_indices(n: int, count: int) -> list[int]:
    if count <= 0 or n == 0:
        return []
    return sorted({int(round(i)) for i in np.linspace(0, n - 1, min(count, n))})


def _write_csv(path: Path, rows: list[dict[str, Any]], metrics: Sequence[str]) -> None:
    columns = ["method", "pair", "case", "slice", "seconds", *metrics]
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    os.replace(tmp, path)


def _tracking_uri(out: Path, tracking_uri: str | None) -> str:
    return tracking_uri or f"sqlite:///{(out / 'mlruns.db').resolve()}"


def _log_mlflow(result: BenchmarkResult, table: dict, params: dict[str, Any], tracking_uri: str | None,
                experiment: str) -> str:
    import mlflow
    from mlflow.tracking import MlflowClient

    from pipeline.tracking import bound_mlflow_requests

    bound_mlflow_requests()
    uri = _tracking_uri(result.out, tracking_uri)
    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        # a SQLite store would put artifacts in ./mlruns of the working folder: keep them beside the DB
        exp_id = client.create_experiment(experiment, artifact_location=(result.out / "mlartifacts").resolve().as_uri())
    else:
        exp_id = found.experiment_id
    run = client.create_run(exp_id, run_name=f"benchmark-{params['split']}-{time.strftime('%Y%m%d-%H%M%S')}")
    run_id = run.info.run_id
    try:
        ts = int(time.time() * 1000)
        client.log_batch(run_id, params=[mlflow.entities.Param(k, str(v)[:500]) for k, v in params.items()])
        metrics = [mlflow.entities.Metric(f"{m}/{name}", mean, ts, 0)
                   for m, per in table.items() for name, (mean, _) in per.items() if math.isfinite(mean)]
        for start in range(0, len(metrics), 900):  # MLflow's batch limit is 1000
            client.log_batch(run_id, metrics=metrics[start:start + 900])
        for name in ("results.csv", "summary.md"):
            client.log_artifact(run_id, str(result.out / name))
        if result.figures:
            client.log_artifacts(run_id, str(result.out / "figures"), "figures")
        client.set_terminated(run_id, "FINISHED")
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    return run_id


def run_benchmark(
    datalist: str | os.PathLike,
    out: str | os.PathLike,
    split: str = "test",
    methods: Sequence[str] = METHODS,
    metrics: Sequence[str] | None = None,
    colour: str = "ycbcr",
    checkpoint: str | None = None,
    lpcnn_weights: str | None = None,
    device: str | None = None,
    tracking_uri: str | None = None,
    experiment: str = "benchmark",
    n_figures: int = 2,
    limit: int | None = None,
    mlflow_logging: bool = True,
    progress: bool = True,
    convention: str = "project",
    tracking_timeout: float = 5.0,
    engine: str = "local",
    ray_options: Any = None,
) -> BenchmarkResult:
    """Fuse every pair of a split with each method, score, summarise, draw and log.

    Args:
        datalist: ``datalist.json`` (see :mod:`pipeline.datalist`).
        out: output folder (created; files in it are replaced).
        split: ``training``, ``validation`` or ``test``.
        methods: method names from :data:`pipeline.baselines.METHODS`.
        metrics: metric names; default ``pipeline.metrics.DEFAULT_METRICS`` (with another
            convention: its column names, default all of them in its order).
        colour: colour mode for PET/SPECT pairs (``ycbcr`` or ``per-channel``).
        checkpoint: trained network weights for ``cnn``.
        lpcnn_weights: ``cnnmodel.mat`` for ``lpcnn``.
        device: torch device for ``lpcnn``/``cnn``.
        tracking_uri: MLflow tracking URI; default ``sqlite:///OUT/mlruns.db``.
        experiment: MLflow experiment name.
        n_figures: number of comparison figures (pairs evenly spread over the split).
        limit: use only the first ``limit`` pairs (quick looks).
        mlflow_logging: log the run to MLflow.
        progress: show a tqdm progress bar.
        convention: ``project`` (default), ``cddfuse`` or ``vifb``: whose columns and definitions
            score the fused images (:mod:`pipeline.metrics.conventions`).
        tracking_timeout: seconds a remote tracking server has to answer the check made before
            any work (:func:`pipeline.tracking.check_tracking_server`).
        engine: ``local`` (this process, pair after pair) or ``ray`` (Ray Data actors,
            :mod:`pipeline.ray_engine`); both give the same files and metric values.
        ray_options: a :class:`pipeline.ray_engine.RayOptions` or a dict of its fields (``ray``).

    Returns:
        a :class:`BenchmarkResult`.

    Raises:
        ValueError: unknown method names, convention, column names or engine, no runnable method, an
            empty split, entries without or with unsafe ``case``/``slice``/``pair``, two entries
            with one output name, OUT inside the data folder, or another run writing OUT.
        pipeline.tracking.TrackingServerError: the remote tracking server does not answer.
        ImportError: ``engine="ray"`` without Ray installed (the message says how to install it).
    """
    from pipeline.datalist import load_datalist

    if engine not in ("local", "ray"):
        raise ValueError(f"unknown engine {engine!r}; choose local or ray")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    from pipeline.metrics import DEFAULT_METRICS
    from pipeline.metrics.conventions import get_convention

    conv = get_convention(convention)
    entries = load_datalist(datalist, split)
    if conv.name == "project":
        metric_names = list(metrics) if metrics else list(DEFAULT_METRICS)
        scoring: dict[str, Any] = {"colour": "y"}
    else:
        metric_names = [c.name for c in conv.select(list(metrics) if metrics else None)]
        scoring = {"convention": conv.name}
    lower = lower_is_better(metric_names, conv.name)  # checks the names before anything is fused
    if limit is not None:
        entries = entries[: max(0, int(limit))]
    if not entries:
        raise ValueError(f"{datalist}: the {split!r} split has no pairs")
    skipped: dict[str, str] = {}
    params: dict[str, dict[str, Any]] = {}
    for m in methods:
        why = _method_requirements(m, lpcnn_weights, checkpoint)
        if why is None:
            params[m] = collect_params(m, [], lpcnn_weights, checkpoint, device)
        else:
            skipped[m] = why
            print(f"benchmark: skipping {m}: {why}", file=sys.stderr)
    runnable = [m for m in methods if m not in skipped]
    if not runnable:
        raise ValueError("no method can run: " + "; ".join(f"{m}: {w}" for m, w in skipped.items()))

    out = Path(out)
    names = [name_parts(e, datalist, i) for i, e in enumerate(entries)]
    if mlflow_logging:
        from pipeline.tracking import bound_mlflow_requests, check_tracking_server

        bound_mlflow_requests()
        check_tracking_server(_tracking_uri(out, tracking_uri), timeout=tracking_timeout)
    staged = StagedOutput(out, "benchmark", inputs=[Path(datalist).resolve().parent])
    with staged:
        result = _fuse_and_score(staged, entries, names, runnable, params, metric_names, scoring, colour,
                                 n_figures, progress, engine, ray_options)
        _write_csv(staged.path("results", suffix=".csv"), result.rows, metric_names)
        table = summarise(result.rows, runnable, metric_names)
        pair_types = ", ".join(sorted({str(e.get("pair", "")) for e in entries}))
        scored = colour if conv.name == "project" else f"{colour}; {conv.name} convention"
        text = summary_markdown(table, metric_names, f"Benchmark: {pair_types} {split} split ({scored})",
                                len(entries), skipped, lower, definitions(metric_names, conv.name))
        staged.path("summary", suffix=".md").write_text(text)
        staged.publish()
        result.out, result.skipped = out, skipped
        result.figures = [out / p.relative_to(staged.staging) for p in result.figures]
        if mlflow_logging:
            run_params = {"datalist": str(Path(datalist).resolve()), "split": split,
                          "methods": ",".join(runnable), "skipped": ",".join(skipped) or "none",
                          "metrics": ",".join(metric_names),
                          "colour": colour, "n_pairs": len(entries), "checkpoint": checkpoint or "shipped, per pair type (models/models.json)",
                          "lpcnn_weights": lpcnn_weights or "default"}
            if conv.name != "project":
                run_params["convention"] = conv.name
            if any(conv.metric_of(c).startswith("FMI_") for c in metric_names):
                from pipeline.metrics.fmi import DEFAULT_MODE

                run_params["fmi_mode"] = DEFAULT_MODE
            from pipeline.tracking import file_sha256

            run_params["datalist_sha256"] = file_sha256(datalist)
            result.run_id = _log_mlflow(result, table, run_params, tracking_uri, experiment)
    return result


def _fuse_and_score(staged: StagedOutput, entries: list[dict], names: list[tuple[str, str, int]],
                    runnable: list[str], params: dict[str, dict[str, Any]], metric_names: list[str],
                    scoring: dict[str, Any], colour: str, n_figures: int, progress: bool,
                    engine: str = "local", ray_options: Any = None) -> BenchmarkResult:
    """Fuse, score and draw every entry with every method, writing into the staging folder.

    Args:
        staged: the staged output (its :meth:`~pipeline.outputs.StagedOutput.path` places files).
        entries: the split's entries.
        names: their checked ``(pair, case, slice)``.
        runnable: the methods.
        params: each method's parameters.
        metric_names: the metric columns.
        scoring: :func:`pipeline.metrics.compute_metrics` options.
        colour: the colour mode.
        n_figures: how many comparison figures.
        progress: show a progress bar.
        engine: ``local`` or ``ray`` (see :func:`run_benchmark`).
        ray_options: the Ray engine's options.

    Returns:
        the rows and figures (figure paths in the staging folder).
    """
    result = BenchmarkResult(out=staged.staging, methods=runnable, skipped={}, metrics=metric_names)
    mixed_pairs = len({e.get("pair") for e in entries}) > 1
    figure_at = set(_figure_indices(len(entries), n_figures))

    for index, entry in enumerate(entries):  # every name reserved (and collisions refused) before any work
        for m in runnable:
            staged.path("fused", m, *fused_name(names[index], mixed_pairs), suffix=".png", source=entry["image_a"])
    task = {"methods": runnable, "params": params, "out": str(staged.staging), "colour": colour,
            "mixed_pairs": mixed_pairs, "metric_names": metric_names, "scoring": scoring}
    if engine == "ray":
        from pipeline.ray_engine import RayOptions, ray_benchmark_rows

        options = ray_options if isinstance(ray_options, RayOptions) else RayOptions(**(ray_options or {}))
        stream: Iterator[tuple[int, list[dict[str, Any]], dict[str, np.ndarray] | None]] = (
            (i, rows, None) for i, rows in ray_benchmark_rows(entries, task, options))
    else:
        stream = ((i, *score_entry(e, keep_fused=i in figure_at, **task)) for i, e in enumerate(entries))

    from tqdm.auto import tqdm

    bar = tqdm(total=len(entries) * len(runnable), desc="benchmark", unit="fusion", disable=not progress)
    try:
        for index, rows, fused_for_figure in stream:
            result.rows.extend(rows)
            bar.update(len(rows))
            if index in figure_at:
                entry = entries[index]
                if fused_for_figure is None:  # the Ray workers wrote them: read back exactly what they wrote
                    fused_for_figure = {m: read_image(output_path(staged.staging, "fused", m, *fused_name(
                        names[index], mixed_pairs), suffix=".png")) for m in runnable}
                a8, b8 = read_pair(entry["image_a"], entry["image_b"])
                pair, case, slice_ = names[index]
                path = staged.path("figures", f"{pair}_{case}_{slice_:03d}", suffix=".png",
                                   source=entry["image_a"])
                title = f"{pair} case {case} slice {slice_:03d}"
                labels = (entry.get("modality_a", "A"), entry.get("modality_b", "B"))
                write_figure(path, (a8, b8), labels, fused_for_figure, title)
                result.figures.append(path)
    finally:
        bar.close()
    if hasattr(os, "sync"):
        os.sync()  # every staged file on disk before the set is published
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m pipeline benchmark``."""
    parser.add_argument("--datalist", required=True, help="datalist.json written by python -m data_prep")
    parser.add_argument("--split", default="test", choices=("training", "validation", "test"))
    parser.add_argument("--methods", default=DEFAULT_METHODS, help=f"comma-separated, from {DEFAULT_METHODS}")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--metrics", default=None,
                        help="comma-separated metric names (default: the registry's defaults, all of them; "
                             "with --convention: its columns)")
    parser.add_argument("--convention", default="project",
                        help="whose metric columns and definitions: project (default), cddfuse, vifb")
    parser.add_argument("--colour", default="ycbcr", choices=("ycbcr", "per-channel"), help="colour mode for PET/SPECT")
    parser.add_argument("--checkpoint", default=None, help="trained network weights for cnn")
    parser.add_argument("--lpcnn-weights", default=None, help="cnnmodel.mat for lpcnn")
    parser.add_argument("--device", default=None, help="torch device for lpcnn/cnn")
    parser.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default sqlite:///OUT/mlruns.db)")
    parser.add_argument("--experiment", default="benchmark", help="MLflow experiment name")
    parser.add_argument("--figures", type=int, default=2, help="number of comparison figures")
    parser.add_argument("--limit", type=int, default=None, help="only the first N pairs")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    add_engine_arguments(parser)


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``--engine`` options: this process, or Ray Data actors on a local instance or a cluster."""
    g = parser.add_argument_group("engine (ray: pip install \"ssim-fusion[ray]\")")
    g.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local: this process (default); ray: Ray Data actors, same results")
    g.add_argument("--ray-address", default=None,
                   help="a Ray cluster (ray://host:10001 or auto; default: start a local instance)")
    g.add_argument("--ray-workers", type=int, default=2, help="actors at once (default 2)")
    g.add_argument("--ray-cpus-per-worker", type=float, default=1.0, help="CPUs per actor (default 1)")
    g.add_argument("--ray-gpus-per-worker", type=float, default=0.0, help="GPUs per actor (default 0)")
    g.add_argument("--ray-batch-size", type=int, default=8, help="pairs per Ray batch (default 8)")
    g.add_argument("--ray-threads-per-worker", type=int, default=None,
                   help="torch threads per actor (default: this process's, for bit-identical results)")


def ray_options_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The :class:`pipeline.ray_engine.RayOptions` fields from :func:`add_engine_arguments` options."""
    return {"address": args.ray_address, "workers": args.ray_workers,
            "cpus_per_worker": args.ray_cpus_per_worker, "gpus_per_worker": args.ray_gpus_per_worker,
            "batch_size": args.ray_batch_size,
            "threads_per_worker": args.ray_threads_per_worker}


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and print the summary; returns 0 on success (2: ``--engine ray`` without Ray)."""
    if args.engine == "ray":
        from pipeline.ray_engine import require_ray

        try:
            require_ray()
        except ImportError as err:  # before any work: one line that says how to install it
            print(f"error: {err}", file=sys.stderr)
            return 2
    result = run_benchmark(
        args.datalist, args.out, split=args.split, methods=_split_list(args.methods),
        metrics=_split_list(args.metrics) or None, colour=args.colour, checkpoint=args.checkpoint,
        lpcnn_weights=args.lpcnn_weights, device=args.device, tracking_uri=args.tracking_uri,
        experiment=args.experiment, n_figures=args.figures, limit=args.limit, mlflow_logging=not args.no_mlflow,
        convention=args.convention, engine=args.engine, ray_options=ray_options_from_args(args),
    )
    print((result.out / "summary.md").read_text())
    print(f"results: {result.out / 'results.csv'}" + (f"; MLflow run {result.run_id}" if result.run_id else ""))
    return 0
