"""Shared fixtures: where the real data lives, and small generated images."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
#: The real data (atlas pairs, golden values, LP-CNN weights) is never committed: it is read from
#: $FUSION_SHARED_DATA, or ../shared/data beside the checkout.
SHARED_DATA = Path(os.environ.get("FUSION_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_path(*parts: str) -> Path:
    """Path under the shared data, or skip the test with the reason when it is absent."""
    p = SHARED_DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"real data not found at {p}; set FUSION_SHARED_DATA to the shared data folder")
    return p


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def texture(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Three 64x64 uint8 images with structure (smoothed noise + an edge), for metric properties."""
    out = []
    for _ in range(3):
        x = rng.integers(0, 256, (64, 64)).astype(float)
        x = (x + np.roll(x, 1, 0) + np.roll(x, 1, 1)) / 3
        x[:, 32:] = np.clip(x[:, 32:] + 40, 0, 255)
        out.append(np.round(x).astype(np.uint8))
    return tuple(out)


def medical_golden() -> dict:
    """``golden/medical/values.json`` (reference MATLAB values on CT-MRI triples), or skip."""
    import json

    return json.loads(shared_path("golden", "medical", "values.json").read_text())


def medical_triple(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a, b, f) uint8 of the medical golden triple ``name``, the fused image built as its
    ``inputs`` text says: ``"wa"`` = MATLAB ``round((a + b) / 2)`` (half away from zero), ``"max"``
    = elementwise max."""
    from pipeline.io import read_image

    entry = medical_golden()["triples"][name]
    a, b = (read_image(shared_path(entry[key])) for key in ("a", "b"))
    wide_a, wide_b = a.astype(np.int64), b.astype(np.int64)
    f = (wide_a + wide_b + 1) // 2 if entry["fused"] == "wa" else np.maximum(wide_a, wide_b)
    return a, b, f.astype(np.uint8)


#: Names of the medical golden triples (fixed by the data set; listed here so that tests can be
#: parametrised without reading the data at collection time).
MEDICAL_TRIPLES = tuple(f"ctmri_{s}_{fused}" for s in ("2010", "20010", "28010") for fused in ("wa", "max"))


def assert_medical_golden(name: str, metrics: dict, abs_tol: float = 1e-4) -> None:
    """Assert ``metrics`` (golden name -> ``fn(a, b, f)``) on the medical triple ``name`` against
    the toolbox's values. The default 1e-4 is the project's bar for the reference-faithful metrics:
    the Octave values carry the reference's own round-off (summation orders, flat windows)."""
    a, b, f = medical_triple(name)
    expected = medical_golden()["triples"][name]["values"]
    for metric, fn in metrics.items():
        assert fn(a, b, f) == pytest.approx(expected[metric], abs=abs_tol), metric


def fusion_checkpoint(path: Path, widths: tuple[int, ...], seed: int = 0) -> Path:
    """Save a FusionNet state dict with non-trivial weights (an untrained net outputs ~0 everywhere).

    Args:
        path: the ``.pt`` file to write (its folder is created).
        widths: the network's widths.
        seed: the weights' seed.

    Returns:
        ``path``.
    """
    import torch

    from pipeline.networks import FusionNet

    torch.manual_seed(seed)
    net = FusionNet(widths=widths)
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.weight.data.normal_(0, 0.3)
            m.bias.data.fill_(0.05)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)
    return path
