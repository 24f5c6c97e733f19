"""Multi-process training (pipeline/distributed.py, configs/multi_gpu_train.yaml).

The end-to-end test launches the bundle with ``torchrun`` on the CPU (gloo): 2 processes with
batch 2 each against 1 process with batch 4, same data, same seed, 2 epochs. What must agree:

- DistributedSampler gives each global step the same 4 samples in both runs (rank r takes
  ``perm[r::2]`` of the same per-epoch permutation), batch norm is synchronised over the ranks
  and DDP averages the gradients, so every step computes the same gradient up to float32
  summation order: a relative difference of about ``LAMBDA sqrt(n) u`` for the ``n = 4 x 64 x 64``
  terms of a weight's gradient (tests/tolerances.py).
- Adam's step ``m / sqrt(v)`` does not depend on the gradient's scale, so a relative gradient
  difference ``e`` changes a step of at most ``lr`` by at most ``2 e lr``: over 8 steps at lr 5e-3,
  ``WEIGHT_BOUND`` with a factor 3 for the steps' dependence on the weights before them. That holds
  for every weight except the biases of the convolutions that feed a batch norm: in exact
  arithmetic their gradient is 0 (the norm subtracts the batch mean), so Adam, which divides by the
  gradient's running RMS, turns round-off into steps of ~lr. That they do not change the network's
  training-mode output is checked exactly, in float64.
- Without synchronised batch norm (``--sync_batch_norm False``) the same weights differ by
  ~1e-2, so the test separates a correct set-up from a wrong one.
"""

from __future__ import annotations

import logging
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from pipeline import distributed as pd
from tolerances import LAMBDA, U32, float32_network_atol

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bundles" / "ssim_fusion" / "configs"
#: conv biases followed by a batch norm (zero gradient in exact arithmetic; see the module docstring)
PRE_BN_BIASES = {f"layers.{i}.bias" for i in (0, 3, 6, 9)}
#: Bound on the weight difference after 8 Adam steps at the bundle's learning rate 5e-3 (see the module
#: docstring): 3 x 8 x 5e-3 x 2 x LAMBDA sqrt(4 x 64 x 64) u.
WEIGHT_BOUND = 3 * 8 * 5e-3 * 2 * LAMBDA * math.sqrt(4 * 64 * 64) * U32


def make_dataset(out: Path, train_cases: int = 4) -> Path:
    """64x64 CT-MRI and PET-MRI phantom pairs: 4 per case; 2 more cases for validation and test."""
    from data_prep.datalist import SlicePair, SplitSpec, write_dataset
    from test_bundle import phantom

    cases = [str(i) for i in range(1, train_cases + 3)]
    pairs = []
    for case in cases:
        for s in range(2):
            k = int(case) * 10 + s
            pairs.append(SlicePair(phantom(k), phantom(k + 500), "CT", "MRI", case, s))
            pairs.append(SlicePair(phantom(k + 900, True), phantom(k + 1500), "PET", "MRI", case, s))
    spec = SplitSpec(cases={"training": cases[:-2], "validation": [cases[-2]], "test": [cases[-1]]})
    write_dataset(pairs, out, spec)
    return out / "datalist.json"


def subprocess_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RANK", "LOCAL_RANK", "WORLD_SIZE",
                                                                     "MASTER_"))}
    env.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    return env


# ---------------------------------------------------------------- units


def test_device_backend_and_rank_helpers() -> None:
    assert pd.backend_for("cpu") == "gloo" and pd.backend_for("cuda:1") == "nccl"
    assert pd.local_device() == ("cuda:0" if torch.cuda.is_available() else "cpu")
    assert not pd.is_distributed() and pd.get_rank() == 0 and pd.get_world_size() == 1 and pd.is_main_process()
    net = nn.Linear(2, 1)
    assert pd.wrap_ddp(net, "cpu") is net  # no process group: the bare network
    assert pd.unwrap(nn.DataParallel(net)) is net


def test_init_process_group_needs_a_launcher(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(RuntimeError, match="torchrun --nproc_per_node=N"):
        pd.init_process_group("cpu")


def test_handlers_kept_per_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    from monai.handlers import LrScheduleHandler, StatsHandler, ValidationHandler

    lr = LrScheduleHandler(torch.optim.lr_scheduler.StepLR(torch.optim.SGD(nn.Linear(1, 1).parameters(), 0.1), 1))
    val = ValidationHandler(interval=1)
    stats = StatsHandler()
    handlers = [lr, val, stats]
    assert pd.handlers_for_rank(handlers) == handlers and pd.rank0_only(handlers) == handlers
    monkeypatch.setattr(pd, "get_rank", lambda: 1)
    assert pd.handlers_for_rank(handlers) == [lr, val]  # collective work on every rank, logging on rank 0
    assert pd.rank0_only(handlers) is None


def test_distributed_batch_norm_matches_batch_norm(monkeypatch: pytest.MonkeyPatch) -> None:
    """The synchronised branch, with an identity all-reduce (one rank's view), equals BatchNorm2d."""
    import torch.distributed.nn.functional as dnn

    torch.manual_seed(0)
    ref = nn.BatchNorm2d(3)
    with torch.no_grad():
        ref.weight.uniform_(0.5, 1.5)
        ref.bias.uniform_(-0.5, 0.5)
    converted = pd.convert_batch_norm(nn.Sequential(nn.Identity(), nn.BatchNorm2d(3)), "cpu")
    ours = converted[1]
    assert isinstance(ours, pd.DistributedBatchNorm2d)
    ours.load_state_dict(ref.state_dict())
    assert set(ours.state_dict()) == set(ref.state_dict())  # checkpoints stay interchangeable
    monkeypatch.setattr(pd, "is_distributed", lambda: True)
    monkeypatch.setattr(pd, "get_world_size", lambda: 2)
    monkeypatch.setattr(dnn, "all_reduce", lambda t, *a, **k: t)
    # the same arithmetic in another arrangement: compared in float64, where round-off is ~1e-15
    ref.double()
    ours.double()
    x1 = (torch.randn(4, 3, 5, 6, dtype=torch.float64) * 2 + 3).requires_grad_()
    x2 = x1.detach().clone().requires_grad_()
    for _ in range(2):  # running statistics over two steps
        y_ref, y = ref(x1), ours(x2)
    w = torch.randn_like(y)
    (y_ref * w).sum().backward()
    (y * w).sum().backward()
    for got, want in ((y, y_ref), (x2.grad, x1.grad), (ours.weight.grad, ref.weight.grad),
                      (ours.running_mean, ref.running_mean), (ours.running_var, ref.running_var)):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)  # running_var: unbiased, momentum 0.1
    assert int(ours.num_batches_tracked) == 2
    ours.eval()
    ref.eval()
    torch.testing.assert_close(ours(x1.detach()), ref(x1.detach()), atol=1e-12, rtol=1e-12)


# ---------------------------------------------------------------- end to end (torchrun, gloo)


def _torchrun(nproc: int, batch: int, datalist: Path, out: Path, log: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "monai.bundle", "run", "training", "--config_file",
           f"['{CONFIGS / 'train.yaml'}','{CONFIGS / 'multi_gpu_train.yaml'}']",
           "--datalist", str(datalist), "--output_dir", str(out), "--epochs", "2", "--batch_size", str(batch),
           "--patch_size", "64", "--flip_prob", "0.0", "--val_metrics", "[]", "--progress_bar", "False", *extra]
    return subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(), stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def _wait(proc: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        raise AssertionError(f"torchrun did not finish in {timeout} s:\n{log.read_text()[-3000:]}") from None
    assert proc.returncode == 0, log.read_text()[-4000:]


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path: Path) -> None:
    from mlflow import MlflowClient
    from monai.utils import path_to_sqlite_uri

    from pipeline.networks import FusionNet
    from pipeline.training import load_split
    from pipeline.transforms import fusion_transforms

    datalist = make_dataset(tmp_path / "data")
    t0 = time.time()
    two = _torchrun(2, 2, datalist, tmp_path / "two", tmp_path / "two.log", "--tracking", "mlflow")
    one = _torchrun(1, 4, datalist, tmp_path / "one", tmp_path / "one.log")
    _wait(two, tmp_path / "two.log")
    _wait(one, tmp_path / "one.log")
    logging.getLogger(__name__).info(f"torchrun 2+1 processes: {time.time() - t0:.1f} s")

    # rank 0 alone wrote checkpoints and tracked: one MLflow run, finished, 16 pairs / (2 x 2) = 4 steps an epoch
    assert sorted(p.name for p in (tmp_path / "two" / "models").iterdir()) == ["latest.pt", "model.pt"]
    client = MlflowClient(path_to_sqlite_uri(str(tmp_path / "two" / "mlruns.db")))
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    rid = runs[0].info.run_id
    assert [m.step for m in client.get_metric_history(rid, "train_loss")] == list(range(1, 9))
    assert sorted(m.step for m in client.get_metric_history(rid, "val_ssim_alpha")) == [1, 2]
    log2 = (tmp_path / "two.log").read_text()
    assert log2.count("Saved checkpoint at epoch: 2") == 1  # not once per rank

    a = torch.load(tmp_path / "two" / "models" / "latest.pt", weights_only=True)
    b = torch.load(tmp_path / "one" / "models" / "latest.pt", weights_only=True)
    assert a["trainer"]["iteration"] == b["trainer"]["iteration"] == 8
    assert len(a["rng"]["ranks"]) == 2 and len(b["rng"]["ranks"]) == 1  # each rank's random states
    compared = [k for k, v in b["model"].items() if v.is_floating_point() and "running" not in k
                and k not in PRE_BN_BIASES]
    worst = max((a["model"][k] - b["model"][k]).abs().max().item() for k in compared)
    assert worst < WEIGHT_BOUND, f"2-process weights differ from 1-process weights by {worst:.3g}"

    def network(state: dict, mode: str, dtype: torch.dtype) -> FusionNet:
        net = FusionNet()
        net.load_state_dict(state)
        return getattr(net.to(dtype), mode)()

    tf = fusion_transforms(train=False)
    x = torch.stack([tf(e)["image"] for e in load_split(datalist, "training")[:4]])
    # The excluded biases do not change the function the network computes in training mode (batch
    # statistics): the batch norm after them subtracts their batch mean. Exact, so in float64, where
    # the round-off of five layers stays below 1e-12 of the activations (order 10 here).
    with torch.no_grad():
        out_a = network(a["model"], "train", torch.float64)(x.double())
        mixed = {**a["model"], **{k: b["model"][k] for k in PRE_BN_BIASES}}
        out_mixed = network(mixed, "train", torch.float64)(x.double())
    assert (out_a - out_mixed).abs().max().item() < 1e-10

    # Validation (eval mode, running statistics) runs on both ranks' shards and all-reduces the metric:
    # its last value is what one process computes from the 2-process weights, up to the metric's
    # change under the network's float32 round-off (another batch split, another summation order).
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.yaml"))
    loss = parser.get_parsed_content("loss")
    val_two = {m.step: m.value for m in client.get_metric_history(rid, "val_ssim_alpha")}
    net = network(a["model"], "eval", torch.float32)
    v = torch.stack([tf(e)["image"] for e in load_split(datalist, "validation")])
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        pred = net(v).clamp(0.0, 1.0)
        expected = float(loss.ssim(pred, v).double().mean())
        jitter = torch.randint(0, 2, pred.shape, generator=g).float() * 2 - 1
        moved = (pred + float32_network_atol(net, v) * jitter).clamp(0.0, 1.0)
        tolerance = abs(float(loss.ssim(moved, v).double().mean()) - expected)
    assert abs(val_two[2] - expected) <= tolerance, (val_two[2], expected, tolerance)
