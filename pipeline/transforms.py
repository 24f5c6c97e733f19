"""MONAI dictionary transforms that turn a datalist entry into the network's 2-channel input.

A datalist entry (see :mod:`pipeline.datalist`) names two registered slices, ``image_a`` and
``image_b``. :class:`LoadFusionPaird` decodes both through :func:`pipeline.io.read_pair` (the one
place that decodes files), takes the luminance Y of a colour source (PET/SPECT pseudo-colour, via
:func:`pipeline.colour.rgb_to_ycbcr`), puts the channel first and divides by 255: the values stay
as acquired, float in [0, 1], with **no** min-max normalisation, so that the network sees the
same intensity scale at training and at inference. MONAI's ``ConcatItemsd`` then stacks the two
into the 2-channel ``image``; training adds random patches and flips.

The bundle's ``train.yaml`` spells these chains out; :func:`fusion_transforms` builds the same
chains from Python.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import (
    Compose,
    ConcatItemsd,
    DeleteItemsd,
    EnsureTyped,
    MapTransform,
    RandFlipd,
    RandSpatialCropd,
    SpatialPadd,
)

from pipeline.colour import rgb_to_ycbcr
from pipeline.io import is_colour, read_pair

__all__ = ["LoadFusionPaird", "to_luminance", "fusion_transforms", "SOURCE_KEYS"]

#: Datalist keys of the two sources, in network channel order.
SOURCE_KEYS = ("image_a", "image_b")


def to_luminance(image: np.ndarray) -> np.ndarray:
    """A decoded ``uint8`` slice as float32 in [0, 1]: gray as is, colour as its Y (BT.601) channel.

    Args:
        image: ``(H, W)`` or ``(H, W, 3)`` uint8 from :func:`pipeline.io.read_image`.

    Returns:
        ``(H, W)`` float32 in [0, 1] (divided by 255, never min-max normalised).
    """
    scaled = image.astype(np.float64) / 255.0
    if is_colour(image):
        scaled = rgb_to_ycbcr(scaled)[..., 0]
    return np.clip(scaled, 0.0, 1.0).astype(np.float32)


class LoadFusionPaird(MapTransform):
    """Load the two sources of a datalist entry as channel-first float32 luminance in [0, 1].

    Replaces the paths under ``keys`` by ``(1, H, W)`` arrays; other entry fields (modalities,
    case, slice, modes) pass through unchanged. The original colour is not kept: training and
    validation use the luminance only; inference restores colour with
    :func:`pipeline.colour.fuse_with_colour`.

    Args:
        keys: the two path keys, A first (default ``("image_a", "image_b")``).
        allow_missing_keys: as in MONAI (a missing key is then skipped).

    Raises:
        pipeline.io.ImageReadError: a missing partner, a corrupt or unusable file, or two slices
            of different sizes; the message names the file and the fix.
        ValueError: ``keys`` does not name exactly two items.
    """

    def __init__(self, keys: KeysCollection = SOURCE_KEYS, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) != 2:
            raise ValueError(f"LoadFusionPaird needs exactly two keys (source A and B), got {self.keys}")

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        key_a, key_b = self.keys
        if self.allow_missing_keys and (key_a not in d or key_b not in d):
            return d
        for k in (key_a, key_b):
            if k not in d:
                raise KeyError(f"datalist entry has no {k!r} (it has {sorted(map(str, d))}); "
                               "every entry needs image_a and image_b")
        a, b = read_pair(str(d[key_a]), str(d[key_b]))
        d[key_a] = to_luminance(a)[None]
        d[key_b] = to_luminance(b)[None]
        return d


def fusion_transforms(
    train: bool,
    patch_size: int | Sequence[int] | None = 64,
    flip_prob: float = 0.5,
    keys: Sequence[str] = SOURCE_KEYS,
    image_key: str = "image",
) -> Compose:
    """The chain from a datalist entry to the 2-channel ``image`` tensor.

    Args:
        train: add the random augmentation (patches and flips).
        patch_size: side (or ``(h, w)``) of the random training patches; images smaller than a
            patch are zero-padded first. ``None`` trains on whole images. Ignored when not training.
        flip_prob: probability of a flip along each spatial axis (training only).
        keys: the two source keys.
        image_key: name of the stacked output.

    Returns:
        a MONAI ``Compose``; its output dict holds ``image_key`` as a float32 ``(2, H, W)`` tensor.
    """
    chain: list = [
        LoadFusionPaird(keys=keys),
        ConcatItemsd(keys=list(keys), name=image_key, dim=0),
        # the per-source arrays are in `image` now; dropping them lets pairs of different sizes batch
        DeleteItemsd(keys=list(keys)),
    ]
    if train:
        if patch_size is not None:
            chain += [
                SpatialPadd(keys=image_key, spatial_size=patch_size),
                RandSpatialCropd(keys=image_key, roi_size=patch_size, random_size=False),
            ]
        if flip_prob > 0:
            chain += [
                RandFlipd(keys=image_key, prob=flip_prob, spatial_axis=0),
                RandFlipd(keys=image_key, prob=flip_prob, spatial_axis=1),
            ]
    chain.append(EnsureTyped(keys=image_key, data_type="tensor", dtype=torch.float32, track_meta=False))
    return Compose(chain)
