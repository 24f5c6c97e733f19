"""LP-CNN: weight conversion, patch-score averaging, pyramid rule, and VIFB's published results."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.io import loadmat, savemat
from scipy.ndimage import gaussian_filter
from scipy.signal import convolve2d

from pipeline.baselines import lpcnn
from pipeline.io import read_image
from tests.conftest import shared_path
from tolerances import float32_sum_atol


@pytest.fixture(scope="module")
def weights() -> Path:
    return shared_path("lpcnn", "cnnmodel.mat")


def _texture(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """A sharp image in [0, 1] with structure at several scales."""
    img = gaussian_filter(rng.random(shape), 1.0)
    return (img - img.min()) / (img.max() - img.min())


# --- conversion of the MATLAB weights -------------------------------------------------------------

def _kernel(column: np.ndarray, k: int) -> np.ndarray:
    """MATLAB's ``reshape(w, k, k)``: column-major."""
    return column.reshape(k, k, order="F")


def test_conversion_matches_matlab_conv2_with_rotated_kernels(
    weights: Path, rng: np.random.Generator
) -> None:
    """Torch layers equal the reference's ``conv2(x, rot90(reshape(w, k, k), 2), 'same' | 'valid')``."""
    mat = loadmat(str(weights))
    net = lpcnn.load_network(weights, "cpu")

    def check(got: np.ndarray, inputs: np.ndarray, kernels: list[np.ndarray], bias: float, mode: str) -> None:
        """``got`` (float32 torch) against the float64 reference, within the float32 round-off model."""
        expected = sum(convolve2d(x, np.rot90(k, 2), mode=mode) for x, k in zip(inputs, kernels)) + bias
        squares = sum(convolve2d(x * x, np.rot90(k * k, 2), mode=mode) for x, k in zip(inputs, kernels))
        atol = float32_sum_atol(squares + bias**2, len(kernels) * kernels[0].size + 1)
        assert np.all(np.abs(got - expected) <= atol), float(np.max(np.abs(got - expected) - atol))

    img = rng.random((20, 23))
    with torch.no_grad():
        conv1 = net.conv1(torch.from_numpy(img.astype(np.float32))[None, None])[0].double().numpy()
    for i in (0, 17, 63):
        check(conv1[i], img[None], [_kernel(mat["weights_b1_1"][:, i], 3)], mat["biases_b1_1"][i, 0], "same")

    feats = rng.random((64, 12, 13))
    with torch.no_grad():
        conv2 = net.conv2(torch.from_numpy(feats.astype(np.float32))[None])[0].double().numpy()
    for i in (0, 127):
        kernels = [_kernel(mat["weights_b1_2"][j, :, i], 3) for j in range(64)]
        check(conv2[i], feats, kernels, mat["biases_b1_2"][i, 0], "same")

    feats = rng.random((512, 10, 9))
    with torch.no_grad():
        out = net.output(torch.from_numpy(feats.astype(np.float32))[None])[0].double().numpy()
    for i in (0, 1):
        kernels = [_kernel(mat["weights_output"][j, :, i], 8) for j in range(512)]
        check(out[i], feats, kernels, 0.0, "valid")  # no bias: the reference never adds biases_output


def test_network_is_loaded_once_per_path(weights: Path) -> None:
    assert lpcnn.load_network(weights, "cpu") is lpcnn.load_network(str(weights), "cpu")


def test_missing_weights_error_names_file_and_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "nowhere" / "cnnmodel.mat"
    img = np.zeros((32, 32))
    with pytest.raises(FileNotFoundError, match=r"nowhere.*cnnmodel\.mat.*VIFB.*methods/CNN/model"):
        lpcnn.fuse(img, img, weights=missing)
    monkeypatch.setenv(lpcnn.WEIGHTS_ENV, str(missing))
    with pytest.raises(FileNotFoundError, match="nowhere"):
        lpcnn.resolve_weights_path()


def test_foreign_mat_file_is_refused(tmp_path: Path) -> None:
    bogus = tmp_path / "other.mat"
    savemat(str(bogus), {"weights_b1_1": np.zeros((9, 32), dtype=np.float32)})
    with pytest.raises(ValueError, match=r"other\.mat.*weights_b1_1.*\(9, 64\)"):
        lpcnn.load_network(bogus, "cpu")


# --- weight map ---------------------------------------------------------------------------------

def _reference_patch_average(score: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The reference's loop: add each score over its clipped 16x16 patch, divide by the counts."""
    total, count = np.zeros(shape), np.zeros(shape)
    for j in range(score.shape[0]):
        for i in range(score.shape[1]):
            total[2 * j:2 * j + 16, 2 * i:2 * i + 16] += score[j, i]
            count[2 * j:2 * j + 16, 2 * i:2 * i + 16] += 1
    return total / count


@pytest.mark.parametrize("shape", [(40, 40), (41, 37), (15, 16)])
def test_patch_scores_average_like_the_reference_loop(
    shape: tuple[int, int], rng: np.random.Generator
) -> None:
    # the network yields ceil(side / 2) - 7 scores per side
    score = rng.random(((shape[0] + 1) // 2 - 7, (shape[1] + 1) // 2 - 7))
    got = lpcnn.patch_scores_to_map(torch.from_numpy(score), shape).numpy()
    np.testing.assert_allclose(got, _reference_patch_average(score, shape), rtol=1e-12)


def test_weight_map_prefers_the_sharp_source_and_swaps(weights: Path, rng: np.random.Generator) -> None:
    sharp = _texture(rng, (64, 64))
    blurred = gaussian_filter(sharp, 2.0)
    w = lpcnn.weight_map(sharp, blurred, weights, "cpu")
    assert w.shape == (64, 64) and w.dtype == np.float64
    assert w.min() >= 0.0 and w.max() <= 1.0
    assert w.mean() > 0.99  # the map weights the first source: sharp first -> ~1
    noise_a, noise_b = rng.random((64, 64)), rng.random((64, 64))
    w_ab = lpcnn.weight_map(noise_a, noise_b, weights, "cpu")
    w_ba = lpcnn.weight_map(noise_b, noise_a, weights, "cpu")
    assert 0.0 <= w_ab.min() and w_ab.max() <= 1.0
    # the siamese net is trained, not built, to be symmetric: swapping gives 1 - map nearly
    assert np.abs(w_ab - (1.0 - w_ba)).mean() < 0.01


# --- pyramid rule and fusion --------------------------------------------------------------------

def test_local_energy_window_uses_es2_border() -> None:
    # Rockinger's es2 mirrors without repeating the edge and leaves the corners zero
    sums = lpcnn._local_sum3(np.ones((5, 6)))
    expected = np.full((5, 6), 9.0)
    expected[0, 0] = expected[0, -1] = expected[-1, 0] = expected[-1, -1] = 8.0
    np.testing.assert_array_equal(sums, expected)
    ramp = np.arange(4.0)[None, :].repeat(3, axis=0)  # mirror of column 0 is column 1
    assert lpcnn._local_sum3(ramp)[1, 0] == 3 * (1 + 0 + 1)


def test_band_fuse_averages_similar_and_selects_dissimilar(rng: np.random.Generator) -> None:
    level = rng.standard_normal((16, 16))
    weight = np.full((16, 16), 0.25)
    # similar bands (match 1 > 0.6): weighted average
    np.testing.assert_allclose(lpcnn.band_fuse(level, 0.5 * level, weight), 0.25 * level + 0.75 * 0.5 * level)
    # opposite bands (match -1): the larger local energy wins, whatever the weight
    np.testing.assert_allclose(lpcnn.band_fuse(2 * level, -level, weight), 2 * level)
    np.testing.assert_allclose(lpcnn.band_fuse(-level, 2 * level, weight), 2 * level)


def test_fusing_an_image_with_itself_returns_it(weights: Path, rng: np.random.Generator) -> None:
    img = _texture(rng, (64, 64))
    np.testing.assert_allclose(lpcnn.fuse(img, img, weights, "cpu"), img, atol=1e-12)


def test_shapes_and_dtypes(weights: Path, rng: np.random.Generator) -> None:
    a, b = _texture(rng, (45, 66)), gaussian_filter(_texture(rng, (45, 66)), 1.5)
    fused = lpcnn.fuse(a, b, weights, "cpu")
    assert fused.shape == (45, 66) and fused.dtype == np.float64
    assert 0.0 <= fused.min() and fused.max() <= 1.0
    colour = np.stack([a, b, 0.5 * a], axis=2)
    fused_rgb = lpcnn.fuse_per_channel(colour, b, weights, "cpu")
    assert fused_rgb.shape == (45, 66, 3) and fused_rgb.dtype == np.float64
    # a gray source acts as its own grayscale: the gray pair fused with itself is channel-invariant
    gray_pair = lpcnn.fuse_per_channel(a, b, weights, "cpu")
    np.testing.assert_allclose(gray_pair, np.repeat(fused[..., None], 3, axis=2), atol=1e-12)


@pytest.mark.parametrize("bad_b", [np.zeros((32, 31)), np.zeros((32, 32, 2)), np.full((32, 32), np.nan)])
def test_bad_input_is_refused(bad_b: np.ndarray) -> None:
    with pytest.raises(ValueError, match="LP-CNN"):
        lpcnn.fuse(np.zeros((32, 32)), bad_b, weights="unused.mat")


def test_too_small_image_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 15x15"):
        lpcnn.fuse(np.zeros((14, 40)), np.zeros((14, 40)), weights="unused.mat")


# --- VIFB's published results ---------------------------------------------------------------------

@pytest.mark.parametrize("name", ["fight", "kettle"])
def test_matches_vifb_golden(name: str, weights: Path, tmp_path: Path) -> None:
    """VIFB ran LP-CNN as (IR, VI), per channel, and stored the result as JPEG (MATLAB imwrite, quality 75).

    Raw comparison with the JPEG is bounded by its loss (fight's own JPEG loss is 1.57 grey levels);
    re-encoding our result the same way must give back VIFB's file pixel for pixel.
    """
    folder = shared_path("golden", "vifb")
    ir = read_image(folder / f"{name}_IR.jpg", mode="rgb") / 255.0
    vi = read_image(folder / f"{name}_VI.jpg", mode="rgb") / 255.0
    golden = read_image(folder / f"{name}_CNN.jpg", mode="rgb").astype(np.float64)
    fused = lpcnn.fuse_per_channel(ir, vi, weights, "cpu")
    ours = np.floor(fused * 255.0 + 0.5).astype(np.uint8)  # MATLAB uint8(): round half away from zero

    raw = np.abs(ours - golden)
    jpeg_path = tmp_path / "ours.jpg"
    Image.fromarray(ours).save(jpeg_path, format="JPEG", quality=75)
    reencoded = np.abs(read_image(jpeg_path, mode="rgb") - golden)
    assert reencoded.mean() < 0.05 and (reencoded == 0).mean() > 0.99
    if name == "kettle":
        assert raw.mean() < 1.5
    else:  # as close as the JPEG loss allows
        assert raw.mean() < 1.6 and (raw <= 1).mean() > 0.6
