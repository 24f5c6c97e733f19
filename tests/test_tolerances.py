"""The float32 tolerance model (tests/tolerances.py) bounds real round-off and still sees real errors."""

from __future__ import annotations

import torch
from torch import nn

from pipeline.networks import fold_batch_norm
from test_networks import _trained_like
from tolerances import float32_network_atol


def test_atol_covers_round_off_and_sees_a_wrong_folding() -> None:
    net = _trained_like()
    x = torch.rand(2, 2, 20, 24, generator=torch.Generator().manual_seed(0))
    atol = float32_network_atol(net, x)
    assert atol == float32_network_atol(net, x)  # seeded: reproducible
    with torch.no_grad():
        exact = net.double()(x.double())
        net.float()
        error = (net(x).double() - exact).abs().max().item()
        folded = fold_batch_norm(net)
        # a folding that forgets the running mean in the bias (a real bug) changes the output by far more
        wrong = fold_batch_norm(net)
        bn, conv = net.layers[1], wrong[0]
        conv.bias.add_(bn.running_mean * bn.weight / torch.sqrt(bn.running_var + bn.eps))
        assert (folded(x) - net(x)).abs().max().item() <= atol
        assert (wrong(x) - net(x)).abs().max().item() > 10 * atol
    assert error < atol / 2 ** 0.5 and atol < 1e-3  # one evaluation's error, and a bound that means something


def test_atol_rejects_layers_it_does_not_model() -> None:
    import pytest

    with pytest.raises(TypeError, match="unsupported layer"):
        float32_network_atol(nn.Sequential(nn.Linear(2, 2)), torch.rand(1, 2))
