"""``python -m pipeline fuse``: fuse one registered pair with any registered method.

Example::

    python -m pipeline fuse --method gff CT.png MRI.png fused.png --param r1=45 --param eps1=0.3
    python -m pipeline fuse --method lpcnn PET.png MRI.png out.png --colour per-channel \\
        --lpcnn-weights ../shared/data/lpcnn/cnnmodel.mat

Sources are read with :func:`pipeline.io.read_pair` (8-bit gray or RGB, divided by 255), fused with
:func:`pipeline.baselines.fuse_pair` and written as an 8-bit PNG (``round(F * 255)``).

Two volumes (NIfTI files, DICOM series folders, MHA, NRRD) are fused whole into a NIfTI volume on
A's grid (:mod:`pipeline.volume_fusion`)::

    python -m pipeline fuse --method cnn CT.nii.gz MR.nii.gz fused.nii.gz [--register] \
        [--dicom-out fused_dicom/] [--figure fused.png]
"""

from __future__ import annotations

import argparse
import inspect
import time
from collections.abc import Sequence
from typing import Any

from pipeline.baselines import COLOUR_MODES, METHODS, fuse_pair, get_method
from pipeline.io import read_pair, write_png

__all__ = ["add_arguments", "add_volume_arguments", "run", "parse_param", "method_params"]


def parse_param(text: str) -> tuple[str, Any]:
    """Parse ``NAME=VALUE`` into a name and an int, float, bool, None or string value.

    Args:
        text: e.g. ``"r1=45"``, ``"eps2=1e-6"``, ``"wavelet=db2"``.

    Returns:
        ``(name, value)``.

    Raises:
        ValueError: no ``=`` or an empty name.
    """
    name, sep, raw = text.partition("=")
    name = name.strip().replace("-", "_")
    if not sep or not name:
        raise ValueError(f"--param expects NAME=VALUE (e.g. r1=45), got {text!r}")
    raw = raw.strip()
    lowered = raw.lower()
    if lowered in ("true", "false"):
        return name, lowered == "true"
    if lowered in ("none", "null"):
        return name, None
    for cast in (int, float):
        try:
            return name, cast(raw)
        except ValueError:
            pass
    return name, raw


def method_params(method: str, params: dict[str, Any]) -> dict[str, Any]:
    """Check ``params`` against the method's ``fuse`` signature.

    Args:
        method: a registered method name.
        params: keyword parameters for it.

    Returns:
        ``params`` unchanged when every name is a parameter of the method.

    Raises:
        ValueError: a name the method does not take; the message lists the ones it does.
    """
    signature = inspect.signature(get_method(method))
    accepted = [p.name for p in list(signature.parameters.values())[2:]
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    takes_any = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    unknown = [k for k in params if k not in accepted]
    if unknown and not takes_any:
        raise ValueError(f"method {method!r} has no parameter(s) {', '.join(unknown)}; "
                         f"it takes: {', '.join(accepted) or 'none'}")
    return params


def collect_params(
    method: str, pairs: Sequence[str] | None, lpcnn_weights: str | None = None, checkpoint: str | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """The keyword parameters for ``method`` from ``--param`` options and the dedicated flags."""
    params = dict(parse_param(p) for p in (pairs or []))
    if method == "lpcnn" and lpcnn_weights:
        params.setdefault("weights", lpcnn_weights)
    if method == "cnn" and checkpoint:
        params.setdefault("checkpoint", checkpoint)
    if method in ("lpcnn", "cnn") and device:
        params.setdefault("device", device)
    return method_params(method, params)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m pipeline fuse``."""
    parser.add_argument("--method", required=True, choices=METHODS, help="fusion method")
    parser.add_argument("image_a", help="first source (a PET/SPECT colour image or a gray slice), or "
                                        "volume A (NIfTI, DICOM series folder, MHA, NRRD)")
    parser.add_argument("image_b", help="second source, registered to the first (same size), or volume B")
    parser.add_argument("output", help="fused image to write (8-bit PNG), or fused volume (.nii.gz)")
    parser.add_argument("--colour", choices=COLOUR_MODES, default="ycbcr",
                        help="colour pairs: fuse Y and keep the chroma (ycbcr, default) or fuse each RGB "
                             "channel (per-channel, as VIFB does)")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="method parameter, repeatable (gff: r1, eps1, r2, eps2; wa: weight_a, "
                             "weight_b; dwt: wavelet, levels, mode; lp: levels)")
    parser.add_argument("--lpcnn-weights", default=None, metavar="PATH",
                        help="LP-CNN cnnmodel.mat (default: $FUSION_LPCNN_WEIGHTS or ../shared/data/lpcnn)")
    parser.add_argument("--checkpoint", default=None, metavar="PATH", help="weights of the trained network (cnn)")
    parser.add_argument("--device", default=None, help="torch device for lpcnn/cnn (default: CUDA when available)")
    add_volume_arguments(parser)


def add_volume_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that apply when the two sources are volumes (``data_prep volumes``'s intensity rules)."""
    from pipeline.volumes import CT_WINDOWS, DEFAULT_PERCENTILES, parse_window

    g = parser.add_argument_group("volumes (A and B are NIfTI, DICOM series folders, MHA or NRRD)")
    g.add_argument("--modality-a", default="CT", help="modality of A (default CT; CT is windowed in HU); with "
                                                      "cnn, images too: it picks the shipped network (PET, SPECT)")
    g.add_argument("--modality-b", default="MRI", help="modality of B (default MRI; scaled by percentiles)")
    g.add_argument("--register", action="store_true",
                   help="rigid registration (Mattes mutual information) of B to A before resampling")
    g.add_argument("--window", type=parse_window, default=CT_WINDOWS["brain"],
                   help="CT window: brain (L40 W80, default), subdural, bone or L,W in HU")
    g.add_argument("--percentiles", type=float, nargs=2, default=DEFAULT_PERCENTILES, metavar=("LOW", "HIGH"),
                   help="percentiles mapped to 0 and 1 for MRI/PET/SPECT (default 0.5 99.5)")
    g.add_argument("--nan-as-zero", action="store_true",
                   help="treat NaN/Inf voxels as 0 with a warning (default: refuse the volume)")
    g.add_argument("--dicom-out", default=None, metavar="DIR",
                   help="also write the fused volume as a DICOM series")
    g.add_argument("--figure", default=None, metavar="PNG",
                   help="also draw the axial, coronal and sagittal mid-planes of A, B and the fusion")
    g.add_argument("--batch-size", type=int, default=None,
                   help="axial slices per forward pass (cnn; default 8)")
    g.add_argument("--overwrite", action="store_true", help="replace existing volume outputs")


def run(args: argparse.Namespace) -> int:
    """Fuse the pair and write the PNG; returns 0 on success."""
    params = collect_params(args.method, args.param, args.lpcnn_weights, args.checkpoint, args.device)
    from pipeline.volumes import is_volume_path

    if is_volume_path(args.image_a) or is_volume_path(args.image_b):
        from pipeline.volume_fusion import run_fuse_volumes

        return run_fuse_volumes(args, params)
    a, b = read_pair(args.image_a, args.image_b)
    if args.method == "cnn" and not params.get("checkpoint"):  # the shipped network of the pair type
        from pipeline.model_index import pair_type

        params["pair"] = pair_type(args.modality_a, args.modality_b)
    start = time.perf_counter()
    fused = fuse_pair(args.method, a / 255.0, b / 255.0, colour=args.colour, **params)
    seconds = time.perf_counter() - start
    write_png(args.output, fused)
    print(f"{args.method}: wrote {args.output} ({fused.shape[1]}x{fused.shape[0]}, {seconds:.3f} s)")
    return 0
