"""Draw the README's overview picture (``docs/images/overview.png``) from the synthetic phantom.

One phantom slice (``python -m data_prep demo``), its fusion by the network that ``make demo``
trains, and its fusion by the shipped model. Only synthetic data appears in the picture (the
atlas slices are not ours to redistribute).

Usage (after ``make demo``)::

    python docs/make_overview.py --datalist runs/demo/data/datalist.json \\
        --demo-ckpt runs/demo/train/models/model.pt --out docs/images/overview.png
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np

from pipeline.baselines.cnn import CNNFuser
from pipeline.checkpoint import load_fusion_network
from pipeline.io import atomic_write_bytes, read_pair
from pipeline.training import load_split

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "bundles" / "ssim_fusion" / "models" / "model.pt"


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; see the module docstring."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datalist", required=True, help="the demo datalist (python -m data_prep demo OUT)")
    p.add_argument("--demo-ckpt", required=True, help="model.pt trained by make demo")
    p.add_argument("--shipped-ckpt", default=str(SHIPPED), help="the bundle's shipped model.pt")
    p.add_argument("--split", default="test")
    p.add_argument("--index", type=int, default=4, help="which pair of the split")
    p.add_argument("--out", default=str(REPO / "docs" / "images" / "overview.png"))
    args = p.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entry = load_split(args.datalist, args.split)[args.index]
    a, b = (x.astype(np.float32) / 255 for x in read_pair(entry["image_a"], entry["image_b"]))

    def fused(ckpt: str) -> np.ndarray:
        return CNNFuser(load_fusion_network(ckpt, device="cpu"), device="cpu").fuse(a, b)

    panels = [("CT-like source", a), ("MR-like source", b),
              ("fused: CNN trained by `make demo`", fused(args.demo_ckpt)),
              ("fused: shipped model (atlas-trained)", fused(args.shipped_ckpt))]
    fig, axes = plt.subplots(1, len(panels), figsize=(10.24, 2.9), dpi=100)
    for ax, (title, img) in zip(axes, panels):
        ax.imshow(img, cmap="gray", vmin=0, vmax=1)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(args.out, buf.getvalue())
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
