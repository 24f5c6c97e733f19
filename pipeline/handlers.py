"""Ignite handlers of the fusion bundle: SSIM-alpha terms, sample figures, run information, progress.

- :class:`SSIMAlphaTermsHandler` (the "SSIM-alpha loss handler"): luminance, contrast and structure
  terms per source, per iteration and per epoch, to the console (``logging``) and to MLflow.
- :class:`SampleFigureHandler`: a PNG grid (source A, source B, fused) of a few validation pairs
  after each validation, saved under the output folder and logged to MLflow.
- :class:`RunInfoHandler`: the hyperparameters, the datalist fingerprint, the device, the executed
  config and, at the end, the best checkpoint and the trained model (an MLflow model with its
  signature and an input example, optionally registered), to the console and MLflow.
- :class:`LossProgressBar`: Ignite's tqdm progress bar showing the loss.

MLflow logging goes into the run of the MONAI ``MLFlowHandler`` that ``--tracking mlflow`` attaches
to the same engine (:func:`pipeline.tracking.find_mlflow_run`); without one, console only. Images
are float in [0, 1].
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events

from pipeline.io import atomic_write_bytes
from pipeline.losses import SSIMAlphaLoss
from pipeline.metrics.ignite import pred_and_sources
from pipeline.tracking import (MLflowRun, device_info, file_sha256, find_mlflow_run, log_fusion_model,
                               log_params_once)

__all__ = ["SSIMAlphaTermsHandler", "SampleFigureHandler", "RunInfoHandler", "LossProgressBar",
           "ValidationProgress", "TERMS"]

#: The SSIM-alpha terms the handler reports, in order.
TERMS = ("luminance", "contrast", "structure", "ssim_alpha")


class SSIMAlphaTermsHandler:
    """Log the l, c, s terms (and SSIM-alpha) of each source, per iteration and per epoch.

    Metric names: ``{prefix}{term}_{source}`` per iteration (step = iteration) and
    ``{prefix}epoch_{term}_{source}`` per epoch (step = epoch, the mean over the epoch's
    iterations), e.g. ``train_luminance_a`` and ``train_epoch_structure_b``. A loss with added
    terms also reports each one, unweighted, as ``{prefix}term_{name}`` (and
    ``{prefix}epoch_term_{name}``), read from the loss's own pass.

    Args:
        loss: the SSIM-alpha loss whose terms are reported.
        output_transform: engine output -> ``(pred, sources)``; default reads ``pred`` and ``label``.
        source_names: one suffix per source channel.
        prefix: metric name prefix.
        log_interval: write a console line every this many iterations, 0 for none (MLflow gets every one).
        iteration_log: log per iteration.
        epoch_log: log per epoch.
        name: logger name.
    """

    def __init__(
        self,
        loss: SSIMAlphaLoss,
        output_transform: Callable[[Any], Any] = pred_and_sources,
        source_names: Sequence[str] = ("a", "b"),
        prefix: str = "train_",
        log_interval: int = 1,
        iteration_log: bool = True,
        epoch_log: bool = True,
        name: str | None = "SSIMAlphaTerms",
    ) -> None:
        self.loss, self.output_transform = loss, output_transform
        self.source_names, self.prefix = tuple(source_names), prefix
        self.log_interval = max(0, int(log_interval))
        self.iteration_log, self.epoch_log = iteration_log, epoch_log
        self.logger = logging.getLogger(name)
        self._sums: dict[str, float] = {}
        self._count = 0
        self._seen_count = getattr(loss, "forward_count", None)  # loss passes already reported
        self.last: dict[str, float] = {}  #: the latest iteration's values
        self.last_epoch: dict[str, float] = {}  #: the latest epoch's means

    def attach(self, engine: Engine) -> None:
        """Register on ``EPOCH_STARTED``, ``ITERATION_COMPLETED`` and ``EPOCH_COMPLETED``."""
        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        if self.epoch_log:
            engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)

    def reset(self, engine: Engine | None = None) -> None:
        self._sums, self._count = {}, 0
        self._seen_count = getattr(self.loss, "forward_count", None)

    def compute(self, output: Any) -> dict[str, float]:
        """The terms of one engine output, as ``{"{term}_{source}": value}``."""
        pred, src = self.output_transform(output)
        pred, src = torch.as_tensor(pred), torch.as_tensor(src)
        if src.shape[1] != len(self.source_names):
            raise ValueError(f"SSIMAlphaTermsHandler: {src.shape[1]} source channels but source_names "
                             f"{self.source_names}")
        terms = self.loss.ssim_terms(pred.detach().float(), src.detach().float())
        return {f"{t}_{s}": float(terms[t][i]) for t in TERMS for i, s in enumerate(self.source_names)}

    def _terms_of_this_iteration(self, engine: Engine) -> dict[str, float]:
        """The loss's own terms of this iteration's forward pass when it ran one, else a fresh pass."""
        count = getattr(self.loss, "forward_count", None)
        cached = getattr(self.loss, "last_terms", None)
        if cached is not None and count is not None and count != self._seen_count:
            self._seen_count = count
            added = dict(getattr(self.loss, "last_added", None) or {})
            flat = torch.cat([torch.stack([cached[t].float() for t in TERMS]).flatten(),
                              torch.stack([v.float() for v in added.values()]) if added
                              else cached[TERMS[0]].new_zeros(0)]).tolist()  # one device sync
            n = len(self.source_names)
            values = {f"{t}_{s}": flat[j * n + i]
                      for j, t in enumerate(TERMS) for i, s in enumerate(self.source_names)}
            values.update({f"term_{k}": flat[len(TERMS) * n + i] for i, k in enumerate(added)})
            return values
        return self.compute(engine.state.output)

    def iteration_completed(self, engine: Engine) -> None:
        values = self._terms_of_this_iteration(engine)
        self.last = values
        for k, v in values.items():
            self._sums[k] = self._sums.get(k, 0.0) + v
        self._count += 1
        if not self.iteration_log:
            return
        it = engine.state.iteration
        if self.log_interval and it % self.log_interval == 0:
            text = _format(values, self.source_names)
            self.logger.info(f"Epoch {engine.state.epoch} iteration {it}: {text}")
        run = find_mlflow_run(engine)
        if run is not None:
            run.log_metrics({f"{self.prefix}{k}": v for k, v in values.items()}, step=it, per_iteration=True)

    def epoch_completed(self, engine: Engine) -> None:
        if not self._count:
            return
        means = {k: v / self._count for k, v in self._sums.items()}
        self.last_epoch = means
        text = _format(means, self.source_names)
        self.logger.info(f"Epoch {engine.state.epoch} mean SSIM-alpha terms: {text}")
        run = find_mlflow_run(engine)
        if run is not None:
            run.log_metrics({f"{self.prefix}epoch_{k}": v for k, v in means.items()}, step=engine.state.epoch)


def _format(values: Mapping[str, float], sources: Sequence[str]) -> str:
    text = "; ".join(
        f"{s}: l={values[f'luminance_{s}']:.4f} c={values[f'contrast_{s}']:.4f} "
        f"s={values[f'structure_{s}']:.4f} ssim_alpha={values[f'ssim_alpha_{s}']:.4f}"
        for s in sources
    )
    added = [f"{k[5:]}={v:.4f}" for k, v in values.items() if k.startswith("term_")]
    return text + ("; terms: " + " ".join(added) if added else "")


class SampleFigureHandler:
    """After each evaluator run, a PNG grid of a few pairs: source A, source B and the fused image.

    The first ``num_samples`` images the evaluator sees (the validation loader is not shuffled, so
    the same pairs every epoch) are drawn row by row. The file is written atomically to
    ``output_dir/{file_prefix}_epoch{epoch:03d}.png`` and logged to MLflow under ``artifact_path``
    when the engine has an ``MLFlowHandler``.

    Args:
        output_dir: folder of the figures (created).
        num_samples: rows of the grid.
        output_transform: engine output -> ``(pred, sources)``.
        source_names: column titles of the sources.
        artifact_path: MLflow artifact folder.
        file_prefix: file name prefix.
        name: logger name.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        num_samples: int = 4,
        output_transform: Callable[[Any], Any] = pred_and_sources,
        source_names: Sequence[str] = ("source A", "source B"),
        artifact_path: str = "samples",
        file_prefix: str = "val_samples",
        name: str | None = "SampleFigure",
    ) -> None:
        self.output_dir = Path(output_dir)
        self.num_samples = int(num_samples)
        self.output_transform = output_transform
        self.source_names = tuple(source_names)
        self.artifact_path, self.file_prefix = artifact_path, file_prefix
        self.logger = logging.getLogger(name)
        self._rows: list[tuple[np.ndarray, np.ndarray]] = []
        self.last_path: Path | None = None

    def attach(self, engine: Engine) -> None:
        """Register on ``STARTED``, ``ITERATION_COMPLETED`` and ``COMPLETED``."""
        engine.add_event_handler(Events.STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.COMPLETED, self.write)

    def reset(self, engine: Engine | None = None) -> None:
        self._rows = []

    def collect(self, engine: Engine) -> None:
        if len(self._rows) >= self.num_samples:
            return
        pred, src = self.output_transform(engine.state.output)
        pred = torch.as_tensor(pred).detach().float().clamp(0, 1).cpu().numpy()
        src = torch.as_tensor(src).detach().float().cpu().numpy()
        for i in range(min(len(pred), self.num_samples - len(self._rows))):
            self._rows.append((src[i], pred[i, 0]))

    def render(self) -> bytes:
        """The PNG bytes of the current grid."""
        from matplotlib.figure import Figure  # no pyplot: no global state, no display needed

        n = len(self._rows)
        cols = len(self._rows[0][0]) + 1
        fig = Figure(figsize=(2.2 * cols, 2.2 * n), dpi=100)
        axes = fig.subplots(n, cols, squeeze=False)
        titles = [*self.source_names[: cols - 1], "fused"]
        for r, (src, fused) in enumerate(self._rows):
            for c, img in enumerate([*src, fused]):
                ax = axes[r][c]
                ax.imshow(img, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if r == 0:
                    ax.set_title(titles[c], fontsize=9)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        return buf.getvalue()

    def write(self, engine: Engine) -> None:
        if not self._rows:
            return
        path = self.output_dir / f"{self.file_prefix}_epoch{int(engine.state.epoch):03d}.png"
        atomic_write_bytes(path, self.render())
        self.last_path = path
        self.logger.info(f"sample fusions written to {path}")
        run = find_mlflow_run(engine)
        if run is not None:
            run.log_artifact(path, self.artifact_path)


class RunInfoHandler:
    """Record what a training run is: hyperparameters, data fingerprint, device; at the end, the best model.

    At the first epoch start (after every ``STARTED`` handler, so MLflow's run exists) it logs to
    the console and as MLflow parameters: ``params``, ``datalist_sha256`` (SHA-256 of the
    datalist file) and :func:`pipeline.tracking.device_info`; it uploads the executed config (the
    newest ``config_*.json`` that ``--tracking`` wrote into ``output_dir``) unless MONAI's handler
    already has a valid path for it. On completion it uploads ``best_checkpoint`` under
    ``checkpoints/`` and, with ``log_model``, logs the network of ``best_checkpoint`` (the engine's
    own when there is none) as an MLflow model named ``model_name``
    (:func:`pipeline.tracking.log_fusion_model`), its input example a corner of the last training
    batch, registered under ``register_model`` when given: the run then holds a model a team can
    promote and load by name.

    Args:
        params: hyperparameters to record (config ids -> values).
        datalist: the datalist file (fingerprinted), or ``None``.
        device: the training device.
        amp: whether mixed precision is on.
        output_dir: where the executed config is looked for.
        best_checkpoint: file to upload when training completes.
        log_model: log the trained network as an MLflow model when training completes.
        register_model: register that model under this name (a new version each training), or
            ``None``.
        model_name: the logged model's name.
        example_size: height and width of the input example (cut from the last batch).
        name: logger name.
    """

    def __init__(
        self,
        params: Mapping[str, Any],
        datalist: str | os.PathLike | None = None,
        device: torch.device | str = "cpu",
        amp: bool = False,
        output_dir: str | os.PathLike | None = None,
        best_checkpoint: str | os.PathLike | None = None,
        log_model: bool = False,
        register_model: str | None = None,
        model_name: str = "ssim_fusion",
        example_size: int = 32,
        name: str | None = "RunInfo",
    ) -> None:
        self.params = dict(params)
        self.datalist = datalist
        self.device, self.amp = device, bool(amp)
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.best_checkpoint = Path(best_checkpoint) if best_checkpoint is not None else None
        self.log_model, self.register_model = bool(log_model), register_model or None
        self.model_name, self.example_size = model_name, int(example_size)
        self.model_info: Any = None  #: MLflow's ModelInfo of the logged model
        self.logger = logging.getLogger(name)
        self._run: MLflowRun | None = None
        self._done = False
        self.logged: dict[str, str] = {}  #: everything recorded, as strings

    def attach(self, engine: Engine) -> None:
        """Register on ``EPOCH_STARTED`` (first one only) and ``COMPLETED``."""
        engine.add_event_handler(Events.EPOCH_STARTED, self.started)
        engine.add_event_handler(Events.COMPLETED, self.completed)

    def collect(self) -> dict[str, str]:
        """The parameters as strings (hyperparameters, datalist fingerprint, device)."""
        info = {k: (",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v))
                for k, v in self.params.items()}
        if self.datalist is not None:
            info["datalist"] = str(self.datalist)
            info["datalist_sha256"] = file_sha256(self.datalist)
        info.update(device_info(self.device, self.amp))
        return info

    def started(self, engine: Engine) -> None:
        if self._done:
            return
        self._done = True
        self.logged = self.collect()
        self.logger.info("run parameters: " + ", ".join(f"{k}={v}" for k, v in self.logged.items()))
        self._run = find_mlflow_run(engine)
        if self._run is None:
            return
        log_params_once(self._run, self.logged)
        config = self._executed_config()
        if config is not None:
            self._run.log_artifact(config, "config")

    def _executed_config(self) -> Path | None:
        handler = self._run.handler if self._run is not None else None
        uploaded = getattr(handler, "artifacts", ()) if handler is not None else ()
        if any(a and os.path.isfile(str(a)) for a in uploaded):
            return None  # MONAI's handler uploads it at the end
        if self.output_dir is None or not self.output_dir.is_dir():
            return None
        found = sorted(self.output_dir.glob("config_*.json"), key=lambda p: p.stat().st_mtime)
        return found[-1] if found else None

    def completed(self, engine: Engine) -> None:
        if self._run is None or self.best_checkpoint is None:
            return
        if self.best_checkpoint.is_file():
            self._run.log_artifact(self.best_checkpoint, "checkpoints")
            self.logger.info(f"best checkpoint {self.best_checkpoint} logged to MLflow run "
                             f"{self._run.run_id}")
        else:
            self.logger.warning(f"no best checkpoint at {self.best_checkpoint}; nothing uploaded")
        if self.log_model:
            self._log_model(engine)

    def _log_model(self, engine: Engine) -> None:
        """Log the best model (or the engine's network) as an MLflow model of the run."""
        from pipeline.checkpoint import load_fusion_network
        from pipeline.distributed import unwrap

        if self.best_checkpoint is not None and self.best_checkpoint.is_file():
            network = load_fusion_network(self.best_checkpoint, device="cpu")
            source = str(self.best_checkpoint)
        else:
            import copy

            network = copy.deepcopy(unwrap(engine.network)).cpu().eval()  # type: ignore[attr-defined]
            source = "the final network"
        batch = getattr(engine.state, "batch", None)
        image = batch.get("image") if isinstance(batch, Mapping) else None
        n = self.example_size
        if isinstance(image, torch.Tensor) and image.ndim == 4:
            example = torch.as_tensor(image[:1, :, :n, :n]).detach().float().cpu()
        else:
            example = torch.full((1, 2, n, n), 0.5)
        assert self._run is not None
        self.model_info = log_fusion_model(self._run, network, example, name=self.model_name,
                                           registered_model_name=self.register_model,
                                           tags={"source": source})


class LossProgressBar:
    """Ignite's tqdm progress bar over the iterations of an epoch, showing the current loss.

    Args:
        persist: keep the finished bar on screen.
        loss_key: key of the loss in the engine output.
    """

    def __init__(self, persist: bool = False, loss_key: str = "loss") -> None:
        self.persist, self.loss_key = persist, loss_key

    def _loss(self, output: Any) -> dict[str, float]:
        if isinstance(output, Sequence) and output and isinstance(output[0], Mapping):
            output = output[0]
        value = output.get(self.loss_key) if isinstance(output, Mapping) else output
        return {"loss": float(value)} if value is not None else {}

    def attach(self, engine: Engine) -> None:
        from ignite.handlers import ProgressBar

        ProgressBar(persist=self.persist).attach(engine, output_transform=self._loss)


class ValidationProgress:
    """The console's view of a validation: a line when it starts, a bar over its batches, its duration.

    A validation scores every pair with the reference metrics and can take longer than a training
    epoch; without this the console says nothing from the last training iteration to the metrics line.

    Args:
        progress_bar: show Ignite's tqdm bar over the validation batches (``progress_bar`` in train.yaml).
        name: logger name.
    """

    def __init__(self, progress_bar: bool = True, name: str = "Validation") -> None:
        self.progress_bar = progress_bar
        self.logger = logging.getLogger(name)
        self._started = 0.0

    def attach(self, engine: Engine) -> None:
        """Log at the start and the end of each run of ``engine`` (the evaluator).

        Args:
            engine: the validation engine.
        """
        engine.add_event_handler(Events.STARTED, self._start)
        engine.add_event_handler(Events.COMPLETED, self._done)
        if self.progress_bar:
            from ignite.handlers import ProgressBar

            ProgressBar(persist=False, desc="validation").attach(engine)

    def _epoch(self, engine: Engine) -> str:
        """The training epoch this validation follows, as text ("" when unknown).

        MONAI's ``Evaluator.run(global_epoch)`` sets the evaluator's ``max_epochs`` to the trainer's
        epoch; a plain Ignite engine has no such epoch.
        """
        from_monai = type(engine).__module__.startswith("monai.engines")
        epoch = getattr(engine.state, "max_epochs", None) if from_monai else None
        return f" after epoch {epoch}" if epoch else ""

    def _start(self, engine: Engine) -> None:
        import time

        self._started = time.perf_counter()
        batches = getattr(engine.state, "epoch_length", None)
        self.logger.info(f"validation{self._epoch(engine)}: {batches} batches")

    def _done(self, engine: Engine) -> None:
        import time

        seconds = time.perf_counter() - self._started
        self.logger.info(f"validation{self._epoch(engine)} done in {seconds:.1f} s")
