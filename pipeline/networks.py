"""The thesis's fusion CNN: five convolutions mapping the two stacked sources to one fused image.

Layers (stride 1, 'same' zero padding, so any image size goes through unchanged):

====  ======  ==========================  =====================
 #    kernel  channels (defaults)          after
====  ======  ==========================  =====================
 1    5x5     2 -> widths[0] (16)          BatchNorm + LeakyReLU
 2    5x5     widths[0] -> widths[1] (32)  BatchNorm + LeakyReLU
 3    3x3     widths[1] -> widths[2] (32)  BatchNorm + LeakyReLU
 4    3x3     widths[2] -> widths[3] (16)  BatchNorm + LeakyReLU
 5    1x1     widths[3] -> 1               tanh
====  ======  ==========================  =====================

The default widths (16, 32, 32, 16) are ours: small enough to train on a CPU in minutes and to
fuse a 256x256 slice in milliseconds; the thesis fixes the kernel sizes and the layer order, and
``widths`` lets a run change the capacity. Weights start from a normal distribution with standard
deviation 0.001 truncated at two standard deviations, biases at zero (the thesis's initialisation);
batch norm starts as the identity (scale 1, shift 0).

Input: ``(N, 2, H, W)`` float in [0, 1] (the library's convention). Output: ``(N, 1, H, W)`` in
(-1, 1) from ``tanh``; the fused image is the output clipped to [0, 1].
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

__all__ = [
    "FusionNet", "KERNEL_SIZES", "DEFAULT_WIDTHS", "INIT_STD", "fold_batch_norm", "widths_from_state_dict",
    "inference_network", "conv_flops",
]

#: Kernel sizes of the five convolutions, as in the thesis.
KERNEL_SIZES = (5, 5, 3, 3, 1)
#: Default output channels of the first four convolutions (the fifth has one).
DEFAULT_WIDTHS = (16, 32, 32, 16)
#: Standard deviation of the truncated-normal weight initialisation.
INIT_STD = 0.001


class FusionNet(nn.Module):
    """The five-layer fusion CNN (see the module docstring).

    Args:
        in_channels: number of stacked sources (2).
        out_channels: channels of the fused output (1).
        widths: output channels of convolutions 1-4.
        negative_slope: slope of the LeakyReLU for negative inputs.
        init_std: standard deviation of the truncated-normal initialisation (cut at +-2 std).
        freeze_batch_norm: batch norm normalises with its running statistics in training too (they
            are not updated; its scale and shift still learn). For fine-tuning a trained network: the
            function it is trained as is then the one inference runs. Normalised by each batch of
            patches instead, a network can come to depend on that batch normalisation, and run
            with the averaged statistics it shifts an empty background a few gray levels up.

    Raises:
        ValueError: ``widths`` does not hold four positive integers.
    """

    def __init__(
        self,
        in_channels: int = 2,
        out_channels: int = 1,
        widths: Sequence[int] = DEFAULT_WIDTHS,
        negative_slope: float = 0.2,
        init_std: float = INIT_STD,
        freeze_batch_norm: bool = False,
    ) -> None:
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if len(widths) != 4 or min(widths) < 1:
            raise ValueError(f"FusionNet: widths must be four positive channel counts, got {widths}")
        self.in_channels, self.out_channels, self.widths = int(in_channels), int(out_channels), widths
        self.negative_slope, self.init_std = float(negative_slope), float(init_std)
        self.freeze_batch_norm = bool(freeze_batch_norm)
        chans = (self.in_channels, *widths)
        layers: list[nn.Module] = []
        for i in range(4):
            k = KERNEL_SIZES[i]
            layers += [
                nn.Conv2d(chans[i], chans[i + 1], k, stride=1, padding=k // 2),
                nn.BatchNorm2d(chans[i + 1]),
                nn.LeakyReLU(self.negative_slope),
            ]
        layers += [nn.Conv2d(widths[-1], self.out_channels, KERNEL_SIZES[4], stride=1, padding=0), nn.Tanh()]
        self.layers = nn.Sequential(*layers)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Truncated-normal weights (std ``init_std``, cut at +-2 std), zero biases, identity batch norm."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                std = self.init_std
                nn.init.trunc_normal_(m.weight, mean=0.0, std=std, a=-2 * std, b=2 * std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                m.reset_parameters()

    def train(self, mode: bool = True) -> "FusionNet":
        """Training or evaluation mode; with ``freeze_batch_norm`` the batch norms stay in evaluation mode."""
        super().train(mode)
        if self.freeze_batch_norm:
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Fuse a batch.

        Args:
            x: ``(N, in_channels, H, W)`` float in [0, 1].

        Returns:
            ``(N, out_channels, H, W)`` in (-1, 1).
        """
        return self.layers(x)


def widths_from_state_dict(state_dict: dict[str, torch.Tensor]) -> tuple[int, ...]:
    """Read the widths of a :class:`FusionNet` state dict from its convolution weights.

    Args:
        state_dict: ``FusionNet.state_dict()`` (keys ``layers.<i>.weight``).

    Returns:
        the four widths.

    Raises:
        ValueError: the state dict is not that of a FusionNet (wrong layers, kernels or channels);
            the message says what differs.
    """
    conv_keys = [f"layers.{i}.weight" for i in (0, 3, 6, 9, 12)]
    missing = [k for k in conv_keys if k not in state_dict]
    if missing:
        raise ValueError(f"not a FusionNet checkpoint: missing {missing}")
    shapes = [tuple(state_dict[k].shape) for k in conv_keys]
    for k, shape, ks in zip(conv_keys, shapes, KERNEL_SIZES):
        if len(shape) != 4 or shape[2:] != (ks, ks):
            raise ValueError(f"not a FusionNet checkpoint: {k} has shape {shape}, "
                             f"expected a {ks}x{ks} kernel")
    for (k_prev, s_prev), (k, s) in zip(zip(conv_keys, shapes), list(zip(conv_keys, shapes))[1:]):
        if s[1] != s_prev[0]:
            raise ValueError(f"not a FusionNet checkpoint: {k} takes {s[1]} channels "
                             f"but {k_prev} gives {s_prev[0]}")
    return tuple(s[0] for s in shapes[:4])


@torch.no_grad()
def fold_batch_norm(net: FusionNet) -> nn.Sequential:
    """An inference copy with every batch norm folded into the convolution before it.

    ``y = gamma (W x + b - mean) / sqrt(var + eps) + beta`` becomes one convolution with weight
    ``W * gamma / sqrt(var + eps)`` and bias ``(b - mean) * gamma / sqrt(var + eps) + beta``; the
    result equals ``net.eval()`` up to float rounding and runs faster. The input is not changed.

    Args:
        net: a trained FusionNet.

    Returns:
        ``nn.Sequential`` of convolutions and activations (no batch norm), in eval mode.
    """
    src = copy.deepcopy(net).eval()
    out: list[nn.Module] = []
    mods = list(src.layers)
    i = 0
    while i < len(mods):
        m = mods[i]
        if isinstance(m, nn.Conv2d) and i + 1 < len(mods) and isinstance(mods[i + 1], nn.BatchNorm2d):
            bn = mods[i + 1]
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            conv = copy.deepcopy(m)
            conv.weight.copy_(m.weight * scale[:, None, None, None])
            bias = m.bias if m.bias is not None else torch.zeros_like(bn.running_mean)
            conv.bias = nn.Parameter((bias - bn.running_mean) * scale + bn.bias)
            out.append(conv)
            i += 2
        else:
            out.append(m)
            i += 1
    folded = nn.Sequential(*out).eval()
    folded.requires_grad_(False)  # an inference copy: no optimiser should ever see these
    return folded


def inference_network(net: nn.Module, channels_last: bool = True) -> nn.Module:
    """The fastest measured inference form of a network: batch norm folded, channels-last weights.

    ``benchmarks/bench_inference.py`` measures the alternatives (eager, ``inference_mode``,
    folding, memory layouts, TorchScript freezing, ``torch.compile``); folding plus the
    channels-last layout is the fastest that needs no compiler and no warm-up, and gives the
    eager network's output up to float rounding. Call the result under ``torch.inference_mode()``.

    Args:
        net: a FusionNet (folded), or any other module (kept as it is, in eval mode).
        channels_last: store convolution weights channels-last (oneDNN's preferred layout on CPU);
            inputs are converted on entry by the module itself.

    Returns:
        an eval-mode module mapping ``(N, C, H, W)`` to the network's output.
    """
    module = fold_batch_norm(net) if isinstance(net, FusionNet) else copy.deepcopy(net).eval()
    if channels_last:
        module = _ChannelsLast(module.to(memory_format=torch.channels_last))
    return module.eval()


class _ChannelsLast(nn.Module):
    """Run ``module`` on a channels-last copy of the input; return a contiguous output."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x.contiguous(memory_format=torch.channels_last)).contiguous()


def conv_flops(widths: Sequence[int], height: int, width: int, in_channels: int = 2,
               out_channels: int = 1) -> int:
    """Floating-point operations of the convolutions of one FusionNet forward pass on one image.

    Counts ``2 * Cin * Cout * k * k * H * W`` per layer (a multiply and an add per weight and
    output pixel; 'same' padding keeps ``H x W``); bias, batch norm and activations are left out.

    Args:
        widths: the four widths.
        height: image height.
        width: image width.
        in_channels: stacked sources.
        out_channels: fused channels.

    Returns:
        the FLOP count.
    """
    chans = (int(in_channels), *(int(w) for w in widths), int(out_channels))
    return sum(2 * cin * cout * k * k * height * width
               for cin, cout, k in zip(chans, chans[1:], KERNEL_SIZES))
