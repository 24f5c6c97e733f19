"""The wheel carries the bundle and the project configuration, and the installed package finds them.

The wheel is built from a copy of the checkout's package sources in a temporary folder (the checkout
gets no ``build/`` or ``*.egg-info``). The slow test installs it into a fresh virtual environment and
fuses a pair with the shipped model from an empty folder, so nothing of the checkout is on the path.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import site
import subprocess
import sys
import zipfile
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


@pytest.mark.slow
def test_installed_wheel_fuses_with_the_shipped_model(wheel: Path, tmp_path: Path) -> None:
    """``pip install`` the wheel (no deps: they come from the test environment), fuse from an empty folder."""
    venv = tmp_path / "venv"
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
    work = tmp_path / "empty"
    work.mkdir()
    rng = np.random.default_rng(0)
    for name in ("A.png", "B.png"):
        Image.fromarray(rng.integers(0, 256, (48, 40), dtype=np.uint8)).save(work / name)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSAFEPATH")}

    def run(*args: str) -> str:
        done = subprocess.run([str(python), *args], cwd=work, env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    where = run("-c", "import sys, pipeline, bundles.ssim_fusion as b; "
                      "print(pipeline.__file__); print(b.__file__); print(*sys.path, sep='\\n')").splitlines()
    prefix = venv.resolve()
    assert all(Path(w).resolve().is_relative_to(prefix) for w in where[:2]), where
    assert not any(p and Path(p).resolve() == REPO for p in where[2:]), "the checkout is on sys.path"
    bundle = Path(run("-m", "pipeline", "bundle-path").strip())
    assert bundle.resolve().is_relative_to(prefix) and (bundle / "models" / "model.pt").is_file()
    run("-m", "pipeline", "fuse", "--method", "cnn", "A.png", "B.png", "OUT.png")
    fused = np.asarray(Image.open(work / "OUT.png"))
    assert fused.shape == (48, 40) and fused.dtype == np.uint8
