"""The bundle's shipped networks: one per pair type, listed in models/models.json; they load, the
TorchScript export computes the same function, a black input stays black, and on each pair type's
held-out atlas cases they reproduce the model card's figures (real data; skipped without it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, shared_path
from pipeline.checkpoint import load_fusion_network
from pipeline.model_index import checkpoint_for, read_index
from pipeline.networks import DEFAULT_WIDTHS
from tolerances import float32_network_atol

MODELS = REPO / "bundles" / "ssim_fusion" / "models"
PAIR_TYPES = ("CT-MRI", "PET-MRI", "SPECT-MRI")
# the split of the model card ("Data and split"): by case, the same cases for every pair type
CASES = {"training": ["2", "28", "32", "33", "37", "25", "3", "4", "10", "11", "21", "29", "40"],
         "validation": ["20", "41", "18", "35"], "test": ["34", "30", "15", "22"]}
# model card, "Test results": means over the test pairs of `python -m pipeline benchmark --methods cnn`
# without --checkpoint (each pair type's shipped network), the project's metrics (FMI_pixel as fmi.m
# computes it) and CDDFuse's evaluator columns (--convention cddfuse)
CARD = {
    "CT-MRI": {"Q_Y": 0.8688, "FMI_pixel": 0.6599, "Q_ABF": 0.6002, "Qabf": 0.6002, "VIF": 0.4853},
    "PET-MRI": {"Q_Y": 0.9621, "FMI_pixel": 0.6389, "Q_ABF": 0.7734, "Qabf": 0.7734, "VIF": 0.8333},
    "SPECT-MRI": {"Q_Y": 0.9802, "FMI_pixel": 0.7324, "Q_ABF": 0.7820, "Qabf": 0.7820, "VIF": 0.9146},
}


def test_the_index_names_a_network_for_every_pair_type() -> None:
    index = read_index(MODELS)
    assert set(index["pairs"]) == set(PAIR_TYPES)
    assert (MODELS / index["default"]).is_file()
    for pair in PAIR_TYPES:
        assert checkpoint_for(pair, MODELS).is_file(), pair


def test_shipped_weights_load_and_torchscript_export_agrees() -> None:
    # model.pt, the default for other pairs and what MONAI's commands export, is the CT-MRI network
    default, ct = (torch.load(MODELS / f, weights_only=True) for f in ("model.pt", "model_ct-mri.pt"))
    assert default.keys() == ct.keys() and all(torch.equal(default[k], ct[k]) for k in default)
    net = load_fusion_network(MODELS / "model.pt", device="cpu")
    assert tuple(net.widths) == tuple(DEFAULT_WIDTHS)
    scripted = torch.jit.load(str(MODELS / "model.ts"), map_location="cpu").eval()
    x = torch.rand(2, 2, 48, 40, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x), atol=float32_network_atol(net, x), rtol=0)


@pytest.mark.parametrize("pair", PAIR_TYPES)
def test_a_black_input_stays_black(pair: str) -> None:
    net = load_fusion_network(checkpoint_for(pair, MODELS), device="cpu")
    with torch.no_grad():
        # inside, an empty background is black once clipped; within the receptive field of the
        # image border, zero padding of the hidden layers shifts it (measured: 0, 0 and 5.9 gray
        # levels at most for the CT-, PET- and SPECT-MRI networks)
        black = net(torch.zeros(1, 2, 32, 32)).clamp(0, 1)[0, 0] * 255
    assert float(black[6:-6, 6:-6].max()) < 0.5
    assert float(black.max()) < 8.0


@pytest.fixture(scope="module")
def test_splits(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict]]:
    """Each pair type's test split, prepared from the atlas as the model card's command does."""
    from data_prep.cli import main as data_prep
    from pipeline.training import load_split

    src = shared_path("harvard")
    out = tmp_path_factory.mktemp("harvard")
    args = ["harvard", str(src), str(out / "all")]
    for split, cases in CASES.items():
        args += [f"--{split}-cases", *cases]
    assert data_prep(args) == 0
    test = load_split(out / "all" / "datalist.json", "test")
    return {pair: [e for e in test if e["pair"] == pair] for pair in PAIR_TYPES}


@pytest.mark.slow
@pytest.mark.parametrize("pair", PAIR_TYPES)
def test_shipped_network_reproduces_the_model_card(pair: str, test_splits: dict, tmp_path: Path) -> None:
    from pipeline.scoring import score_entry

    entries = test_splits[pair]
    assert len(entries) == {"CT-MRI": 21, "PET-MRI": 82, "SPECT-MRI": 36}[pair]
    own = ["Q_Y", "FMI_pixel", "Q_ABF"]
    rows_own, rows_cdd = [], []
    for entry in entries:  # the benchmark's own unit of work: the same PNG bytes, the same scores
        rows_own += score_entry(entry, ["cnn"], {"cnn": {"device": "cpu"}}, str(tmp_path / "p"), "ycbcr", True,
                                own, {"colour": "y"})[0]
        rows_cdd += score_entry(entry, ["cnn"], {"cnn": {"device": "cpu"}}, str(tmp_path / "c"), "ycbcr", True,
                                ["Qabf", "VIF"], {"convention": "cddfuse"})[0]
    means = {m: float(np.mean([r[m] for r in rows_own])) for m in own}
    means.update({m: float(np.mean([r[m] for r in rows_cdd])) for m in ("Qabf", "VIF")})
    for name, expected in CARD[pair].items():
        # the card's 4 decimals; float32 round-off can move a pixel across an 8-bit rounding edge,
        # which changes a mean over the pairs by ~1e-5
        assert means[name] == pytest.approx(expected, abs=1e-3), name
