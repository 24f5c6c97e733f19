"""Ignite wrappers: epoch means equal the per-image numpy metrics on the 8-bit images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from ignite.exceptions import NotComputableError

from pipeline.metrics import METRICS, UnknownMetricError, get_metric, get_spec
from pipeline.metrics.ignite import FusionMetric, batched_metric


def _batches(seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Two batches of (fused (N, 1, H, W), sources (N, 2, H, W)) in [0, 1] on 8-bit levels, with
    black background like a slice; fused slightly out of [0, 1] to exercise the clipping."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for n in (2, 3):
        sources = torch.randint(0, 256, (n, 2, 32, 32), generator=gen).double() / 255.0
        sources[..., :8, :] = 0.0
        fused = sources.mean(1, keepdim=True) * 1.02
        out.append((fused, sources))
    return out


def _numpy_mean(name: str, batches: list) -> float:
    metric = get_metric(name)
    values = []
    for fused, sources in batches:
        f = torch.round(fused.clamp(0, 1) * 255).numpy()
        s = torch.round(sources * 255).numpy()
        values += [metric(s[i, 0], s[i, 1], f[i, 0]) for i in range(f.shape[0])]
    return float(np.mean(values))


def _run(names: list[str], batches: list) -> dict[str, float]:
    engine = Engine(lambda engine, batch: batch)
    for name in names:
        FusionMetric(name).attach(engine, name)
    return engine.run(batches).metrics


def test_fmi_pixel_and_numpy_fallback() -> None:
    batches = _batches()
    metrics = _run(["FMI_pixel", "EN", "SCD"], batches)  # torch path; numpy per image
    for name in ("FMI_pixel", "EN", "SCD"):
        assert metrics[name] == pytest.approx(_numpy_mean(name, batches), abs=1e-12)


@pytest.mark.parametrize("name", [name for name, spec in METRICS.items() if spec.torch])
def test_torch_versions_equal_numpy(name: str) -> None:
    try:
        fn = get_spec(name).load_torch()
    except ImportError as err:
        pytest.skip(str(err))
    assert batched_metric(name).__name__ == "<lambda>"  # the torch version, not the per-image fallback
    assert callable(fn)
    batches = _batches(1)
    assert _run([name], batches)[name] == pytest.approx(_numpy_mean(name, batches), abs=1e-9)


def test_epochs_reset() -> None:
    engine = Engine(lambda engine, batch: batch)
    FusionMetric("FMI_pixel").attach(engine, "fmi")
    first = engine.run(_batches(2)).metrics["fmi"]
    second = engine.run(_batches(2)).metrics["fmi"]
    assert first == second


def test_output_transform_and_errors() -> None:
    fused, sources = _batches()[0]
    metric = FusionMetric("SD", output_transform=lambda out: (out["pred"], out["image"]))
    metric.reset()
    with pytest.raises(NotComputableError):
        metric.compute()
    metric.update(metric._output_transform({"pred": fused, "image": sources}))
    assert metric.compute() == pytest.approx(_numpy_mean("SD", [(fused, sources)]))
    with pytest.raises(ValueError, match=r"\(N, 2, H, W\)"):
        metric.update((fused, sources[:, :1]))
    with pytest.raises(UnknownMetricError):
        FusionMetric("QY")


def test_engine_output_forms() -> None:
    # The batched dict of an evaluator with decollate=False, and a decollated list of images.
    fused, sources = _batches()[0]
    expected = _numpy_mean("SD", [(fused, sources)])
    for output in ({"pred": fused, "label": sources},
                   [{"pred": f, "label": s} for f, s in zip(fused, sources)]):
        metric = FusionMetric("SD")
        metric.reset()
        metric.update(output)
        assert metric.compute() == pytest.approx(expected)


def test_batched_metric_shape() -> None:
    fused, sources = _batches()[0]
    values = batched_metric("FMI_edge")(sources[:, :1] * 255, sources[:, 1:] * 255, fused * 255)
    assert values.shape == (2,) and values.dtype == torch.float64
