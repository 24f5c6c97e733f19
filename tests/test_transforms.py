"""Transforms: pairing, division by 255 (no min-max), Y of colour sources, augmentation, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from monai.utils import set_determinism
from PIL import Image

from pipeline.colour import rgb_to_ycbcr, ycbcr_to_rgb
from pipeline.io import ImageReadError
from pipeline.transforms import LoadFusionPaird, fusion_transforms, to_luminance


def _save(path: Path, arr: np.ndarray) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return str(path)


@pytest.fixture
def pair(tmp_path: Path, rng: np.random.Generator) -> dict:
    a = rng.integers(0, 101, (20, 24), dtype=np.uint8)  # a dark slice: max 100, must stay 100/255
    b = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)  # pseudo-colour PET
    return {"image_a": _save(tmp_path / "CT" / "x.png", a), "image_b": _save(tmp_path / "PET" / "x.png", b),
            "case": "7", "slice": 3, "raw_a": a, "raw_b": b}


def test_load_divides_by_255_and_takes_luminance(pair: dict) -> None:
    out = LoadFusionPaird()(pair)
    a, b = out["image_a"], out["image_b"]
    assert a.shape == (1, 20, 24) and b.shape == (1, 20, 24) and a.dtype == np.float32
    np.testing.assert_allclose(a[0], pair["raw_a"] / 255.0, atol=1e-7)  # no min-max normalisation
    assert float(a.max()) == pytest.approx(pair["raw_a"].max() / 255.0)
    np.testing.assert_allclose(b[0], rgb_to_ycbcr(pair["raw_b"] / 255.0)[..., 0], atol=1e-6)
    assert out["case"] == "7" and out["slice"] == 3  # other fields pass through


def test_eval_chain_stacks_a_then_b(pair: dict) -> None:
    out = fusion_transforms(train=False)(pair)
    img = out["image"]
    assert isinstance(img, torch.Tensor) and img.dtype == torch.float32 and img.shape == (2, 20, 24)
    np.testing.assert_allclose(img[0].numpy(), pair["raw_a"] / 255.0, atol=1e-7)
    np.testing.assert_allclose(img[1].numpy(), to_luminance(pair["raw_b"]), atol=1e-7)
    assert "image_a" not in out and "image_b" not in out


def test_train_chain_patches_and_flips(pair: dict) -> None:
    set_determinism(seed=0)
    tf = fusion_transforms(train=True, patch_size=16, flip_prob=1.0)
    img = tf(pair)["image"]
    assert img.shape == (2, 16, 16)
    full = fusion_transforms(train=False)(pair)["image"]
    # both flips applied (prob 1): un-flipping gives a window of the full image, same in both channels
    patch = torch.flip(img, dims=(1, 2))
    found = [(y, x) for y in range(20 - 15) for x in range(24 - 15)
             if torch.equal(full[:, y:y + 16, x:x + 16], patch)]
    assert len(found) == 1
    set_determinism(seed=None)


def test_small_images_are_padded_to_the_patch(pair: dict) -> None:
    img = fusion_transforms(train=True, patch_size=32, flip_prob=0.0)(pair)["image"]
    assert img.shape == (2, 32, 32)
    full = fusion_transforms(train=False)(pair)["image"]
    # zero padding only: the same float32 values and zeros, summed exactly in float64
    assert float(img.double().sum()) == pytest.approx(float(full.double().sum()), rel=1e-12)


def test_missing_partner(pair: dict) -> None:
    Path(pair["image_b"]).unlink()
    with pytest.raises(ImageReadError, match=r"PET/x.png: no such file.*partner"):
        LoadFusionPaird()(pair)


def test_sizes_differ(pair: dict, tmp_path: Path) -> None:
    pair["image_b"] = _save(tmp_path / "MRI" / "x.png", np.zeros((21, 24), np.uint8))
    with pytest.raises(ImageReadError, match="not registered"):
        LoadFusionPaird()(pair)


def test_corrupt_file(pair: dict) -> None:
    Path(pair["image_a"]).write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(ImageReadError, match=r"CT/x.png: cannot be decoded"):
        LoadFusionPaird()(pair)


def test_entry_without_a_source() -> None:
    with pytest.raises(KeyError, match="image_b"):
        LoadFusionPaird()({"image_a": "x.png"})
    with pytest.raises(ValueError, match="exactly two keys"):
        LoadFusionPaird(keys=("image_a",))


def test_ycbcr_round_trip(rng: np.random.Generator) -> None:
    rgb = rng.random((16, 16, 3))
    np.testing.assert_allclose(ycbcr_to_rgb(rgb_to_ycbcr(rgb)), rgb, atol=1e-9)
    gray = np.repeat(rng.random((4, 4, 1)), 3, axis=2)
    np.testing.assert_allclose(rgb_to_ycbcr(gray)[..., 1:], 0.5, atol=1e-9)
