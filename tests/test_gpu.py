"""The GPU paths: bf16/fp16, fp16 overflow, no host-device syncs, exact resume, NCCL. Marked `gpu`.

Every test here needs CUDA and skips without it (two of them need 2 GPUs); `bash scripts/gpu_check.sh` runs
exactly this file (`pytest -m gpu`) and reports each test as a PASS/FAIL line plus a JSON report. The only
test that runs on a CPU machine checks the overflow plugin's arithmetic.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT, read_summary, run_train, train_rows
from harness import Launched, assert_same_training, plugin_env, small_corpus, tiny_args, wait_for_step

GPUS = torch.cuda.device_count() if torch.cuda.is_available() else 0
needs_gpu = pytest.mark.skipif(GPUS < 1, reason="needs a CUDA GPU (none here)")
needs_two = pytest.mark.skipif(GPUS < 2, reason=f"needs 2 CUDA GPUs (found {GPUS})")
pytestmark = pytest.mark.gpu
QUIET = ("train.progress=false", "train.plots=false", "tracking.wandb=false")
DEFAULT = ("--config", "configs/default.yaml", *QUIET, "train.max_steps=60", "train.log_every=1",
           "train.eval_every=0", "train.checkpoint_every=0")
SYNC_PLUGIN = ROOT / "tests" / "plugins" / "cuda_syncs.py"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return small_corpus(tmp_path_factory.mktemp("corpus"))


def lrs(out: Path) -> dict[int, float]:
    return {s: r["lr"] for s, r in train_rows(out).items()}


def losses(out: Path) -> list[float]:
    return [r["loss"] for _, r in sorted(train_rows(out).items())]


def test_overflow_plugin_keeps_the_loss_and_makes_its_gradient_infinite():
    """CPU: the forced-overflow trick changes no loss value, only the gradient (inf, whatever the dtypes)."""
    from plugins.overflow import _huge_gradient

    w = torch.tensor([2.0], requires_grad=True)
    loss = _huge_gradient((w * 3).sum())
    loss.backward()
    assert loss.item() == 6.0 and w.grad is not None and math.isinf(w.grad.item())


# ------------------------------------------------------------------------------------------------
# one GPU
# ------------------------------------------------------------------------------------------------


@needs_gpu
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("workload", ["default", "gpt"])
def test_mixed_precision_trains_with_the_fp32_lr_column(tmp_path, corpus, precision, workload):
    args = DEFAULT if workload == "default" else tiny_args(corpus, 40, "train.eval_every=0")
    run_train(*args, f"output_dir={tmp_path / 'fp32'}")
    run_train(*args, f"train.mixed_precision={precision}", f"output_dir={tmp_path / precision}")
    mixed = losses(tmp_path / precision)
    assert all(math.isfinite(v) for v in mixed)
    assert sum(mixed[-5:]) / 5 < sum(mixed[:5]) / 5  # decreasing
    assert lrs(tmp_path / precision) == lrs(tmp_path / "fp32")


@needs_gpu
@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_fp16_overflow_is_skipped_and_does_not_advance_the_schedule(tmp_path, policy):
    """Updates 5 and 9 overflow: skipped by the GradScaler, not counted, the lr schedule does not move, under
    either `train.nonfinite` policy (with `skip` the GradScaler decides, so its scale still updates).

    The default config: its MLP's matmuls run in fp16 under autocast and its warm-up moves the lr every update.
    """
    args = ("--config", "configs/default.yaml", "imports=[plugins.overflow]", *QUIET, "train.max_steps=30",
            "train.log_every=1", "train.eval_every=0", "train.checkpoint_every=0", "train.mixed_precision=fp16",
            f"train.nonfinite={policy}")
    run_train(*args, f"output_dir={tmp_path / 'overflow'}", env=plugin_env(FT_OVERFLOW_AT="5,9"))
    rows = train_rows(tmp_path / "overflow")
    assert rows[30]["skipped_updates"] == 2
    applied = [rows[s]["lr"] for s in sorted(rows) if s not in (5, 9)]
    clean = lrs_of_clean_run(tmp_path, args)
    assert applied == [clean[s] for s in sorted(clean)][: len(applied)]  # the lr of a run without them


def lrs_of_clean_run(tmp_path: Path, args: tuple[str, ...]) -> dict[int, float]:
    run_train(*args, f"output_dir={tmp_path / 'clean'}", env=plugin_env())
    return lrs(tmp_path / "clean")


def syncs_after(path: Path) -> dict[int, set[str]]:
    found: dict[int, set[str]] = {}
    for sync in json.loads(path.read_text()):
        found.setdefault(sync["after_update"], set()).add(sync["where"])
    return found


@needs_gpu
@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize("workload", ["default", "gpt"])
def test_only_log_updates_wait_for_the_gpu(tmp_path, corpus, workload, compiled):
    steps, log_every = 30, 10
    args = DEFAULT if workload == "default" else tiny_args(corpus, steps, "train.eval_every=0")
    out = tmp_path / "syncs.json"
    run_train(str(out), *args, f"train.max_steps={steps}", f"train.log_every={log_every}", "train.checkpoint_every=0",
              f"train.compile={str(compiled).lower()}", f"output_dir={tmp_path / 'run'}", script=SYNC_PLUGIN,
              timeout=600)
    found = syncs_after(out)
    logged = {0, *range(log_every, steps + 1, log_every)}
    assert set(found) <= logged, {k: v for k, v in found.items() if k not in logged}


@needs_gpu
def test_resume_after_a_kill_is_bit_identical_with_deterministic_kernels(tmp_path):
    args = ("--config", "configs/default.yaml", "imports=[plugins.pace]", *QUIET, "train.max_steps=60",
            "train.log_every=1", "train.checkpoint_every=10", "train.eval_every=0", "train.deterministic=true")
    reference = tmp_path / "reference"
    run_train(*args, f"output_dir={reference}", env=plugin_env())
    out = tmp_path / "killed"
    run = Launched(args, out, FT_PACE_S="0.05")
    wait_for_step(run, 25)
    run.kill_group()
    run.finish()
    rc, stdout, stderr = Launched(args, out).finish(timeout=300)
    assert rc == 0 and "resumed from" in stdout, stderr[-3000:]
    assert_same_training(reference, out)


@needs_gpu
def test_nccl_with_one_process_gives_the_plain_runs_lr_column_and_weights(tmp_path):
    """`torchrun --nproc_per_node 1`: a real NCCL process group of one, the model DDP-wrapped (accelerate
    launch refuses --multi_gpu with one process)."""
    args = ("--config", "configs/default.yaml", *QUIET, "train.max_steps=60", "train.log_every=1",
            "distributed.sync_check_every=5")
    run_train(*args, f"output_dir={tmp_path / 'plain'}")
    run_train(*args, f"output_dir={tmp_path / 'nccl'}", launcher="torchrun", nproc=1, timeout=600)
    plain, nccl = read_summary(tmp_path / "plain"), read_summary(tmp_path / "nccl")
    assert (nccl["device"], nccl["backend"], nccl["world_size"]) == ("cuda", "nccl", 1)
    assert (plain["device"], plain["backend"]) == ("cuda", None)
    assert lrs(tmp_path / "nccl") == lrs(tmp_path / "plain")
    assert losses(tmp_path / "nccl") == pytest.approx(losses(tmp_path / "plain"), rel=1e-4, abs=1e-6)


@needs_gpu
def test_sharded_on_one_gpu_in_bf16_resumes_exactly_and_is_timed_against_ddp(tmp_path, corpus, record_property):
    """distributed.shard=fsdp2 on one GPU (world size 1, NCCL): bf16 parameters with fp32 gradient reduction
    (FSDP2's MixedPrecisionPolicy), killed and resumed bit-identically with deterministic kernels; its tokens/s
    beside the unsharded run's on the same GPU (recorded in the report)."""
    args = (*tiny_args(corpus, 40, "train.mixed_precision=bf16", "train.checkpoint_every=10",
                       "train.deterministic=true"), "imports=[plugins.pace]")
    run_train(*args, f"output_dir={tmp_path / 'ddp'}", env=plugin_env())
    reference = tmp_path / "sharded"
    run_train(*args, "distributed.shard=fsdp2", f"output_dir={reference}", env=plugin_env())
    assert lrs(reference) == lrs(tmp_path / "ddp")
    out = tmp_path / "killed"
    run = Launched((*args, "distributed.shard=fsdp2"), out, FT_PACE_S="0.05")
    wait_for_step(run, 15)
    run.kill_group()
    run.finish()
    rc, stdout, stderr = Launched((*args, "distributed.shard=fsdp2"), out).finish(timeout=300)
    assert rc == 0 and "resumed from" in stdout, stderr[-3000:]
    assert_same_training(reference, out)
    for name in ("ddp", "sharded"):
        rates = [r["tokens_per_s"] for s, r in train_rows(tmp_path / name).items() if s > 10 and "tokens_per_s" in r]
        record_property(f"tokens_per_s_{name}", round(sorted(rates)[len(rates) // 2]))


# ------------------------------------------------------------------------------------------------
# two GPUs, NCCL
# ------------------------------------------------------------------------------------------------


@needs_two
def test_two_gpus_give_the_one_gpu_lr_column_and_equal_replicas(tmp_path):
    args = ("--config", "configs/default.yaml", *QUIET, "train.max_steps=60", "train.log_every=1",
            "distributed.sync_check_every=5")
    run_train(*args, f"output_dir={tmp_path / 'one'}")
    run_train(*args, f"output_dir={tmp_path / 'two'}", launcher="accelerate", nproc=2, timeout=600)
    summary = read_summary(tmp_path / "two")
    assert summary["world_size"] == 2 and len(set(summary["replica_digests"])) == 1
    assert lrs(tmp_path / "two") == lrs(tmp_path / "one")


@needs_two
def test_two_sharded_gpus_give_the_one_gpu_lr_column_and_close_weights(tmp_path, corpus):
    args = tiny_args(corpus, 24, "train.mixed_precision=bf16")
    run_train(*args, f"output_dir={tmp_path / 'one'}")
    run_train(*args, "distributed.shard=fsdp2", f"output_dir={tmp_path / 'two'}", launcher="accelerate", nproc=2,
              timeout=600)
    summary = read_summary(tmp_path / "two")
    assert (summary["world_size"], summary["backend"]) == (2, "nccl") and len(set(summary["replica_digests"])) == 1
    assert lrs(tmp_path / "two") == lrs(tmp_path / "one")
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), rel=2e-2)


@needs_two
def test_sigterm_to_one_gpu_rank_stops_both_at_the_same_update(tmp_path):
    args = ("--config", "configs/default.yaml", "imports=[plugins.pace]", *QUIET, "train.max_steps=400",
            "train.log_every=2")
    run = Launched(args, tmp_path / "run", nproc=2, FT_PACE_S="0.02")
    wait_for_step(run, 20)
    os.kill(run.workers(2)[1].pid, signal.SIGTERM)
    rc, stdout, stderr = run.finish(timeout=120)
    assert rc == 0 and "stopped by signal" in stdout, stderr[-3000:]
    time.sleep(0.1)
    rc, stdout, stderr = Launched(args, tmp_path / "run", nproc=2).finish(timeout=600)
    assert rc == 0 and "resumed from" in stdout, stderr[-3000:]


@pytest.mark.skipif(GPUS > 0, reason="checks the no-CUDA path of the script")
def test_gpu_check_says_in_one_line_that_there_is_no_gpu_and_exits_0():
    import subprocess

    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh")], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0
    assert proc.stdout.strip().splitlines() == [proc.stdout.strip()] and "no CUDA device" in proc.stdout
