"""Are CT bone and tracer uptake kept at their source intensity? Figures and numbers from a benchmark's output.

For each pair of a benchmark split, the *bright region* is where source A (CT, or the luminance Y of
PET/SPECT) is at least ``--level`` (default 0.8) of its own maximum and brighter than the MRI: the
skull and calcifications in CT, the uptake in PET/SPECT. Per method it reports, over those pixels,
the mean ratio of the fused gray level to A's (1 = kept at A's intensity, as MAX keeps it) and the
share of pixels kept at 90% of A's level or more (a hollow skull, a bright rim around a grey
interior, has a low share). Writes ``OUT/bright_regions.csv`` and, with ``--figure``, a figure of
zoomed crops (A, B and each method) around the largest bright region of one pair per pair type.

The atlas images are not ours to redistribute, so the figures stay in ``OUT`` (never committed);
the model card quotes the numbers.

Example::

    python -m pipeline benchmark --datalist data/harvard_all/datalist.json --split test \\
        --methods max,gff,cnn --out runs/bright --no-mlflow
    python studies/bright_regions.py --datalist data/harvard_all/datalist.json --split test \\
        --benchmark runs/bright --methods max,gff,cnn --figure
    # or one datalist and benchmark per pair type (the model card's):
    python studies/bright_regions.py --datalist data/{CT,PET,SPECT}-MRI/datalist.json \\
        --benchmark runs/test/base_* runs/test/cnn_* --out runs/bright --methods wa,max,gff,lp,cnn --figure
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

STUDIES = Path(__file__).resolve().parent
if str(STUDIES.parent) not in sys.path:  # this checkout's pipeline
    sys.path.insert(0, str(STUDIES.parent))

from pipeline.colour import rgb_to_ycbcr  # noqa: E402
from pipeline.datalist import load_datalist  # noqa: E402
from pipeline.io import read_image, read_pair  # noqa: E402
from pipeline.scoring import fused_name, name_parts  # noqa: E402

__all__ = ["gray", "bright_mask", "kept", "main"]


def gray(image: np.ndarray) -> np.ndarray:
    """Gray levels (0..255 float) of a gray or RGB 8-bit image: its luminance Y for colour."""
    image = np.asarray(image, dtype=np.float64)
    return rgb_to_ycbcr(image / 255.0)[..., 0] * 255.0 if image.ndim == 3 else image


def bright_mask(a: np.ndarray, b: np.ndarray, level: float = 0.8) -> np.ndarray:
    """Pixels where A is at least ``level`` of its maximum and brighter than B (gray levels)."""
    return (a >= level * a.max()) & (a > b) & (a > 0)


def kept(fused: np.ndarray, a: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """``(mean F / A, share of F >= 0.9 A)`` over ``mask`` (NaN for an empty mask)."""
    if not mask.any():
        return float("nan"), float("nan")
    ratio = fused[mask] / a[mask]
    return float(ratio.mean()), float((ratio >= 0.9).mean())


def _crop_box(mask: np.ndarray, size: int) -> tuple[slice, slice]:
    """A ``size`` x ``size`` box around the densest part of ``mask``."""
    from scipy.ndimage import uniform_filter

    density = uniform_filter(mask.astype(np.float64), size=size)
    y, x = np.unravel_index(int(np.argmax(density)), mask.shape)
    y0 = int(np.clip(y - size // 2, 0, mask.shape[0] - size))
    x0 = int(np.clip(x - size // 2, 0, mask.shape[1] - size))
    return slice(y0, y0 + size), slice(x0, x0 + size)


def main(argv: list[str] | None = None) -> int:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datalist", required=True, nargs="+", help="one or more datalists (e.g. one per pair type)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--benchmark", required=True, nargs="+",
                        help="benchmark output folders (their fused/<method>/ PNGs; the first that has a method's is used)")
    parser.add_argument("--out", default=None, help="where the CSV and figure go (default: the first benchmark folder)")
    parser.add_argument("--methods", default="max,gff,cnn")
    parser.add_argument("--level", type=float, default=0.8)
    parser.add_argument("--figure", action="store_true", help="also draw the crops figure")
    parser.add_argument("--crop", type=int, default=64, help="crop size in pixels")
    args = parser.parse_args(argv)
    methods = args.methods.split(",")
    out = Path(args.out or args.benchmark[0])
    out.mkdir(parents=True, exist_ok=True)

    def fused_path(m: str, parts: tuple, mixed: bool) -> Path:
        rel = Path("fused", m, *fused_name(parts, mixed)).with_suffix(".png")
        for folder in args.benchmark:
            if (Path(folder) / rel).is_file():
                return Path(folder) / rel
        raise FileNotFoundError(f"{rel}: in none of {args.benchmark}; run the benchmark with --methods {m}")

    rows, best = [], {}
    for datalist in args.datalist:
        entries = load_datalist(datalist)[args.split]
        mixed = len({e.get("pair", "") for e in entries}) > 1
        for i, entry in enumerate(entries):
            parts = name_parts(entry, datalist, i)
            a8, b8 = read_pair(entry["image_a"], entry["image_b"])
            a, b = gray(a8), gray(b8)
            mask = bright_mask(a, b, args.level)
            for m in methods:
                f = gray(read_image(fused_path(m, parts, mixed)))
                ratio, share = kept(f, a, mask)
                rows.append({"method": m, "pair": parts[0], "case": parts[1], "slice": parts[2],
                             "pixels": int(mask.sum()), "mean_ratio": ratio, "share_kept": share})
            if mask.sum() > best.get(parts[0], (0, None))[0]:
                best[parts[0]] = (int(mask.sum()), (mixed, parts, a8, b8, mask))
    with open(out / "bright_regions.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print("| pair | method | mean F/A | share F >= 0.9 A |\n|---|---|---|---|")
    for pair in sorted({r["pair"] for r in rows}):
        for m in methods:
            sel = [r for r in rows if r["pair"] == pair and r["method"] == m and r["pixels"] > 0]
            print(f"| {pair} | {m} | {np.mean([r['mean_ratio'] for r in sel]):.3f} | "
                  f"{np.mean([r['share_kept'] for r in sel]):.3f} |")
    if args.figure:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        pairs = sorted(best)
        cols = ["A", "B", *methods]
        fig, axes = plt.subplots(len(pairs), len(cols), figsize=(2.2 * len(cols), 2.4 * len(pairs)), squeeze=False)
        for r, pair in enumerate(pairs):
            mixed, parts, a8, b8, mask = best[pair][1]
            box = _crop_box(mask, args.crop)
            images = [a8, b8] + [read_image(fused_path(m, parts, mixed)) for m in methods]
            for c, (title, img) in enumerate(zip(cols, images)):
                ax = axes[r, c]
                crop = img[box]
                ax.imshow(crop, cmap=None if crop.ndim == 3 else "gray", vmin=0, vmax=255, interpolation="nearest")
                ax.set_title(f"{pair.split('-')[0] if title == 'A' else 'MRI' if title == 'B' else title}"
                             + (f"\n{parts[1]}_{parts[2]:03d}" if c == 0 else ""), fontsize=9)
                ax.axis("off")
        fig.tight_layout()
        fig.savefig(out / "bright_regions.png", dpi=110)
        print(f"figure: {out / 'bright_regions.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
