"""Outputs under a hostile user and an unlucky operator (issue 14), one section per class of defence.

1. Paths from data: every name part is checked, stays inside its folder, and two inputs never
   share an output name (inference, benchmark, data_prep, figures).
2. Output folders: no output inside an input; one writer per folder (a lock with the pid; dead
   owners taken over); training refuses another run's checkpoints; a run's set is complete or
   absent; files get the user's umask.
3. Memory has a budget: the pixel limit, flat inference memory, checkpoint sizes checked first.
4. Every network call is bounded: the benchmark's tracking server check.
5. Clear errors: disk full, read-only, a folder where a file goes, wrong datalist types, NaN
   weights, multi-frame images.

The crash-consistency test (``slow``) kills inference subprocesses at random points and checks
the invariants after each kill and after the rerun.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import fusion_checkpoint
from data_prep.datalist import SlicePair, SplitSpec, write_dataset
from pipeline.checkpoint import AtomicCheckpointSaver, NonFiniteWeightsError
from pipeline.datalist import DatalistError, load_datalist
from pipeline.inference import run_inference
from pipeline.io import (
    METRIC_BYTES_PER_PIXEL,
    CheckpointError,
    ImageReadError,
    atomic_write_bytes,
    check_checkpoint_sizes,
    load_checkpoint,
    pixel_limit,
    read_image,
    write_png,
)
from pipeline.outputs import (
    OutputError,
    OutputLock,
    OutputLockedError,
    OutputPathError,
    OutputWriteError,
    StagedOutput,
    check_name,
    claim_training_output,
    output_path,
)

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small FusionNet state dict with non-trivial weights."""
    return fusion_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt", (2, 3, 3, 2))


def make_pairs(root: Path, n: int, size: int = 12, seed: int = 0) -> Path:
    """``root/CT/<i>.png`` and ``root/MRI/<i>.png``, ``n`` gray pairs."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        for mod in ("CT", "MRI"):
            write_png(root / mod / f"{i:03d}.png", rng.integers(0, 256, (size, size), dtype=np.uint8))
    return root


def make_datalist(root: Path, entries: list[dict], size: int = 8) -> Path:
    """A datalist whose entries point at two real images (``a.png``, ``b.png``) unless they say otherwise."""
    rng = np.random.default_rng(1)
    for name in ("a", "b"):
        write_png(root / f"{name}.png", rng.integers(0, 256, (size, size), dtype=np.uint8))
    full = [{"image_a": "a.png", "image_b": "b.png", **e} for e in entries]
    path = root / "datalist.json"
    path.write_text(json.dumps({"test": full}))
    return path


def digest(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file below ``folder`` (links as ``link:<target>``)."""
    out = {}
    if not folder.exists():
        return out
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if p.is_symlink():
            out[rel] = f"link:{os.readlink(p)}"
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def leftovers(out: Path) -> list[str]:
    """Lock files and staging folders beside ``out``."""
    return sorted(p.name for p in out.parent.glob(f".{out.name}.*"))


# ================================================================ 1. paths from data


@pytest.mark.parametrize("name", ["..", ".", "", "a/b", "a\\b", "/etc", ".hidden", "x\x00y", "a\nb", "C:",
                                  "a\u202eb", "trailing.", " lead", "e\u0301", "x" * 200, "a*b", "a|b"])
def test_unsafe_name_parts_are_refused(name: str, tmp_path: Path) -> None:
    with pytest.raises(OutputPathError, match="cannot name an output file|must be a string"):
        check_name(name, "case", "datalist.json")
    with pytest.raises(OutputPathError):
        output_path(tmp_path, "pair", name, suffix=".png")


@pytest.mark.parametrize("value", [5, None, ["a"], {"a": 1}, 1.5, True])
def test_non_string_name_is_refused(value: object) -> None:
    with pytest.raises(OutputPathError, match="must be a string"):
        check_name(value, "pair")


def test_safe_names_pass_and_stay_inside(tmp_path: Path) -> None:
    for name in ("CT-MRI", "case_2", "2010", "T1.w", "\u0661\u0662", "Ärzte"):
        assert output_path(tmp_path, "x", name, suffix=".png").parent == tmp_path / "x"


def test_output_path_refuses_a_link_out_of_the_folder(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "out" / "CT-MRI").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OutputPathError, match="outside the output folder"):
        output_path(tmp_path / "out", "CT-MRI", "1_000", suffix=".png")


@pytest.mark.parametrize("field,value", [("pair", "../x"), ("case", "a/b"), ("case", 7), ("slice", "3"),
                                         ("slice", True), ("slice", -1), ("slice", 2.0),
                                         ("modality_a", ["CT"]),
                                         ("modality_b", ".."), ("mode_a", "CMYK"), ("pair", "")])
def test_datalist_naming_fields_are_checked(field: str, value: object, tmp_path: Path) -> None:
    path = make_datalist(tmp_path, [{"case": "1", "slice": 0, "pair": "CT-MRI", field: value}])
    with pytest.raises(DatalistError) as err:
        load_datalist(path)
    assert str(path) in str(err.value) and "entry 0 of test" in str(err.value) and field in str(err.value)


def test_inference_refuses_two_entries_with_one_output_name(checkpoint: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    path = make_datalist(data, [{"pair": "CT-MRI", "case": "A", "slice": 1},
                                {"pair": "CT-MRI", "case": "a", "slice": 1}])  # one name on a case-blind disk
    with pytest.raises(OutputPathError, match="two inputs would write this output file"):
        run_inference(checkpoint, tmp_path / "out", datalist=path, device="cpu")
    assert not (tmp_path / "out").exists() and leftovers(tmp_path / "out") == []


def test_benchmark_names_are_checked_and_collisions_refused(tmp_path: Path) -> None:
    from pipeline.benchmark import run_benchmark

    data = tmp_path / "data"
    data.mkdir()
    same = make_datalist(data, [{"pair": "CT-MRI", "case": "1", "slice": 0},
                                {"pair": "CT-MRI", "case": "1", "slice": 0}])
    with pytest.raises(OutputPathError, match="two inputs would write"):
        run_benchmark(same, tmp_path / "bench", methods=["wa"], metrics=["EN"], mlflow_logging=False,
                      progress=False, n_figures=1)
    assert not (tmp_path / "bench").exists() and leftovers(tmp_path / "bench") == []
    nameless = make_datalist(data, [{"pair": "CT-MRI"}])
    with pytest.raises(ValueError, match="has no 'case' and 'slice'"):
        run_benchmark(nameless, tmp_path / "bench", methods=["wa"], mlflow_logging=False, progress=False)


def test_benchmark_writes_only_inside_out(tmp_path: Path) -> None:
    from pipeline.benchmark import run_benchmark

    data = tmp_path / "data"
    data.mkdir()
    path = make_datalist(data, [{"pair": "CT-MRI", "case": "1", "slice": 0, "modality_a": "CT",
                                 "modality_b": "MRI"}])
    result = run_benchmark(path, tmp_path / "bench", methods=["wa"], metrics=["EN"], mlflow_logging=False,
                           progress=False, n_figures=1)
    files = sorted(digest(tmp_path / "bench"))
    assert files == ["figures/CT-MRI_1_000.png", "fused/wa/1_000.png", "results.csv", "summary.md"]
    assert result.figures == [tmp_path / "bench" / "figures" / "CT-MRI_1_000.png"]
    assert leftovers(tmp_path / "bench") == []


# ================================================================ 2. output folders


def test_inference_refuses_output_inside_or_equal_to_input(checkpoint: Path, tmp_path: Path) -> None:
    pairs = make_pairs(tmp_path / "in", 2)
    before = digest(pairs)
    for out in (pairs, pairs / "CT", pairs / "fused"):
        with pytest.raises(OutputPathError, match="input folder"):
            run_inference(checkpoint, out, input_dir=pairs, device="cpu")
    data = tmp_path / "data"
    data.mkdir()
    path = make_datalist(data, [{"pair": "CT-MRI", "case": "1", "slice": 0}])
    with pytest.raises(OutputPathError, match="input folder"):
        run_inference(checkpoint, data / "fused", datalist=path, device="cpu")
    assert digest(pairs) == before


def test_lock_stops_a_live_writer_and_takes_over_a_dead_one(tmp_path: Path) -> None:
    out = tmp_path / "out"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = OutputLock(out)
        host = socket.gethostname()
        lock.path.write_text(json.dumps({"pid": sleeper.pid, "host": host, "what": "inference"}))
        start = time.monotonic()
        owner = rf"inference \(pid {sleeper.pid}.*is writing this output"
        with pytest.raises(OutputLockedError, match=owner):
            OutputLock(out).acquire()
        assert time.monotonic() - start < 2
    finally:
        sleeper.kill()
        sleeper.wait()
    with OutputLock(out, "test") as taken:  # the owner is dead: taken over
        assert json.loads(taken.path.read_text())["pid"] == os.getpid()
    assert not taken.path.exists()
    taken.path.write_text("{not json")  # junk lock: treated as stale
    with OutputLock(out):
        pass
    taken.path.write_text(json.dumps({"pid": 1, "host": "another-host"}))
    with pytest.raises(OutputLockedError, match="another-host"):
        OutputLock(out).acquire()


RACE_SCRIPT = """
import os, sys, time
from pipeline.outputs import OutputLock, OutputLockedError
start = float(sys.argv[2])
while time.time() < start:
    time.sleep(0.005)
try:
    lock = OutputLock(sys.argv[1], "race").acquire()
except OutputLockedError:
    print("locked")
else:
    print("won", flush=True)
    while not os.path.exists(sys.argv[3]):  # held until every racer has answered
        time.sleep(0.01)
    lock.release()
"""


def test_racing_processes_over_a_stale_lock_one_wins(tmp_path: Path) -> None:
    out = tmp_path / "out"
    lock = OutputLock(out)
    lock.path.write_text(json.dumps({"pid": 2**22 + 5, "host": socket.gethostname()}))  # a dead owner
    start, done = time.time() + 4, tmp_path / "done"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", RACE_SCRIPT, str(out), str(start), str(done)], env=env,
                              cwd=REPO, stdout=subprocess.PIPE, text=True) for _ in range(6)]
    results = [p.stdout.readline().strip() for p in procs if p.stdout is not None]
    done.write_text("")
    for p in procs:
        p.wait(60)
    assert sorted(results) == ["locked"] * 5 + ["won"], results
    assert not lock.path.exists() and not list(tmp_path.glob(".out.lock.stale-*"))


def test_second_inference_into_one_folder_stops_at_once(checkpoint: Path, tmp_path: Path) -> None:
    pairs = make_pairs(tmp_path / "in", 2)
    with OutputLock(tmp_path / "out", "inference"):
        start = time.monotonic()
        with pytest.raises(OutputLockedError, match="is writing this output folder"):
            run_inference(checkpoint, tmp_path / "out", input_dir=pairs, device="cpu")
        assert time.monotonic() - start < 5
    assert not (tmp_path / "out").exists()


def test_second_benchmark_and_data_prep_stop_at_once(tmp_path: Path) -> None:
    from pipeline.benchmark import run_benchmark

    data = tmp_path / "data"
    data.mkdir()
    path = make_datalist(data, [{"pair": "CT-MRI", "case": "1", "slice": 0}])
    with OutputLock(tmp_path / "bench"), pytest.raises(OutputLockedError):
        run_benchmark(path, tmp_path / "bench", methods=["wa"], metrics=["EN"], mlflow_logging=False,
                      progress=False)
    pair = SlicePair(np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.uint8), "CT", "MRI", "1", 0)
    with OutputLock(tmp_path / "prep"), pytest.raises(OutputLockedError):
        write_dataset([pair], tmp_path / "prep", SplitSpec(cases={"test": ["1"]}))
    assert not (tmp_path / "prep").exists()


def test_data_prep_restores_an_out_moved_aside_by_a_killed_run(tmp_path: Path) -> None:
    pair = SlicePair(np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.uint8), "CT", "MRI", "1", 0)
    out = tmp_path / "prep"
    write_dataset([pair], out, SplitSpec(cases={"test": ["1"]}))
    old = digest(out)
    os.replace(out, tmp_path / ".prep.old-99999")  # killed between the two renames of a publish
    (tmp_path / ".prep.partial-99999").mkdir()
    (tmp_path / ".prep.lock").write_text(json.dumps({"pid": 2**22 + 7, "host": socket.gethostname()}))
    with pytest.raises(Exception, match="not empty"):  # the old set is back, so OUT needs --overwrite
        write_dataset([pair], out, SplitSpec(cases={"test": ["1"]}))
    assert digest(out) == old and leftovers(out) == []


def test_training_refuses_another_runs_checkpoints(tmp_path: Path) -> None:
    out = tmp_path / "train"
    (out / "models").mkdir(parents=True)
    (out / "models" / "latest.pt").write_bytes(b"x")
    with pytest.raises(OutputError, match="--resume True.*--overwrite True"):
        claim_training_output(out)
    assert claim_training_output(out, resume=True) == out
    assert (out / "models" / "latest.pt").exists()
    claim_training_output(out, overwrite=True)
    assert not list((out / "models").glob("*.pt"))
    assert (tmp_path / ".train.lock").exists()  # held until the process exits
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="is not a folder"):
        claim_training_output(tmp_path / "file")


def test_training_claim_in_the_bundle_config() -> None:
    text = (REPO / "bundles" / "ssim_fusion" / "configs" / "train.yaml").read_text()
    assert "claim_training_output(@output_dir, @ckpt_dir, resume=@resume, overwrite=@overwrite)" in text
    assert "\noverwrite: false" in text


def test_failed_inference_leaves_the_previous_output_or_none(checkpoint: Path, tmp_path: Path) -> None:
    pairs = make_pairs(tmp_path / "in", 11)
    out = tmp_path / "out"
    (pairs / "MRI" / "010.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")  # the last pair is bad
    with pytest.raises(ImageReadError, match="010.png"):
        run_inference(checkpoint, out, input_dir=pairs, device="cpu")
    assert not out.exists() and leftovers(out) == []  # not 10 of 11 files looking like a result
    make_pairs(pairs, 11)
    written = run_inference(checkpoint, out, input_dir=pairs, device="cpu")
    assert len(written) == 11 and leftovers(out) == []
    good = digest(out)
    (pairs / "CT" / "005.png").write_bytes(b"")
    with pytest.raises(ImageReadError):
        run_inference(checkpoint, out, input_dir=pairs, device="cpu")
    assert digest(out) == good and leftovers(out) == []


def test_staging_left_by_a_killed_run_is_removed_or_finished(tmp_path: Path) -> None:
    out = tmp_path / "out"
    stage = tmp_path / ".out.staging"
    (stage / "sub").mkdir(parents=True)
    (stage / "sub" / "half.png").write_bytes(b"half")
    with StagedOutput(out) as staged:  # a staging folder without the publishing marker: removed
        staged.path("a", suffix=".txt").write_text("new")
    assert digest(out) == {"a.txt": hashlib.sha256(b"new").hexdigest()}
    stage.mkdir()
    (stage / ".publishing").write_bytes(b"")
    (stage / "b.txt").write_text("moved")  # killed while moving files in: the next run finishes
    with StagedOutput(out):
        pass
    assert sorted(digest(out)) == ["a.txt", "b.txt"] and not stage.exists()


def test_linked_staging_and_lock_are_never_followed(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / ".publishing").write_bytes(b"")
    (elsewhere / "precious.txt").write_text("keep")
    (tmp_path / ".out.staging").symlink_to(elsewhere)
    (tmp_path / "secret").write_text("not a lock")
    (tmp_path / ".out.lock").symlink_to(tmp_path / "secret")
    with StagedOutput(tmp_path / "out") as staged:
        staged.path("a", suffix=".txt").write_text("new")
    assert sorted(digest(tmp_path / "out")) == ["a.txt"]
    assert (elsewhere / "precious.txt").read_text() == "keep"
    assert (tmp_path / "secret").read_text() == "not a lock"
    assert leftovers(tmp_path / "out") == []


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_files_get_the_users_umask(umask: int, checkpoint: Path, tmp_path: Path) -> None:
    pairs = make_pairs(tmp_path / "in", 1)
    old = os.umask(umask)
    try:
        atomic_write_bytes(tmp_path / "x.bin", b"x")
        written = run_inference(checkpoint, tmp_path / "out", input_dir=pairs, device="cpu")
    finally:
        os.umask(old)
    for p in (tmp_path / "x.bin", *written):
        assert p.stat().st_mode & 0o777 == 0o666 & ~umask, p
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o777 & ~umask


def test_rename_is_followed_by_a_folder_fsync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    import pipeline.io as io_module

    monkeypatch.setattr(io_module, "fsync_dir", lambda d: synced.append(str(d)))
    atomic_write_bytes(tmp_path / "f.bin", b"x")
    assert synced == [str(tmp_path)]


# ================================================================ 3. memory has a budget


def test_pixel_limit_follows_the_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    side = 64
    write_png(tmp_path / "x.png", np.zeros((side, side), np.uint8))
    monkeypatch.setenv("SSIM_FUSION_MEMORY_BUDGET", "1M")
    assert pixel_limit() < side * side
    with pytest.raises(ImageReadError, match=r"x\.png.*memory budget.*SSIM_FUSION_MEMORY_BUDGET"):
        read_image(tmp_path / "x.png")
    monkeypatch.setenv("SSIM_FUSION_MEMORY_BUDGET", "64M")
    assert read_image(tmp_path / "x.png").shape == (side, side)
    monkeypatch.setenv("SSIM_FUSION_MEMORY_BUDGET", "lots")
    with pytest.raises(ValueError, match="not a memory size"):
        pixel_limit()
    monkeypatch.delenv("SSIM_FUSION_MEMORY_BUDGET")
    assert pixel_limit() < 8192 * 8192  # an 8192x8192 slice would need more than the default budget
    big = Image.new("L", (8192, 8192))
    big.save(tmp_path / "big.png")
    with pytest.raises(ImageReadError, match="memory budget"):
        read_image(tmp_path / "big.png")


def test_metrics_stay_within_their_declared_bytes_per_pixel() -> None:
    from pipeline.metrics import DEFAULT_METRICS, compute_metrics

    rng = np.random.default_rng(0)
    n = 256
    a, b = (rng.integers(0, 256, (n, n)).astype(np.float64) for _ in range(2))
    tracemalloc.start()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            compute_metrics(a, b, (a + b) / 2, names=list(DEFAULT_METRICS), nan_policy="warn")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak <= METRIC_BYTES_PER_PIXEL * n * n


def _inference_peak(checkpoint: Path, pairs: Path, out: Path) -> int:
    tracemalloc.start()
    try:
        run_inference(checkpoint, out, input_dir=pairs, device="cpu", batch_size=2)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_inference_memory_is_flat_in_the_number_of_pairs(checkpoint: Path, tmp_path: Path) -> None:
    few = make_pairs(tmp_path / "few", 4, size=64)
    many = make_pairs(tmp_path / "many", 40, size=64)
    _inference_peak(checkpoint, few, tmp_path / "warm")  # imports and caches first
    small = _inference_peak(checkpoint, few, tmp_path / "o1")
    large = _inference_peak(checkpoint, many, tmp_path / "o2")
    per_pair = 64 * 64 * 2 * 8 * 4  # what keeping one more decoded pair (float64, a few copies) costs
    assert large - small < 4 * per_pair, (small, large)


def _craft(real: bytes, patch: tuple[bytes, bytes]) -> bytes:
    """The archive ``real`` with its pickle's bytes ``patch[0]`` replaced by ``patch[1]``."""
    src = zipfile.ZipFile(io.BytesIO(real))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("data.pkl"):
                assert patch[0] in data
                data = data.replace(patch[0], patch[1], 1)
            dst.writestr(info.filename, data)
    return buf.getvalue()


@pytest.mark.parametrize("what,patch", [
    ("huge storage", (b"K\x0c", b"J\xff\xff\xff\x7f")),  # numel 12 -> 2**31 - 1
    ("tensor beyond its storage", (b"K\x03K\x04\x86", b"J\x00\x00\x01\x00J\x00\x00\x01\x00\x86")),
])
def test_checkpoint_declaring_a_huge_tensor_is_refused_before_loading(
        what: str, patch: tuple[bytes, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(3, 4)}, buf)
    path = tmp_path / "crafted.pt"
    path.write_bytes(_craft(buf.getvalue(), patch))
    assert path.stat().st_size < 4096

    def no_load(*args: object, **kwargs: object) -> None:
        raise AssertionError("torch.load was reached")

    monkeypatch.setattr(torch, "load", no_load)
    with pytest.raises(CheckpointError, match=r"crafted\.pt: refused before loading"):
        load_checkpoint(path)


def test_checkpoint_over_the_budget_and_legacy_files_are_refused(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "big.pt"
    torch.save({"w": torch.zeros(1000)}, path)
    assert check_checkpoint_sizes(path) == 4000
    monkeypatch.setenv("SSIM_FUSION_MEMORY_BUDGET", "2000")
    with pytest.raises(CheckpointError, match="memory budget"):
        load_checkpoint(path)
    monkeypatch.delenv("SSIM_FUSION_MEMORY_BUDGET")
    legacy = tmp_path / "legacy.pt"
    torch.save({"w": torch.zeros(3)}, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match="legacy format"):
        load_checkpoint(legacy)


# ================================================================ 4. network calls are bounded


def test_benchmark_fails_fast_on_a_server_that_never_answers(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.benchmark import run_benchmark
    from pipeline.tracking import MLFLOW_REQUEST_LIMITS, TrackingServerError

    for key in MLFLOW_REQUEST_LIMITS:
        monkeypatch.setenv(key, "1")
        monkeypatch.delenv(key)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept_and_stay_silent() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                pass

    thread = threading.Thread(target=accept_and_stay_silent, daemon=True)
    thread.start()
    data = tmp_path / "data"
    data.mkdir()
    path = make_datalist(data, [{"pair": "CT-MRI", "case": "1", "slice": 0}])
    start = time.monotonic()
    try:
        with pytest.raises(TrackingServerError, match="not reachable"):
            run_benchmark(path, tmp_path / "bench", methods=["wa"], metrics=["EN"], progress=False,
                          tracking_uri=f"http://127.0.0.1:{server.getsockname()[1]}", tracking_timeout=1.0)
        assert time.monotonic() - start < 10
        assert accepted, "the check never reached the server"
        assert all(os.environ.get(k) == v for k, v in MLFLOW_REQUEST_LIMITS.items())  # requests bounded
        assert not (tmp_path / "bench").exists()
    finally:
        stop.set()
        thread.join()
        server.close()
        for conn in accepted:
            conn.close()


def test_benchmark_reuses_the_tracking_module() -> None:
    text = (REPO / "pipeline" / "benchmark.py").read_text()
    assert "from pipeline.tracking import bound_mlflow_requests, check_tracking_server" in text
    assert "urlopen" not in text


# ================================================================ 5. clear errors


def test_disk_full_and_read_only_name_the_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pipeline.io as io_module

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io_module.os, "fsync", full)
    with pytest.raises(OutputWriteError, match=r"x\.png: cannot be written \(No space left.*disk is full"):
        write_png(tmp_path / "x.png", np.zeros((2, 2), np.uint8))
    assert list(tmp_path.iterdir()) == []  # no temporary file left
    monkeypatch.undo()

    def read_only(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(io_module.tempfile, "mkstemp", read_only)
    with pytest.raises(OutputWriteError, match=r"y\.png.*read-only"):
        write_png(tmp_path / "y.png", np.zeros((2, 2), np.uint8))
    err = OutputWriteError(errno.EROFS, "x")
    assert isinstance(err, OSError) and isinstance(err, ValueError) and err.errno == errno.EROFS


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_really_read_only_folder(checkpoint: Path, tmp_path: Path) -> None:
    pairs = make_pairs(tmp_path / "in", 1)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(OutputWriteError, match="ro"):
            run_inference(checkpoint, ro / "out", input_dir=pairs, device="cpu")
    finally:
        ro.chmod(0o755)


def test_folder_where_a_file_is_expected(checkpoint: Path, tmp_path: Path) -> None:
    (tmp_path / "x.png").mkdir()
    with pytest.raises(OutputWriteError, match=r"x\.png.*a folder is where a file is expected"):
        write_png(tmp_path / "x.png", np.zeros((2, 2), np.uint8))
    (tmp_path / "afile").write_text("x")
    with pytest.raises(OutputWriteError, match="afile"):
        write_png(tmp_path / "afile" / "y.png", np.zeros((2, 2), np.uint8))
    pairs = make_pairs(tmp_path / "in", 2)
    out = tmp_path / "out"
    (out / "000.png").mkdir(parents=True)
    (out / "keep.txt").write_text("mine")
    before = digest(out)
    with pytest.raises(OutputError, match=r"000\.png: is a folder where an output file is expected"):
        run_inference(checkpoint, out, input_dir=pairs, device="cpu")
    assert digest(out) == before and leftovers(out) == []
    with pytest.raises(OutputError, match="is not a folder"):
        run_inference(checkpoint, tmp_path / "afile", input_dir=pairs, device="cpu")


def test_folder_where_an_input_file_is_expected(tmp_path: Path) -> None:
    (tmp_path / "a.png").mkdir()
    with pytest.raises(ImageReadError, match=r"a\.png: is a folder where an image file is expected"):
        read_image(tmp_path / "a.png")
    (tmp_path / "model.pt").mkdir()
    with pytest.raises(CheckpointError, match=r"model\.pt: is a folder where a checkpoint file is expected"):
        load_checkpoint(tmp_path / "model.pt")


def test_wrong_type_entry_names_the_datalist_and_the_entry(tmp_path: Path) -> None:
    path = make_datalist(tmp_path, [{"case": "1", "slice": 0}, {"case": {"x": 1}, "slice": 0}])
    wrong = r"datalist\.json: entry 1 of test .*case=\{'x': 1\} must be a string"
    with pytest.raises(DatalistError, match=wrong):
        load_datalist(path)
    path.write_text(json.dumps({"test": [{"image_a": "a.png", "image_b": "b.png"}, 3]}))
    with pytest.raises(DatalistError, match=r"datalist\.json: entry 1 of test must be an object"):
        load_datalist(path)


def test_nan_weights_are_never_saved_and_stop_the_training(tmp_path: Path) -> None:
    from ignite.engine import Engine, Events

    net = torch.nn.Linear(2, 1)

    def step(engine: Engine, batch: object) -> float:
        if engine.state.iteration == 3:
            with torch.no_grad():
                net.weight.fill_(float("nan"))
        return 0.0

    # without validation metrics: the every-epoch latest.pt
    trainer = Engine(step)
    AtomicCheckpointSaver(save_dir=str(tmp_path), save_dict={"model": net}, save_interval=1, n_saved=1,
                          epoch_level=True, interval_filename="latest.pt").attach(trainer)
    with pytest.raises(NonFiniteWeightsError, match="NaN or Inf.*not saved as .*latest.pt"):
        trainer.run([0, 1], max_epochs=3)
    assert trainer.state.epoch == 2
    first = torch.load(tmp_path / "latest.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in first.values())  # the last good one stays

    # with a validation metric: the best model.pt
    best_dir = tmp_path / "best"
    evaluator = Engine(lambda e, b: 0.0)
    evaluator.state.metrics = {}

    @evaluator.on(Events.EPOCH_COMPLETED)
    def score(engine: Engine) -> None:
        engine.state.metrics["val"] = float("nan") if not torch.isfinite(net.weight).all() else 0.5

    AtomicCheckpointSaver(save_dir=str(best_dir), save_dict={"model": net}, save_key_metric=True,
                          key_metric_name="val", key_metric_filename="model.pt").attach(evaluator)
    with pytest.raises(NonFiniteWeightsError):
        evaluator.run([0])
    assert not (best_dir / "model.pt").exists()


@pytest.mark.parametrize("kind", ["gif", "tiff"])
def test_multi_frame_images_are_refused(kind: str, tmp_path: Path) -> None:
    frames = [Image.fromarray(np.full((6, 6), v, np.uint8)) for v in (0, 128, 255)]
    path = tmp_path / f"stack.{kind}"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    with pytest.raises(ImageReadError, match=r"stack\.\w+: holds 3 frames"):
        read_image(path)


# ================================================================ crash consistency

#: Imports once, then runs each inference asked for on stdin in a forked child (so a run costs no
#: interpreter start) and reports the child's pid, then its exit code. The parent never runs torch
#: itself, so forking it is safe.
FORK_SERVER = """
import os, sys
import torch
torch.set_num_threads(1)
from pipeline.inference import run_inference
print("ready", flush=True)
for line in sys.stdin:
    ckpt, out, inp = line.rstrip("\\n").split("\\t")
    pid = os.fork()
    if pid == 0:
        try:
            run_inference(ckpt, out, input_dir=inp, device="cpu", batch_size=4)
        except BaseException as err:
            sys.stderr.write(repr(err) + "\\n")
            os._exit(1)
        os._exit(0)
    print(pid, flush=True)
    print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
"""


class ForkServer:
    """The :data:`FORK_SERVER` subprocess: ``start`` a run, ``kill`` it, ``wait`` for its exit code."""

    def __init__(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen([sys.executable, "-c", FORK_SERVER], cwd=REPO, env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "ready"

    def start(self, *args: Path) -> int:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("\t".join(map(str, args)) + "\n")
        self.proc.stdin.flush()
        return int(self.proc.stdout.readline())

    def wait(self) -> int:
        assert self.proc.stdout is not None
        return int(self.proc.stdout.readline())

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(30)


@pytest.mark.slow
def test_inference_killed_at_random_points_then_rerun(checkpoint: Path, tmp_path: Path) -> None:
    """SIGKILL an inference after random delays, several times, then rerun it. After every kill:
    no file outside the output folder (only its lock and staging beside it), the inputs untouched,
    and the output absent or the complete final set; after the rerun: exactly the final set
    (identical bytes to an unbroken run), nothing left beside it."""
    pairs = make_pairs(tmp_path / "in", 40, size=48)
    inputs = digest(pairs)
    server = ForkServer()
    try:
        begin = time.monotonic()
        server.start(checkpoint, tmp_path / "ref", pairs)
        assert server.wait() == 0
        duration = time.monotonic() - begin
        final = digest(tmp_path / "ref")
        assert len(final) == 40
        rand = random.Random(0)
        out = tmp_path / "out"
        outcomes = []
        for _ in range(8):
            pid = server.start(checkpoint, out, pairs)
            time.sleep(rand.uniform(0.0, duration * 1.1))
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            outcomes.append(server.wait())
            now = digest(out)
            assert now in ({}, final), f"a partial set: {len(now)} of {len(final)} files"
            beside = {p.name for p in tmp_path.iterdir()} - {"in", "ref", "out"}
            assert beside <= {".out.lock", ".out.staging"}, beside
            assert digest(pairs) == inputs
        server.start(checkpoint, out, pairs)
        assert server.wait() == 0
        assert digest(out) == final and leftovers(out) == [] and leftovers(tmp_path / "ref") == []
    finally:
        server.close()
    print(f"crash test: exit codes after the kills {outcomes} (-9: killed), unbroken run {duration:.2f} s")
