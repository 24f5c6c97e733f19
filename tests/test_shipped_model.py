"""The bundle's shipped weights: they load, the TorchScript export computes the same function, and
on the atlas test case they reproduce the model card's figures (real data; skipped without it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, shared_path
from pipeline.baselines.cnn import CNNFuser
from pipeline.checkpoint import load_fusion_network
from pipeline.io import read_pair
from pipeline.networks import DEFAULT_WIDTHS
from pipeline.training import load_split
from tolerances import float32_network_atol

MODELS = REPO / "bundles" / "ssim_fusion" / "models"
# model card, "Test case 34": means over the 21 pairs of `python -m pipeline benchmark ... --methods cnn`
# (FMI_pixel as fmi.m computes it, the metric's default mode; the published symmetric definition
# gives 0.6535)
CARD = {"Q_Y": 0.8521, "FMI_pixel": 0.6526, "Q_ABF": 0.5887}


def test_shipped_weights_load_and_torchscript_export_agrees() -> None:
    net = load_fusion_network(MODELS / "model.pt", device="cpu")
    assert tuple(net.widths) == tuple(DEFAULT_WIDTHS)
    scripted = torch.jit.load(str(MODELS / "model.ts"), map_location="cpu").eval()
    x = torch.rand(2, 2, 48, 40, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x), atol=float32_network_atol(net, x), rtol=0)
        # an all-black input stays black once clipped (the background the study fixed); within the
        # receptive field of the image border, zero padding of the hidden layers shifts it a little
        black = net(torch.zeros(1, 2, 32, 32)).clamp(0, 1)[0, 0] * 255
        assert float(black[6:-6, 6:-6].max()) < 0.5
        assert float(black.max()) < 2.5


def test_shipped_model_reproduces_the_model_card_on_test_case_34(tmp_path: Path) -> None:
    from data_prep.cli import main as data_prep
    from pipeline.metrics import get_metric

    src = shared_path("harvard")
    assert data_prep(["harvard", str(src), str(tmp_path / "ctmri"), "--pairs", "CT-MRI"]) == 0
    test = load_split(tmp_path / "ctmri" / "datalist.json", "test")
    assert {e["case"] for e in test} == {"34"} and len(test) == 21
    fuser = CNNFuser(load_fusion_network(MODELS / "model.pt", device="cpu"), device="cpu")
    scores: dict[str, list[float]] = {m: [] for m in CARD}
    for entry in test:
        a, b = read_pair(entry["image_a"], entry["image_b"])
        fused = fuser.fuse_gray(a.astype(np.float32) / 255, b.astype(np.float32) / 255)
        f8 = np.clip(np.rint(fused * 255.0), 0, 255).astype(np.uint8)  # as write_png stores it
        for name in CARD:
            scores[name].append(get_metric(name)(a, b, f8))
    for name, expected in CARD.items():
        # the card's 4 decimals; float32 round-off can move a pixel across an 8-bit rounding edge,
        # which changes a mean over 21 pairs by ~1e-5
        assert np.mean(scores[name]) == pytest.approx(expected, abs=1e-3), name
