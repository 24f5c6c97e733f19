"""pipeline.training: the bundle's glue (here: where a training starts from)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import fusion_checkpoint
from pipeline.io import CheckpointError
from pipeline.networks import FusionNet
from pipeline.training import initial_network


def test_initial_network_starts_from_given_weights(tmp_path: Path) -> None:
    ckpt = fusion_checkpoint(tmp_path / "model.pt", (4, 6, 6, 4), seed=3)
    state = torch.load(ckpt, weights_only=True)
    net = initial_network(FusionNet(widths=(4, 6, 6, 4)), ckpt, "cpu")
    for name, value in net.state_dict().items():
        assert torch.equal(value, state[name]), name
    fresh = FusionNet(widths=(4, 6, 6, 4))
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    kept = initial_network(fresh, None, "cpu")  # no init_weights: the initialisation as it was
    assert all(torch.equal(v, before[k]) for k, v in kept.state_dict().items())


def test_initial_network_refuses_other_widths_and_missing_files(tmp_path: Path) -> None:
    ckpt = fusion_checkpoint(tmp_path / "model.pt", (4, 6, 6, 4))
    with pytest.raises(CheckpointError, match=r"widths \[4, 6, 6, 4\].*builds \[16, 32, 32, 16\]"):
        initial_network(FusionNet(), ckpt, "cpu")
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        initial_network(FusionNet(), tmp_path / "none.pt", "cpu")
