"""Inference: checkpoint loading and its errors, pairing folders, colour fusion, outputs, the `cnn` method."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.baselines.cnn import CNNFuser
from pipeline.checkpoint import load_fusion_network
from pipeline.colour import rgb_to_ycbcr
from pipeline.inference import datalist_pairs, run_inference
from pipeline.io import CheckpointError, ImageReadError
from pipeline.pairing import find_pairs
from conftest import fusion_checkpoint
from tolerances import float32_network_atol


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A FusionNet state dict with non-trivial weights (an untrained net outputs ~0 everywhere)."""
    return fusion_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt", (4, 6, 6, 4))


def _write(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


@pytest.fixture
def folder(tmp_path: Path, rng: np.random.Generator) -> Path:
    """DIR/MRI and DIR/SPECT with two same-named pairs; SPECT is colour."""
    for name in ("a", "b"):
        _write(tmp_path / "in" / "MRI" / f"{name}.png", rng.integers(0, 256, (30, 28), dtype=np.uint8))
        _write(tmp_path / "in" / "SPECT" / f"{name}.png", rng.integers(0, 256, (30, 28, 3), dtype=np.uint8))
    return tmp_path / "in"


def test_load_network_reads_widths(checkpoint: Path) -> None:
    net = load_fusion_network(checkpoint, device="cpu")
    assert net.widths == (4, 6, 6, 4) and not net.training
    latest = checkpoint.parent / "latest.pt"  # the resumable form {"model", "optimizer", ...}
    torch.save({"model": torch.load(checkpoint, weights_only=True), "optimizer": {}}, latest)
    assert load_fusion_network(latest, device="cpu").widths == (4, 6, 6, 4)


def test_checkpoint_errors(checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"no such checkpoint.*run training"):
        load_fusion_network(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"bad.pt: cannot be loaded"):
        load_fusion_network(bad)
    other = tmp_path / "unet.pt"
    torch.save(torch.nn.Conv2d(2, 1, 3).state_dict(), other)
    with pytest.raises(CheckpointError, match=r"unet.pt: is a checkpoint of another architecture"):
        load_fusion_network(other)
    with pytest.raises(CheckpointError, match=r"trained with widths \[4, 6, 6, 4\].*--widths"):
        load_fusion_network(checkpoint, widths=(16, 32, 32, 16))


def test_find_pairs_puts_mri_second(folder: Path) -> None:
    pairs = find_pairs(folder)
    found = [(n, a.parent.name, b.parent.name) for n, a, b in pairs]
    assert found == [("a", "SPECT", "MRI"), ("b", "SPECT", "MRI")]
    assert [a.parent.name for _, a, _ in find_pairs(folder, subdirs=("MRI", "SPECT"))] == ["MRI", "MRI"]


def test_find_pairs_errors(folder: Path) -> None:
    (folder / "SPECT" / "b.png").unlink()
    with pytest.raises(ValueError, match=r"MRI/b.png: has no partner in .*SPECT"):
        find_pairs(folder)
    (folder / "CT").mkdir()
    with pytest.raises(ValueError, match="exactly two subfolders"):
        find_pairs(folder)
    with pytest.raises(FileNotFoundError):
        find_pairs(folder / "missing")


def test_run_inference_writes_rgb_for_colour(checkpoint: Path, folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    written = run_inference(checkpoint, out, input_dir=folder, device="cpu")
    assert [p.name for p in written] == ["a.png", "b.png"]
    fuser = CNNFuser(load_fusion_network(checkpoint, device="cpu"))
    for p in written:
        with Image.open(p) as im:
            assert im.mode == "RGB" and im.size == (28, 30)
            arr = np.asarray(im)
        spect = np.asarray(Image.open(folder / "SPECT" / p.name)) / 255.0
        mri = np.asarray(Image.open(folder / "MRI" / p.name)) / 255.0
        fused = fuser.fuse(spect, mri)
        np.testing.assert_array_equal(arr, np.clip(np.rint(fused * 255), 0, 255).astype(np.uint8))
        # the chroma of the colour source is kept, the luminance is the network's
        ycc = rgb_to_ycbcr(fused)
        inside = (fused > 0.02).all(-1) & (fused < 0.98).all(-1)  # where YCbCr -> RGB was not clipped
        assert inside.sum() > 50
        y_net = fuser.fuse_gray(rgb_to_ycbcr(spect)[..., 0], mri)
        # the same network output and float64 colour conversions there and back: round-off ~1e-15
        np.testing.assert_allclose(ycc[inside, 0], y_net[inside], atol=1e-12)
        np.testing.assert_allclose(ycc[inside, 1:], rgb_to_ycbcr(spect)[inside, 1:], atol=1e-12)


def test_gray_pair_and_datalist(checkpoint: Path, tmp_path: Path, rng: np.random.Generator) -> None:
    from data_prep.datalist import SlicePair, SplitSpec, write_dataset

    def gray() -> np.ndarray:
        return rng.integers(0, 256, (16, 16), dtype=np.uint8)

    pairs = [SlicePair(gray(), gray(), "CT", "MRI", c, 1) for c in ("1", "2", "3")]
    split = SplitSpec(cases={"training": ["1"], "validation": ["2"], "test": ["3"]})
    write_dataset(pairs, tmp_path / "data", split)
    dl = tmp_path / "data" / "datalist.json"
    assert [n for n, _, _ in datalist_pairs(dl, None)] == ["CT-MRI/1_001", "CT-MRI/2_001", "CT-MRI/3_001"]
    written = run_inference(checkpoint, tmp_path / "out", datalist=dl, split="test", device="cpu")
    assert [p.relative_to(tmp_path / "out").as_posix() for p in written] == ["CT-MRI/3_001.png"]
    with Image.open(written[0]) as im:
        assert im.mode == "L" and im.size == (16, 16) and np.asarray(im).dtype == np.uint8
    with pytest.raises(ValueError, match="exactly one of"):
        run_inference(checkpoint, tmp_path / "x", device="cpu")


def test_bad_pair_writes_nothing(checkpoint: Path, folder: Path, tmp_path: Path) -> None:
    _write(folder / "MRI" / "b.png", np.zeros((31, 28), np.uint8))
    with pytest.raises(ImageReadError, match="not registered"):
        run_inference(checkpoint, tmp_path / "out", input_dir=folder, device="cpu")
    assert not (tmp_path / "out").exists()
    (folder / "MRI" / "b.png").write_bytes(b"corrupt")
    with pytest.raises(ImageReadError, match=r"MRI/b.png: cannot be decoded"):
        run_inference(checkpoint, tmp_path / "out", input_dir=folder, device="cpu")
    assert not (tmp_path / "out").exists()


def test_fuser_matches_eager_network(checkpoint: Path, rng: np.random.Generator) -> None:
    """The production path (folded, channels-last, batched) gives the eager network's output."""
    net = load_fusion_network(checkpoint, device="cpu")
    fast = CNNFuser(net, batch_size=2)
    eager = CNNFuser(net, optimise=False)
    assert fast.runner is not net and eager.runner is net
    a, b = rng.random((5, 24, 20)), rng.random((5, 24, 20))
    with torch.no_grad():  # the plain eval network, as trained
        x = torch.from_numpy(np.stack([a, b], axis=1).astype(np.float32))
        expected = net(x)[:, 0].clamp(0, 1).numpy()
    # folding, memory layout and batch size change the float32 summation order: round-off only
    atol = float32_network_atol(net, x)
    got = fast.fuse_gray_batch(a, b)  # 5 pairs in chunks of 2
    assert got.shape == (5, 24, 20) and got.dtype == np.float64
    np.testing.assert_allclose(got, expected, atol=atol)
    np.testing.assert_allclose(eager.fuse_gray_batch(a, b), expected, atol=atol)
    np.testing.assert_allclose(fast.fuse_gray(a[3], b[3]), expected[3], atol=atol)
    assert np.ptp(expected) > 0.05
    with pytest.raises(ValueError, match="batch_size"):
        CNNFuser(net, batch_size=0)


def test_fuse_many_equals_fuse(checkpoint: Path, rng: np.random.Generator) -> None:
    """Batching over pairs of mixed sizes and colour gives each pair's own result, in order."""
    fuser = CNNFuser(load_fusion_network(checkpoint, device="cpu"), batch_size=2)
    pairs = [
        (rng.random((16, 18)), rng.random((16, 18))),
        (rng.random((16, 18, 3)), rng.random((16, 18))),  # colour A
        (rng.random((20, 12)), rng.random((20, 12))),  # another size
        (rng.random((16, 18)), rng.random((16, 18, 3))),  # colour B
        (rng.random((16, 18)), rng.random((16, 18))),
    ]
    many = fuser.fuse_many(pairs)
    assert [m.shape for m in many] == [(16, 18), (16, 18, 3), (20, 12), (16, 18, 3), (16, 18)]
    for (a, b), got in zip(pairs, many):
        # batch size 2 against 1 changes the float32 summation order; the colour pairs' RGB carry the
        # luminance error with coefficient 1 (the chroma is the source's)
        luminance = [rgb_to_ycbcr(s)[..., 0] if s.ndim == 3 else s for s in (a, b)]
        x = torch.from_numpy(np.stack(luminance)[None].astype(np.float32))
        np.testing.assert_allclose(got, fuser.fuse(a, b), atol=float32_network_atol(fuser.network, x))
    assert fuser.fuse_many([]) == []


def test_cnn_method(checkpoint: Path, rng: np.random.Generator) -> None:
    from pipeline.baselines.cnn import fuse

    a, b = rng.random((20, 22)), rng.random((20, 22))
    fused = fuse(a, b, checkpoint=checkpoint, device="cpu")
    assert fused.shape == (20, 22) and fused.dtype == np.float64 and 0 <= fused.min() <= fused.max() <= 1
    ref = CNNFuser(load_fusion_network(checkpoint, device="cpu")).fuse_gray(a, b)
    np.testing.assert_allclose(fused, ref, atol=1e-7)
    assert np.ptp(fused) > 0.05  # the weights do something
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        fuse(a, b, checkpoint=checkpoint.parent / "missing.pt")
    with pytest.raises(ValueError, match="differ in size"):
        fuse(a, b[:10], checkpoint=checkpoint)


def test_inference_picks_each_pair_types_network(checkpoint: Path, folder: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch, rng: np.random.Generator) -> None:
    """Without a checkpoint, each pair is fused by the network the model index gives its pair type."""
    import json

    import pipeline.inference as inference
    from data_prep.datalist import SlicePair, SplitSpec, write_dataset

    models = tmp_path / "models"
    other = fusion_checkpoint(models / "spect.pt", (4, 6, 6, 4), seed=5)
    models.joinpath("model.pt").write_bytes(checkpoint.read_bytes())
    models.joinpath("models.json").write_text(json.dumps({"default": "model.pt", "pairs": {"SPECT-MRI": "spect.pt"}}))
    monkeypatch.setattr(inference, "checkpoint_for", lambda pair: checkpoint_for(pair, models))
    from pipeline.model_index import checkpoint_for

    by_folder = run_inference(None, tmp_path / "o1", input_dir=folder, device="cpu")
    spect_net = CNNFuser(load_fusion_network(other, device="cpu"))
    default_net = CNNFuser(load_fusion_network(checkpoint, device="cpu"))
    for p in by_folder:  # SPECT/ + MRI/ folders: the SPECT-MRI network
        spect = np.asarray(Image.open(folder / "SPECT" / p.name)) / 255.0
        mri = np.asarray(Image.open(folder / "MRI" / p.name)) / 255.0
        expected = np.clip(np.rint(spect_net.fuse(spect, mri) * 255), 0, 255).astype(np.uint8)
        np.testing.assert_array_equal(np.asarray(Image.open(p)), expected)
        assert not np.array_equal(expected, np.clip(np.rint(default_net.fuse(spect, mri) * 255), 0, 255))

    gray = lambda: rng.integers(0, 256, (16, 16), dtype=np.uint8)  # noqa: E731
    pairs = [SlicePair(gray(), gray(), "CT", "MRI", "1", 1), SlicePair(gray(), gray(), "SPECT", "MRI", "1", 2)]
    write_dataset(pairs, tmp_path / "data", SplitSpec(cases={"training": [], "validation": [], "test": ["1"]}))
    dl = tmp_path / "data" / "datalist.json"
    groups = inference.checkpoint_groups(datalist_pairs(dl, "test"), None, by_folder=False)
    assert {path.name: idx for path, idx in groups.items()} == {"model.pt": [0], "spect.pt": [1]}
    assert list(inference.checkpoint_groups(datalist_pairs(dl, "test"), checkpoint, by_folder=False)) == [checkpoint]
