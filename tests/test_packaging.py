"""The wheel carries the bundle and the project configuration, and the installed package finds them.

The wheel is built from a copy of the checkout's package sources in a temporary folder (the checkout
gets no ``build/`` or ``*.egg-info``). The slow tests install it into a fresh virtual environment and
run, from an empty folder (nothing of the checkout on the path), a fusion with the shipped model and
the README's commands: data_prep on both atlas layouts, a 1-epoch bundle training, the bundle's
inference, the metrics CLI, a user mistake and the offline metadata check.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import site
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
#: What a wheel is built from: the packages and the files setup.cfg reads.
SOURCES = ("setup.cfg", "pyproject.toml", "README.md", "LICENSE",
           "pipeline", "data_prep", "bundles", "configs")
#: Files of the checkout that the wheel must install, as paths inside site-packages.
PACKAGE_DATA = (
    "bundles/ssim_fusion/configs/train.yaml",
    "bundles/ssim_fusion/configs/evaluate.yaml",
    "bundles/ssim_fusion/configs/inference.yaml",
    "bundles/ssim_fusion/configs/multi_gpu_train.yaml",
    "bundles/ssim_fusion/configs/metadata.json",
    "bundles/ssim_fusion/configs/metadata_schema.json",
    "bundles/ssim_fusion/configs/logging.conf",
    "bundles/ssim_fusion/models/model.pt",
    "bundles/ssim_fusion/models/model.ts",
    "bundles/ssim_fusion/models/models.json",
    "bundles/ssim_fusion/models/model_ct-mri.pt",
    "bundles/ssim_fusion/models/model_pet-mri.pt",
    "bundles/ssim_fusion/models/model_spect-mri.pt",
    "bundles/ssim_fusion/docs/README.md",
    "bundles/ssim_fusion/LICENSE",
    "configs/atlas_series.yaml",
)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel, built without dependencies from a copy of the sources."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=ignore)
        else:
            shutil.copy2(path, src / name)
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(root / "dist"), str(src)]
    if importlib.util.find_spec("setuptools") is not None:
        cmd.insert(4, "--no-build-isolation")  # build with the setuptools at hand, offline
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (found,) = (root / "dist").glob("ssim_fusion-*.whl")
    return found


def test_wheel_holds_the_bundle_and_configs(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [p for p in PACKAGE_DATA if p not in names]
    assert not missing, f"the wheel lacks {missing}"
    # every module of the library and of data_prep is in it too
    sources = {p.relative_to(REPO).as_posix()
               for pkg in ("pipeline", "data_prep") for p in (REPO / pkg).rglob("*.py")}
    assert sources - names == set()
    assert not [n for n in names if "__pycache__" in n or n.startswith(("tests/", "benchmarks/"))]


def test_resources_point_into_the_checkout() -> None:
    from pipeline.resources import atlas_series_config, bundle_root, shipped_checkpoint

    assert bundle_root() == REPO / "bundles" / "ssim_fusion"
    assert shipped_checkpoint() == REPO / "bundles" / "ssim_fusion" / "models" / "model.pt"
    assert atlas_series_config() == REPO / "configs" / "atlas_series.yaml"


@dataclass(frozen=True)
class Installed:
    """The wheel installed into a fresh virtual environment, and a way to run its interpreter.

    Args:
        venv: the environment's folder.
        python: its interpreter.
        env: the environment variables of a run (no ``PYTHONPATH``: nothing of the checkout).
    """

    venv: Path
    python: Path
    env: dict[str, str]

    def run(self, cwd: Path, *args: str, timeout: float = 600, with_stderr: bool = False) -> str:
        """Run ``python ARGS`` of the installed environment in ``cwd``; it must succeed.

        Args:
            cwd: the working folder.
            args: the interpreter's arguments.
            timeout: seconds before the run counts as hung.
            with_stderr: return its standard error too, after the standard output.

        Returns:
            its standard output (and error).
        """
        done = subprocess.run([str(self.python), *args], cwd=cwd, env=self.env, capture_output=True,
                              text=True, timeout=timeout)
        assert done.returncode == 0, f"{args}\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
        return done.stdout + done.stderr if with_stderr else done.stdout


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """``pip install`` the wheel (no deps: they come from the test environment) into a fresh venv."""
    venv = tmp_path_factory.mktemp("installed") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    # The dependencies are those of the test environment: its site-packages, appended to the new
    # environment's by a .pth file (``--system-site-packages`` would give the base interpreter's, and a
    # path in a .pth file brings no .pth files of its own: no editable install of the checkout).
    purelib = "import sysconfig; print(sysconfig.get_path('purelib'))"
    site_dir = Path(subprocess.run([str(python), "-c", purelib],
                                   capture_output=True, text=True, check=True).stdout.strip())
    (site_dir / "test-environment.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    proc = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSAFEPATH") and not k.startswith("MLFLOW_")}
    return Installed(venv, python, env)


def _gray(seed: int, shape: tuple[int, int] = (40, 40)) -> np.ndarray:
    """A smooth random 8-bit slice (blobs, so the fusion metrics have structure to score)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    img = np.zeros(shape)
    for _ in range(3):
        cy, cx, r = rng.uniform(8, 32), rng.uniform(8, 32), rng.uniform(4, 10)
        img += rng.uniform(0.3, 0.7) * (((yy - cy) ** 2 + (xx - cx) ** 2) < r ** 2)
    return (np.clip(img + 0.05 * rng.standard_normal(shape), 0, 1) * 255).astype(np.uint8)


def _atlas_gif_tree(root: Path) -> Path:
    """The atlas's own layout, ``cases/case<N>/<series>/<NNN>.gif``: 4 cases of 2 CT-MRI slices."""
    for case in (1, 2, 3, 4):
        for series, offset in (("ct1", 0), ("mr2", 500)):
            folder = root / "cases" / f"case{case}" / series
            folder.mkdir(parents=True)
            for s in (10, 11):
                Image.fromarray(_gray(case * 100 + s + offset)).save(folder / f"{s:03d}.gif")
    return root


def _flat_pair_tree(root: Path) -> Path:
    """The flattened layout, ``CT-MRI/<modality>/<case><slice3>.png``: 4 cases of 2 slices."""
    for modality, offset in (("CT", 0), ("MRI", 500)):
        folder = root / "CT-MRI" / modality
        folder.mkdir(parents=True)
        for case in (1, 2, 3, 4):
            for s in (10, 11):
                Image.fromarray(_gray(case * 100 + s + offset)).save(folder / f"{case}{s:03d}.png")
    return root


#: The explicit case split of the generated trees: one case each for validation and test.
SPLIT = ("--training-cases", "1", "2", "--validation-cases", "3", "--test-cases", "4")


@pytest.mark.slow
def test_installed_wheel_fuses_with_the_shipped_model(installed: Installed, tmp_path: Path) -> None:
    """From an empty folder, the installed package is the one imported and fuses with its own model."""
    work = tmp_path / "empty"
    work.mkdir()
    rng = np.random.default_rng(0)
    for name in ("A.png", "B.png"):
        Image.fromarray(rng.integers(0, 256, (48, 40), dtype=np.uint8)).save(work / name)
    where = installed.run(work, "-c", "import sys, pipeline, bundles.ssim_fusion as b; "
                                      "print(pipeline.__file__); print(b.__file__); "
                                      "print(*sys.path, sep='\\n')").splitlines()
    prefix = installed.venv.resolve()
    assert all(Path(w).resolve().is_relative_to(prefix) for w in where[:2]), where
    assert not any(p and Path(p).resolve() == REPO for p in where[2:]), "the checkout is on sys.path"
    bundle = Path(installed.run(work, "-m", "pipeline", "bundle-path").strip())
    assert bundle.resolve().is_relative_to(prefix) and (bundle / "models" / "model.pt").is_file()
    chosen = installed.run(work, "-c", "from pipeline.model_index import checkpoint_for as c; "
                                       "print(*(c(p).name for p in ('CT-MRI', 'PET-MRI', 'SPECT-MRI', 'US-MRI')), "
                                       "all(c(p).is_file() for p in ('CT-MRI', 'PET-MRI', 'SPECT-MRI')))")
    assert chosen.split() == ["model_ct-mri.pt", "model_pet-mri.pt", "model_spect-mri.pt", "model.pt", "True"]
    installed.run(work, "-m", "pipeline", "fuse", "--method", "cnn", "A.png", "B.png", "OUT.png")
    fused = np.asarray(Image.open(work / "OUT.png"))
    assert fused.shape == (48, 40) and fused.dtype == np.uint8


@pytest.mark.slow
def test_installed_wheel_runs_the_readme_commands(installed: Installed, tmp_path: Path) -> None:
    """The README's commands, from an installed wheel in an empty folder: data_prep on both atlas
    layouts, a 1-epoch bundle training, the bundle's inference with the trained model, the metrics CLI,
    the ids listing, one mistake as one ``error:`` line, and the offline metadata check."""
    sources = tmp_path / "sources"
    gif_tree, flat_tree = _atlas_gif_tree(sources / "atlas"), _flat_pair_tree(sources / "flat")
    work = tmp_path / "empty"
    work.mkdir()
    for src, out in ((gif_tree, "from_gif"), (flat_tree, "data")):
        installed.run(work, "-m", "data_prep", "harvard", str(src), out, *SPLIT)
    datalists = [json.loads((work / out / "datalist.json").read_text()) for out in ("from_gif", "data")]
    assert [len(d["training"]) for d in datalists] == [4, 4] and all(len(d["test"]) == 2 for d in datalists)

    bundle = Path(installed.run(work, "-m", "pipeline", "bundle-path").strip())
    configs = bundle / "configs"
    log = installed.run(work, "-m", "monai.bundle", "run", "training", "--config_file",
                        str(configs / "train.yaml"), "--datalist", "data/datalist.json",
                        "--output_dir", "runs/x", "--epochs", "1", "--batch_size", "2", "--patch_size", "32",
                        "--val_metrics", "['Q_Y']", with_stderr=True)
    # the console: no line per iteration, the validation's start and duration, no dependency warnings
    assert "Iter:" not in log and not re.search(r"Epoch \d+ iteration \d+:", log), log[-3000:]
    assert "validation after epoch 1: 2 batches" in log and "validation after epoch 1 done in" in log
    assert "DeprecationWarning" not in log and "FutureWarning" not in log, log[-3000:]
    model = work / "runs" / "x" / "models" / "model.pt"
    assert model.is_file() and (work / "runs" / "x" / "models" / "latest.pt").is_file()
    installed.run(work, "-m", "monai.bundle", "run", "inference", "--config_file",
                  str(configs / "inference.yaml"), "--ckpt_path", str(model),
                  "--input_dir", "data/CT-MRI", "--output_dir", "fused")
    fused = sorted((work / "fused").glob("*.png"))
    assert len(fused) == 8, fused
    pair = next(iter(datalists[1]["test"]))
    a, b = (str(work / "data" / pair[k]) for k in ("image_a", "image_b"))
    fused_pair = work / "fused" / Path(pair["image_a"]).with_suffix(".png").name
    assert fused_pair in fused
    scores = json.loads(installed.run(work, "-m", "pipeline", "metrics", a, b, str(fused_pair),
                                      "--metrics", "Q_Y,FMI_pixel", "--json"))
    assert scores, scores
    assert "--datalist runs/demo/data/datalist.json" in installed.run(work, "-m", "pipeline", "bundle-ids")

    mistake = subprocess.run([str(installed.python), "-m", "monai.bundle", "run", "inference",
                              "--config_file", str(configs / "inference.yaml"), "--input_dir", "nowhere",
                              "--output_dir", "o"], cwd=work, env=installed.env, capture_output=True,
                             text=True, timeout=300)
    assert mistake.returncode == 2 and "Traceback" not in mistake.stderr, mistake.stderr[-3000:]
    assert mistake.stderr.strip().splitlines()[-1].startswith("error: nowhere: no such input folder")

    if importlib.util.find_spec("jsonschema") is not None:
        from pipeline.resources import METADATA_SCHEMA_SHA256

        installed.run(work, "-m", "monai.bundle", "verify_metadata",
                      "--meta_file", str(configs / "metadata.json"),
                      "--filepath", str(configs / "metadata_schema.json"),
                      "--hash_val", METADATA_SCHEMA_SHA256, "--hash_type", "sha256")
