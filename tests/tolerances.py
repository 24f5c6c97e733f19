"""Tolerances of float32 computations, derived from the computation rather than one machine's output.

PyTorch picks its CPU kernels at run time (``ATEN_CPU_CAPABILITY=default|avx2|avx512``) and splits work
over threads, so a float32 convolution sums its products in an order that differs between machines.
Two evaluations of one network (eager, batch norm folded, channels-last, TorchScript, another
batch size) therefore differ by round-off whose size depends on the weights and the input, not on
a constant.

The model (after Higham & Mary, "A new approach to probabilistic rounding error analysis", SIAM J.
Sci. Comput. 41(5), 2019): each rounding is an independent error of at most ``u = 2**-24`` relative,
so a float32 sum of ``n`` products ``t_k`` of mixed sign, in any order, carries an error of standard
deviation about ``u sqrt(n) ||t||_2`` (its partial sums grow like ``||t||_2``; Higham and Mary's
order-independent bound uses ``||t||_1`` and is up to ``sqrt(n)`` times looser, too loose to see a
wrong folding). :func:`float32_network_atol` draws such errors at every layer of the network,
evaluated in float64 on the same weights, propagates them through the network's own weights (so
that the cancellations batch norm creates count as they are), and returns ``lam`` standard
deviations of the output error of two independent evaluations, the largest over the output.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["U32", "LAMBDA", "float32_network_atol", "float32_sum_atol"]

#: Unit round-off of float32.
U32 = 2.0**-24
#: Standard deviations allowed: a Gaussian exceeds 6 sigma with probability 2e-9 per value.
LAMBDA = 6.0
# Roundings of a batch norm on its own (scale, shift, multiply-add) or folded into the convolution
# before it (the folded weight and bias are rounded too): at most 8.
_BN_ROUNDINGS = 8
# Accuracy of a vectorised float32 tanh (SLEEF and the libm fallbacks are within 4 ulp; ulp <= 2u on
# (-1, 1)), as an absolute error.
_TANH_ERROR = 8 * U32


def float32_sum_atol(sum_of_squares: np.ndarray, n: int, lam: float = LAMBDA) -> np.ndarray:
    """Tolerance of float32 sums of ``n`` products against their float64 value, per output.

    Args:
        sum_of_squares: ``sum_k t_k**2`` of each output's products (e.g. ``convolve2d(x**2, w**2)``).
        n: products per output.
        lam: standard deviations allowed.

    Returns:
        ``lam u (sqrt(n) + 1) ||t||_2``: the sum's round-off (the model above) plus that of rounding
        the inputs to float32 (``u |x_k|`` each, carried with the weights).
    """
    return lam * U32 * (n**0.5 + 1.0) * np.sqrt(sum_of_squares)


def _layers(net: nn.Module) -> list[nn.Module]:
    return list(getattr(net, "layers", net))


@torch.no_grad()
def _forward64(layers: list[nn.Module], x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """The network in float64; with a generator, with a float32 rounding error drawn at each step."""

    def noise(like: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
        if generator is None:
            return torch.zeros_like(like)
        return torch.randn(like.shape, generator=generator, dtype=like.dtype) * scale

    h = x.double()
    for m in layers:
        if isinstance(m, nn.Conv2d):
            w = m.weight.double()
            b = None if m.bias is None else m.bias.double()
            y = F.conv2d(h, w, b, padding=m.padding)
            norm = F.conv2d(h * h, w * w, None if b is None else b * b, padding=m.padding).sqrt()
            h = y + noise(y, U32 * (w[0].numel() + 1) ** 0.5 * norm)
        elif isinstance(m, nn.BatchNorm2d):
            if m.training:
                raise ValueError("float32_network_atol needs batch norm in eval mode")
            s = (m.weight.double() / torch.sqrt(m.running_var.double() + m.eps))[:, None, None]
            mean, beta = m.running_mean.double()[:, None, None], m.bias.double()[:, None, None]
            z = (h - mean) * s + beta
            h = z + noise(z, U32 * _BN_ROUNDINGS**0.5 * (s.abs() * (h.abs() + mean.abs()) + beta.abs()))
        elif isinstance(m, nn.LeakyReLU):
            h = F.leaky_relu(h, m.negative_slope)
            h = h + noise(h, U32 * h.abs())
        elif isinstance(m, nn.Tanh):
            h = torch.tanh(h)
            h = h + noise(h, _TANH_ERROR)
        else:
            raise TypeError(f"float32_network_atol: unsupported layer {type(m).__name__}")
    return h


def float32_network_atol(net: nn.Module, x: torch.Tensor, samples: int = 8, lam: float = LAMBDA) -> float:
    """Absolute tolerance for comparing two float32 evaluations of ``net`` on ``x``.

    Args:
        net: an eval-mode network of the FusionNet layers (``Conv2d``, ``BatchNorm2d``, ``LeakyReLU``,
            ``Tanh``, in ``net.layers`` or ``net`` itself as a ``Sequential``), float32 weights.
        x: the float32 input ``(N, C, H, W)`` both evaluations see.
        samples: Monte Carlo draws of the rounding errors (seeded: the tolerance is reproducible).
        lam: standard deviations allowed per evaluation.

    Returns:
        ``lam * sqrt(2) * max sigma``: the largest output round-off standard deviation of one
        evaluation, times ``sqrt(2)`` for the difference of two independent evaluations.
    """
    layers = _layers(net)
    exact = _forward64(layers, x, None)
    generator = torch.Generator().manual_seed(0)
    deviations = torch.stack([_forward64(layers, x, generator) - exact for _ in range(samples)])
    sigma = deviations.pow(2).mean(0).sqrt()
    return float(lam * 2.0**0.5 * sigma.max())
