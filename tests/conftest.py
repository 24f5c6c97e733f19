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


def fusion_checkpoint(path: Path, widths: tuple[int, ...]) -> Path:
    """Save a FusionNet state dict with non-trivial weights (an untrained net outputs ~0 everywhere).

    Args:
        path: the ``.pt`` file to write.
        widths: the network's widths.

    Returns:
        ``path``.
    """
    import torch

    from pipeline.networks import FusionNet

    torch.manual_seed(0)
    net = FusionNet(widths=widths)
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.weight.data.normal_(0, 0.3)
            m.bias.data.fill_(0.05)
    torch.save(net.state_dict(), path)
    return path
