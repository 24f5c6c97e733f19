"""The model card's test tables: benchmark ``results.csv`` files merged into one table per pair type.

Each table has a column per method (mean +- std over the pair type's test pairs, best in bold) and,
for CDDFuse's evaluator columns (``--convention cddfuse``), the row CDDFuse publishes (its README,
MRI-CT / MRI-PET / MRI-SPECT), with the count of columns where ``cnn`` is above it. The benchmark's
``seconds`` are left out: they are timed on a quiet machine apart (``benchmarks/bench_inference.py``).

Example::

    python studies/card_tables.py runs/test/base_CT-MRI_cddfuse/results.csv runs/test/cnn_CT-MRI_cddfuse/results.csv
"""

from __future__ import annotations

import argparse
import csv
from collections import defaultdict

import numpy as np

__all__ = ["CDDFUSE_PUBLISHED", "LOWER_IS_BETTER", "table", "main"]

#: CDDFuse's published means (its README), columns EN, SD, SF, MI, SCD, VIF, Qabf, SSIM.
CDDFUSE_PUBLISHED = {
    "CT-MRI": dict(zip(("EN", "SD", "SF", "MI", "SCD", "VIF", "Qabf", "SSIM"),
                       (4.88, 79.17, 38.14, 2.61, 1.41, 0.61, 0.68, 1.34))),
    "PET-MRI": dict(zip(("EN", "SD", "SF", "MI", "SCD", "VIF", "Qabf", "SSIM"),
                        (4.22, 70.74, 29.57, 2.03, 1.69, 0.71, 0.71, 1.49))),
    "SPECT-MRI": dict(zip(("EN", "SD", "SF", "MI", "SCD", "VIF", "Qabf", "SSIM"),
                          (3.90, 58.31, 20.87, 2.49, 1.35, 0.97, 0.78, 1.48))),
}
#: Columns where less is better.
LOWER_IS_BETTER = {"seconds", "Q_CV", "RMSE", "CE"}
ORDER = ("wa", "max", "gff", "lpcnn", "dwt", "lp", "cnn")


def _fmt(mean: float, std: float) -> str:
    def one(v: float) -> str:
        return f"{v:.3e}" if v != 0 and abs(v) < 1e-2 else f"{v:.4f}"
    return f"{one(mean)} +- {one(std)}"


def table(paths: list[str]) -> str:
    """One markdown table per pair type from benchmark ``results.csv`` files.

    Args:
        paths: the files (their rows are pooled; a method may come from any of them).

    Returns:
        the markdown.
    """
    rows = []
    for path in paths:
        with open(path, newline="") as fh:
            rows += list(csv.DictReader(fh))
    skip = {"method", "pair", "case", "slice"}
    out = []
    for pair in sorted({r["pair"] for r in rows}):
        values: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        metrics: list[str] = []
        for r in rows:
            if r["pair"] != pair:
                continue
            for k, v in r.items():
                if k in skip or v in ("", None):
                    continue
                if k not in metrics:
                    metrics.append(k)
                values[r["method"]][k].append(float(v))
        methods = [m for m in ORDER if m in values] + sorted(set(values) - set(ORDER))
        published = CDDFUSE_PUBLISHED.get(pair) if all(k in metrics for k in ("Qabf", "VIF")) else None
        metrics = [m for m in metrics if m != "seconds"]  # timed apart, on a quiet machine (benchmarks/)
        head = ["metric", *methods] + (["CDDFuse (published)"] if published else [])
        out += [f"**{pair}** ({len(values[methods[0]][metrics[0]])} test pairs)", "",
                "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        above = 0
        for k in metrics:
            means = {m: float(np.mean(values[m][k])) for m in methods if values[m][k]}
            best = (min if k in LOWER_IS_BETTER else max)(means.values())
            cells = []
            for m in methods:
                if not values[m][k]:
                    cells.append("")
                    continue
                cell = _fmt(means[m], float(np.std(values[m][k])))
                cells.append(f"**{cell}**" if means[m] == best else cell)
            if published:
                ref = published.get(k)
                cells.append("" if ref is None else f"{ref:g}")
                if ref is not None and "cnn" in means and means["cnn"] > ref:
                    above += 1
            out.append(f"| {k} | " + " | ".join(cells) + " |")
        if published and "cnn" in values:
            out.append(f"\ncnn above the published CDDFuse row: {above} of 8 columns.")
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", help="benchmark results.csv files")
    print(table(parser.parse_args(argv).results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
