"""FusionNet: layer layout, shapes, initialisation statistics, batch-norm folding, state-dict checks."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pipeline.networks import (
    DEFAULT_WIDTHS,
    INIT_STD,
    KERNEL_SIZES,
    FusionNet,
    conv_flops,
    fold_batch_norm,
    inference_network,
    widths_from_state_dict,
)
from tolerances import float32_network_atol


def _convs(net: nn.Module) -> list[nn.Conv2d]:
    return [m for m in net.modules() if isinstance(m, nn.Conv2d)]


def test_layout_matches_the_thesis() -> None:
    net = FusionNet()
    convs = _convs(net)
    assert [c.kernel_size for c in convs] == [(k, k) for k in KERNEL_SIZES]
    assert KERNEL_SIZES == (5, 5, 3, 3, 1)
    assert all(c.stride == (1, 1) for c in convs)
    assert [c.out_channels for c in convs] == [*DEFAULT_WIDTHS, 1] and convs[0].in_channels == 2
    kinds = [type(m).__name__ for m in net.layers]
    assert kinds == ["Conv2d", "BatchNorm2d", "LeakyReLU"] * 4 + ["Conv2d", "Tanh"]


@pytest.mark.parametrize("shape", [(2, 2, 37, 41), (1, 2, 64, 64), (3, 2, 5, 5)])
def test_same_size_output_in_tanh_range(shape: tuple[int, ...]) -> None:
    net = FusionNet(widths=(4, 6, 6, 4)).eval()
    x = torch.rand(*shape)
    y = net(x)
    assert y.shape == (shape[0], 1, *shape[2:])
    assert bool((y.abs() < 1).all())


def test_truncated_normal_init_and_zero_biases() -> None:
    torch.manual_seed(0)
    net = FusionNet(widths=(64, 64, 64, 64))
    for conv in _convs(net):
        w = conv.weight.detach()
        assert float(w.abs().max()) <= 2 * INIT_STD + 1e-12
        assert torch.count_nonzero(conv.bias) == 0
    # N(0, s) cut at +-2s has standard deviation s * sqrt(1 - 2*2*phi(2) / (2*Phi(2) - 1)) = 0.8796 s
    phi2 = math.exp(-2) / math.sqrt(2 * math.pi)
    big_phi2 = 0.5 * (1 + math.erf(2 / math.sqrt(2)))
    expected = INIT_STD * math.sqrt(1 - 4 * phi2 / (2 * big_phi2 - 1))
    w = _convs(net)[1].weight.detach()  # 64*64*25 = 102400 samples
    # the sample standard deviation of N draws has a relative spread of ~1/sqrt(2N) = 0.0022: 9 of them
    assert float(w.std()) == pytest.approx(expected, rel=0.02)
    assert abs(float(w.mean())) < 0.02 * INIT_STD
    for bn in (m for m in net.modules() if isinstance(m, nn.BatchNorm2d)):
        assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)


def test_bad_widths() -> None:
    with pytest.raises(ValueError, match="four positive"):
        FusionNet(widths=(8, 8, 8))
    with pytest.raises(ValueError, match="four positive"):
        FusionNet(widths=(8, 0, 8, 8))


def _trained_like(widths: tuple[int, ...] = (6, 8, 8, 6), seed: int = 1) -> FusionNet:
    """A FusionNet with non-trivial weights and batch-norm statistics, as after training."""
    torch.manual_seed(seed)
    net = FusionNet(widths=widths)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
        elif isinstance(m, nn.Conv2d):
            m.weight.data.normal_(0, 0.3)
            m.bias.data.uniform_(-0.1, 0.1)
    return net.eval()


def test_fold_batch_norm_equals_eval_network() -> None:
    net = _trained_like()  # non-trivial weights, biases and statistics, as after training
    folded = fold_batch_norm(net)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.rand(2, 2, 20, 24)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), net(x), atol=float32_network_atol(net, x), rtol=0)
    assert any(isinstance(m, nn.BatchNorm2d) for m in net.modules())  # the original is untouched


def test_fold_batch_norm_of_a_training_mode_net_uses_running_statistics() -> None:
    net = _trained_like().train()
    folded = fold_batch_norm(net)
    assert net.training  # the input keeps its mode
    assert not any(p.requires_grad for p in folded.parameters())
    x = torch.rand(3, 2, 17, 19)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), net.eval()(x), atol=float32_network_atol(net, x), rtol=0)


@pytest.mark.parametrize("channels_last", [True, False])
def test_inference_network_equals_eager(channels_last: bool) -> None:
    net = _trained_like(widths=(8, 12, 12, 8), seed=3)
    fast = inference_network(net, channels_last=channels_last)
    x = torch.rand(4, 2, 64, 64)
    with torch.no_grad():
        expected = net(x)
    with torch.inference_mode():
        got = fast(x)
    assert got.shape == expected.shape and got.is_contiguous()
    assert float(expected.std()) > 0.05  # the weights do something
    # folding and the memory layout change the float32 summation order: round-off only
    torch.testing.assert_close(got, expected, atol=float32_network_atol(net, x), rtol=0)
    with torch.inference_mode():  # batching does not change a pair's result
        torch.testing.assert_close(fast(x[2:3]), got[2:3], atol=float32_network_atol(net, x[2:3]), rtol=0)
    conv_params = [m.weight for m in fast.modules() if isinstance(m, nn.Conv2d)]
    assert len(conv_params) == 5
    if channels_last:
        assert all(w.is_contiguous(memory_format=torch.channels_last) for w in conv_params if w.shape[-1] > 1)


def test_inference_network_keeps_other_modules() -> None:
    other = nn.Conv2d(2, 1, 3, padding=1)
    fast = inference_network(other)
    x = torch.rand(1, 2, 8, 8)
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), other(x).detach())


def test_conv_flops() -> None:
    # 2 * (2*16*25 + 16*32*25 + 32*32*9 + 32*16*9 + 16*1*1) per pixel
    assert conv_flops((16, 32, 32, 16), 1, 1) == 2 * (800 + 12800 + 9216 + 4608 + 16) == 54880
    assert conv_flops((16, 32, 32, 16), 256, 256) == 54880 * 65536
    x = torch.rand(1, 2, 5, 7)  # against the MAC count of the layers themselves
    net = FusionNet(widths=(3, 4, 5, 6))
    macs = sum(m.weight.numel() * 5 * 7 for m in net.modules() if isinstance(m, nn.Conv2d))
    assert conv_flops(net.widths, 5, 7) == 2 * macs and net(x).shape == (1, 1, 5, 7)


def test_widths_from_state_dict() -> None:
    net = FusionNet(widths=(5, 7, 9, 3))
    assert widths_from_state_dict(net.state_dict()) == (5, 7, 9, 3)
    with pytest.raises(ValueError, match="missing"):
        widths_from_state_dict(nn.Linear(2, 2).state_dict())
    sd = net.state_dict()
    sd["layers.6.weight"] = torch.zeros(9, 7, 5, 5)
    with pytest.raises(ValueError, match="3x3 kernel"):
        widths_from_state_dict(sd)


def test_torchscript() -> None:
    net = FusionNet().eval()
    x = torch.rand(1, 2, 16, 16)
    assert torch.allclose(torch.jit.script(net)(x), net(x))


def test_frozen_batch_norm_trains_the_function_inference_runs() -> None:
    torch.manual_seed(0)
    net = FusionNet(widths=(4, 6, 6, 4), init_std=0.3, freeze_batch_norm=True)
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in bns:  # statistics of some earlier training
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    stats = [(bn.running_mean.clone(), bn.running_var.clone()) for bn in bns]
    x = torch.rand(3, 2, 20, 20)
    net.train()
    assert net.training and not any(bn.training for bn in bns)
    out_train = net(x)
    out_train.mean().backward()  # scale and shift still learn
    assert all(bn.weight.grad is not None and bn.weight.requires_grad for bn in bns)
    for bn, (mean, var) in zip(bns, stats):
        assert torch.equal(bn.running_mean, mean) and torch.equal(bn.running_var, var)
    with torch.no_grad():
        assert torch.equal(out_train.detach(), net.eval()(x))  # the same computation, bit for bit
        plain = FusionNet(widths=(4, 6, 6, 4))
        plain.load_state_dict(net.state_dict())  # the same state dict keys: checkpoints interchange
        assert not torch.equal(plain.train()(x), out_train.detach())  # unfrozen: batch statistics
