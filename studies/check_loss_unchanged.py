"""Compare the loss of this checkout with the single-module loss of an older revision, bit for bit.

The old ``pipeline/losses.py`` (one ``second_term`` string with one ``second_weight``) is read from
git at ``--rev`` and run beside ``pipeline.losses`` (``terms={name: weight}``) on the same random
batches: loss values and input gradients for each study configuration, then a short training as the
bundle trains (Adam 5e-3, batch 8, 64x64) with the shipped loss, comparing the final weights.

    python studies/check_loss_unchanged.py [--rev c4ca1fe] [--batches 20] [--steps 200]
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

__all__ = ["CASES", "old_module", "compare", "main"]

#: name -> (old keyword arguments, new keyword arguments), the same loss.
_VAR = {"weights": "variance", "clip": True}
CASES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "shipped (var_gradwmean4)": ({**_VAR, "second_term": "gradient+wmean", "second_weight": 4.0},
                                 {**_VAR, "terms": {"gradient": 4.0, "wmean": 4.0}}),
    "thesis": ({}, {}),
    "base (clipped)": ({"clip": True}, {"clip": True}),
    "var075_gradmean4": ({**_VAR, "weight_sigma": 0.75, "second_term": "gradient+mean", "second_weight": 4.0},
                         {**_VAR, "weight_sigma": 0.75, "terms": {"gradient": 4.0, "mean": 4.0}}),
    "var_bgradfine4": ({**_VAR, "second_term": "bgradient+fine", "second_weight": 4.0},
                       {**_VAR, "terms": {"bgradient": 4.0, "fine": 4.0}}),
    "var_sgrad2": ({**_VAR, "second_term": "sgradient", "second_weight": 2.0},
                   {**_VAR, "terms": {"sgradient": 2.0}}),
    "gradmean at 3 (not a power of two)": ({"second_term": "gradient+mean", "second_weight": 3.0},
                                           {"terms": {"gradient": 3.0, "mean": 3.0}}),
}


def old_module(rev: str) -> ModuleType:
    """``pipeline/losses.py`` as it was at ``rev``, imported under another name.

    Args:
        rev: a git revision that still has the single module.

    Returns:
        the module.
    """
    text = subprocess.run(["git", "show", f"{rev}:pipeline/losses.py"], cwd=REPO, check=True,
                          capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "old_losses.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("old_losses", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def compare(old: Any, new: Any, batches: int) -> tuple[bool, float, float]:
    """Whether two losses agree bit for bit on value and gradient, and their largest relative gaps.

    Args:
        old: a loss of the old module.
        new: the same loss of this checkout.
        batches: random batches of 8 pairs, 64x64, fused values in [-0.2, 1.2].

    Returns:
        ``(identical, max relative value gap, max relative gradient gap)``.
    """
    identical, gap_v, gap_g = True, 0.0, 0.0
    for seed in range(batches):
        g = torch.Generator().manual_seed(seed)
        src = torch.rand(8, 2, 64, 64, generator=g)
        src[:, 1] = (0.6 * src[:, 0] + 0.4 * src[:, 1]) * (torch.rand(8, 1, 1, generator=g) > 0.3)
        fused = 1.4 * torch.rand(8, 1, 64, 64, generator=g) - 0.2
        f1, f2 = fused.clone().requires_grad_(), fused.clone().requires_grad_()
        v1, v2 = old(f1, src), new(f2, src)
        v1.backward()
        v2.backward()
        identical &= bool(torch.equal(v1, v2)) and bool(torch.equal(f1.grad, f2.grad))
        gap_v = max(gap_v, abs(float(v1 - v2)) / abs(float(v1)))
        gap_g = max(gap_g, float((f1.grad - f2.grad).abs().max() / f1.grad.abs().max()))
    return identical, gap_v, gap_g


def _train(loss: Any, steps: int) -> tuple[dict[str, torch.Tensor], list[float]]:
    from pipeline.networks import FusionNet

    torch.manual_seed(0)
    net = FusionNet(2, 1, (16, 32, 32, 16), init_std=0.001)
    opt = torch.optim.Adam(net.parameters(), lr=0.005)
    g = torch.Generator().manual_seed(1)
    history = []
    for _ in range(steps):
        src = torch.rand(8, 2, 64, 64, generator=g)
        src[:, 1] = 0.5 * src[:, 0] + 0.5 * src[:, 1]
        opt.zero_grad()
        value = loss(net(src), src)
        value.backward()
        opt.step()
        history.append(float(value))
    return net.state_dict(), history


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; exits 1 when the shipped loss differs in any bit."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rev", default="c4ca1fe", help="a revision with the single-module pipeline/losses.py")
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--steps", type=int, default=200)
    args = p.parse_args(argv)
    import warnings

    from pipeline.losses import SSIMAlphaLoss

    torch.set_num_threads(1)
    old = old_module(args.rev)
    ok = True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for name, (old_kw, new_kw) in CASES.items():
            same, gap_v, gap_g = compare(old.SSIMAlphaLoss(**old_kw), SSIMAlphaLoss(**new_kw), args.batches)
            print(f"{name:36s} value and gradient bit-identical over {args.batches} batches: {same}; "
                  f"largest relative gap: value {gap_v:.1e}, gradient {gap_g:.1e}")
            ok &= same or "power of two" in name
        shipped_old, shipped_new = CASES["shipped (var_gradwmean4)"]
        w1, h1 = _train(old.SSIMAlphaLoss(**shipped_old), args.steps)
        w2, h2 = _train(SSIMAlphaLoss(**shipped_new), args.steps)
    same_w = all(torch.equal(w1[k], w2[k]) for k in w1)
    print(f"{args.steps} Adam steps with the shipped loss: loss history identical {h1 == h2}, "
          f"final weights bit-identical {same_w} (loss {h1[0]:.6f} -> {h1[-1]:.6f})")
    return 0 if ok and same_w and h1 == h2 else 1


if __name__ == "__main__":
    raise SystemExit(main())
