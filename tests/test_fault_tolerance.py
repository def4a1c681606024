"""Fault tolerance and bad input, with real processes: kills at any point (2 ranks too), kills in the middle
of a checkpoint write, corrupt and incompatible checkpoints, SIGTERM/SIGUSR1 (to one rank only under DDP),
NaN in the data under both `train.nonfinite` policies.

"Bit-identical" means: the same model.safetensors bytes, the same param_digest, and the same last
metrics.jsonl row for every step (all keys but `samples_per_s`, a wall-clock measurement) as one
uninterrupted run of the same command. The uninterrupted references (`ref_one`, `ref_two`) are made
once per module. Faults come from test plugins loaded through the config's `imports:` (tests/plugins/):
`pace` slows updates so a signal or a kill lands mid-training, `crash_in_save` SIGKILLs the process
inside a checkpoint write, `poisoned_data` puts NaN targets at chosen samples.
"""

from __future__ import annotations

import re
import shutil
import signal
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from template.data import GlobalBatchSampler
from template.runtime.checkpoint import TRAINER_STATE, checkpoint_root, complete_checkpoints, write_checksums
from template.runtime.run_lock import LOCK_FILE

from conftest import read_metrics, read_summary, train_rows
from harness import Launched, assert_same_training, last_logged_step, train, train_here, wait_for_step

pytestmark = pytest.mark.e2e
SEED = "configs/seed_builtin.yaml"  # the tutorial's linear model, StepLR(10, 0.5) from lr 0.1
PLUGINS = "imports=[plugins.pace,plugins.crash_in_save,plugins.poisoned_data]"
QUIET = ("train.progress=false", "train.plots=false", "tracking.wandb=false")
# 1 process: 40 updates, every one logged, a checkpoint every 5th, the newest 2 kept
ONE = ("--config", SEED, PLUGINS, *QUIET, "train.max_steps=40", "train.log_every=1", "train.checkpoint_every=5",
       "train.keep_checkpoints=2")
# 2 processes (gloo): 60 updates, logged (and a stop request agreed on) every 3rd, a checkpoint every 6th
TWO = ("--config", SEED, PLUGINS, *QUIET, "train.max_steps=60", "train.log_every=3", "train.checkpoint_every=6",
       "train.keep_checkpoints=2")
DATASET_SIZE, GLOBAL_BATCH = 1024, 32  # seed_builtin's data and batch: 32 updates per epoch


# ------------------------------------------------------------------------------------------------
# What the runs left behind
# ------------------------------------------------------------------------------------------------


def steps_of(out: Path) -> list[int]:
    """The complete checkpoints, by update."""
    return [int(p.name.removeprefix("step_")) for p in complete_checkpoints(out)]


def ckpt(out: Path, step: int) -> Path:
    return checkpoint_root(out) / f"step_{step:08d}"


def flip_byte(path: Path, offset: int = -16) -> None:
    """Flip one bit of a byte near the end (inside the last tensor's data for a safetensors file)."""
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def truncate(path: Path, size: int | None = None) -> None:
    with path.open("r+b") as f:
        f.truncate(path.stat().st_size // 2 if size is None else size)


def snapshot(root: Path) -> dict[str, tuple[Any, ...]]:
    """Every path under root (root included) with its mtime and, for files, its bytes. The run's lock file
    is compared by its bytes alone: a run must hold the lock before it reads a checkpoint, so a refused
    resume writes and empties it (template/runtime/run_lock.py); nothing else may change."""
    return {str(p.relative_to(root)): (p.is_dir(), None if p.name == LOCK_FILE else p.stat().st_mtime_ns,
                                       None if p.is_dir() else p.read_bytes())
            for p in [root, *sorted(root.rglob("*"))]}


def one_error_line(stderr: str, prefix: str) -> str:
    """stderr is exactly one `error: ...` line starting with `prefix`, and no traceback."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(prefix), stderr[-6000:]
    return lines[0]


def all_finite(path: Path) -> bool:
    return all(torch.isfinite(t).all() for t in load_file(path).values())


def poison(updates: Iterable[int], total: int, nproc: int = 1, rank: int = 0) -> list[int]:
    """For each update in `updates`, one training sample that update `u` gives to `rank` and that no other
    update up to `total` uses: a NaN target there makes exactly those updates non-finite."""
    sampler = GlobalBatchSampler(DATASET_SIZE, GLOBAL_BATCH, 1, 1, 0, seed=0)  # whole global batches
    batches = [b.tolist() for b, _ in zip(sampler.index_tensors(), range(total), strict=False)]
    per_rank = GLOBAL_BATCH // nproc
    chosen = []
    for u in updates:
        others = {i for k, b in enumerate(batches, 1) if k != u for i in b}
        chosen.append(next(i for i in batches[u - 1][rank * per_rank:(rank + 1) * per_rank] if i not in others))
    return chosen


def poisoned(samples: list[int]) -> tuple[str, ...]:
    return ("data.name=poisoned_linear", f"data.kwargs.poison=[{','.join(map(str, samples))}]")


# ------------------------------------------------------------------------------------------------
# Uninterrupted references
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ref_one(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref_one")
    train_here(ONE, out)
    return out


@pytest.fixture(scope="module")
def ref_two(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref_two")
    train(TWO, out, nproc=2)
    assert len(set(read_summary(out)["replica_digests"])) == 1
    return out


# ------------------------------------------------------------------------------------------------
# 1. kill -9 under 2 processes
# ------------------------------------------------------------------------------------------------


# kill -9 of two processes mid-run, at a random point, then a bit-identical resume: tests/test_exact_resume.py
# (with dropout and global random draws, the hardest case) and tests/test_missing_runs.py (with accumulation
# and the samples clock).


# ------------------------------------------------------------------------------------------------
# 2. killed in the middle of a checkpoint write
# ------------------------------------------------------------------------------------------------


def test_kill_while_writing_a_checkpoint_leaves_only_an_ignored_tmp(ref_one, tmp_path):
    out = tmp_path / "run"
    # Killed inside save_state of update 15: a half-written hidden directory, the older checkpoints intact.
    train(ONE, out, expect=-signal.SIGKILL, FT_CRASH="save_state:15")
    tmp15 = checkpoint_root(out) / ".tmp-step_00000015"
    assert tmp15.is_dir() and not (tmp15 / TRAINER_STATE).exists()
    assert steps_of(out) == [5, 10]
    # Even named explicitly, a temporary directory is not a checkpoint.
    before = snapshot(out)
    _, stderr = train_here((*ONE, f"train.resume={tmp15}"), out, expect=2)
    assert "is not a complete checkpoint" in one_error_line(stderr, "error: train.resume: ")
    assert snapshot(out) == before

    # Killed after everything of update 25, trainer.pt included, was written, just before the rename.
    stdout, _ = train(ONE, out, expect=-signal.SIGKILL, FT_CRASH="rename:25")
    assert f"resumed from {ckpt(out, 10)} at update 10" in stdout
    tmp25 = checkpoint_root(out) / ".tmp-step_00000025"
    assert (tmp25 / TRAINER_STATE).is_file() and not tmp15.exists()  # the stale one was replaced on the way
    assert steps_of(out) == [15, 20]

    stdout, _ = train_here(ONE, out)
    assert f"resumed from {ckpt(out, 20)} at update 20" in stdout  # not from the unrenamed .tmp-step_00000025
    assert steps_of(out) == [35, 40]
    assert_same_training(ref_one, out)


def test_disk_full_mid_checkpoint_stops_cleanly_and_a_rerun_resumes_exactly(ref_one, tmp_path):
    """ENOSPC while checkpoint 10 is written: one error line, checkpoint 5 intact, the same command resumes."""
    out = tmp_path / "full"
    _, stderr = train(ONE, out, expect=1, FT_CRASH="ENOSPC:10")
    line = one_error_line(stderr, f"error: cannot write checkpoint {ckpt(out, 10).with_name('.tmp-step_00000010')}: ")
    assert "No space left on device" in line and f"{ckpt(out, 5)}, is intact" in line and "rerun" in line
    assert steps_of(out) == [5] and not list(checkpoint_root(out).glob(".tmp-*"))
    stdout, _ = train_here(ONE, out)  # space freed: the same command
    assert f"resumed from {ckpt(out, 5)}" in stdout
    assert_same_training(ref_one, out)


# ------------------------------------------------------------------------------------------------
# 3. corrupt checkpoints, resume paths that are not checkpoints
# ------------------------------------------------------------------------------------------------


def test_corrupt_newest_checkpoints_are_reported_and_skipped(ref_one, tmp_path):
    out = tmp_path / "run"
    keep3 = (*ONE, "train.keep_checkpoints=3")
    train_here((*keep3, "train.max_steps=30"), out)
    assert steps_of(out) == [20, 25, 30]
    truncate(ckpt(out, 30) / "model.safetensors", 10)  # even its header is gone
    flip_byte(ckpt(out, 25) / "model.safetensors")  # inside a tensor: it would load silently as a wrong weight

    # Named explicitly, a damaged checkpoint is an error; nothing in output_dir changes.
    before = snapshot(out)
    _, stderr = train_here((*keep3, f"train.resume={ckpt(out, 25)}"), out, expect=2)
    line = one_error_line(stderr, "error: train.resume: ")
    assert "no intact checkpoint" in line and "step_00000025" in line
    _, stderr = train_here((*keep3, f"train.resume={checkpoint_root(out)}"), out, expect=2)
    assert "is not a complete checkpoint" in one_error_line(stderr, "error: train.resume: ")
    assert snapshot(out) == before

    stdout, _ = train_here(keep3, out)
    warnings = [line for line in stdout.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2
    assert f"checkpoint {ckpt(out, 30)} is damaged: model.safetensors does not match its checksum" in warnings[0]
    assert f"checkpoint {ckpt(out, 25)} is damaged: model.safetensors does not match its checksum" in warnings[1]
    assert f"resumed from {ckpt(out, 20)} at update 20" in stdout
    assert_same_training(ref_one, out)


def test_intact_bytes_that_fail_to_load_are_skipped_and_a_part_way_load_is_never_trained_on(ref_one, tmp_path):
    """Checksums catch damage; a file written wrong in the first place (here: a truncated optimizer file whose
    checksum was recorded as it is) still fails in Accelerate's load_state, part-way, after the model."""
    out = tmp_path / "run"
    keep3 = (*ONE, "train.keep_checkpoints=3")
    train_here((*keep3, "train.max_steps=30"), out)
    truncate(ckpt(out, 30) / "optimizer.bin")
    write_checksums(ckpt(out, 30))  # as if it had been written that way
    stdout, _ = train_here(keep3, out)
    assert f"checkpoint {ckpt(out, 30)} is unreadable" in stdout
    assert f"resumed from {ckpt(out, 25)} at update 25" in stdout
    assert_same_training(ref_one, out)
    truncate(ckpt(out, 40) / "optimizer.bin")
    write_checksums(ckpt(out, 40))
    _, stderr = train_here((*keep3, f"train.resume={ckpt(out, 40)}"), out, expect=2)
    assert "failed part-way through loading" in one_error_line(stderr, "error: train.resume: ")


def test_no_intact_checkpoint_is_exit_2_and_keep_1_never_deletes_the_only_good_one(ref_one, tmp_path):
    out = tmp_path / "run"
    keep1 = (*ONE, "train.keep_checkpoints=1")
    train_here((*keep1, "train.max_steps=20"), out)
    assert steps_of(out) == [20]
    truncate(ckpt(out, 20) / TRAINER_STATE)
    # No intact checkpoint: the user decides to start over, not the template.
    before = snapshot(out)
    _, stderr = train_here(keep1, out, expect=2)
    assert "no intact checkpoint" in one_error_line(stderr, "error: train.resume: ")
    assert snapshot(out) == before
    # Started over by hand, killed while writing update 15's checkpoint.
    train((*keep1, "train.resume=none"), out, expect=-signal.SIGKILL, FT_CRASH="save_state:15")
    assert steps_of(out) == [10, 20]  # the damaged step_20 did not push out the good step_10
    stdout, _ = train_here(keep1, out)
    assert f"checkpoint {ckpt(out, 20)} is damaged" in stdout
    assert f"resumed from {ckpt(out, 10)} at update 10" in stdout
    assert steps_of(out) == [40]
    assert_same_training(ref_one, out)


@pytest.mark.ddp
def test_checkpoint_unreadable_on_one_rank_only_is_skipped_by_both(ref_two, tmp_path):
    """rank 1's own file (its RNG state) is corrupt: both ranks must agree to resume from the previous
    checkpoint, or the ranks would resume at different updates."""
    out = tmp_path / "copy"
    shutil.copytree(ref_two, out)
    assert steps_of(out) == [54, 60]
    truncate(ckpt(out, 60) / "rank_1.pt")
    (out / "model.safetensors").unlink()
    stdout, _ = train(TWO, out, nproc=2)
    assert f"checkpoint {ckpt(out, 60)} is damaged: rank_1.pt does not match its checksum" in stdout
    assert f"resumed from {ckpt(out, 54)} at update 54" in stdout
    assert_same_training(ref_two, out)


# ------------------------------------------------------------------------------------------------
# 4. a checkpoint of another model
# ------------------------------------------------------------------------------------------------


def test_resume_with_a_different_model_width_is_one_error_line_and_touches_nothing(tmp_path):
    out = tmp_path / "run"
    mlp = ("model.name=mlp", "train.max_steps=5", "train.checkpoint_every=5")
    train_here((*ONE, *mlp, "model.kwargs={in_features: 1, hidden: 8, depth: 2}"), out)
    before = snapshot(out)
    _, stderr = train((*ONE, *mlp, "model.kwargs={in_features: 1, hidden: 16, depth: 2}", "tracking.wandb=true"),
                      out, expect=2)
    line = one_error_line(stderr, "error: model.kwargs.hidden: changed since the checkpoint")
    assert "(8 -> 16)" in line and str(checkpoint_root(out)) in line
    assert snapshot(out) == before
    # the same config over weights of another shape (model code changed in a fork): the shapes are compared
    _, stderr = train((*ONE, *mlp, "model.kwargs={in_features: 1, hidden: 8, depth: 2}", "imports=[plugins.wider]"),
                      out, expect=2)
    line = one_error_line(stderr, "error: train.resume: ")
    assert "'net.0.weight' has shape [8, 1] there but [16, 1] in this config" in line
    assert str(ckpt(out, 5)) in line
    assert snapshot(out) == before


# ------------------------------------------------------------------------------------------------
# 5. SIGTERM / SIGUSR1
# ------------------------------------------------------------------------------------------------


def test_sigterm_and_sigusr1_stop_at_the_update_checkpoint_and_resume_bit_identical(ref_one, tmp_path):
    out = tmp_path / "run"
    for sig, after in ((signal.SIGTERM, 8), (signal.SIGUSR1, 24)):
        run = Launched(ONE, out, FT_PACE_S="0.05")
        signalled_at = wait_for_step(run, after)
        assert run.alive() and signalled_at < 40
        run.proc.send_signal(sig)
        rc, stdout, stderr = run.finish(timeout=60)
        assert rc == 0, stderr[-6000:]
        match = re.search(rf"stopped by signal {int(sig)} after update (\d+); checkpoint saved", stdout)
        assert match, stdout + stderr
        stopped = int(match.group(1))
        assert signalled_at <= stopped <= signalled_at + 10  # the update in flight (the poll lags a little)
        assert last_logged_step(out) == stopped and steps_of(out)[-1] == stopped
        assert torch.load(ckpt(out, stopped) / TRAINER_STATE, weights_only=True)["step"] == stopped
        assert not (out / "model.safetensors").exists()  # stopped, not finished
    stdout, _ = train_here(ONE, out)
    assert f"resumed from {ckpt(out, stopped)}" in stdout
    assert_same_training(ref_one, out)


@pytest.mark.ddp
def test_sigterm_to_one_rank_stops_both_ranks_at_the_same_update(ref_two, tmp_path):
    out = tmp_path / "run"
    run = Launched(TWO, out, nproc=2, FT_PACE_S="0.05")
    workers = run.workers(2)
    signalled_at = wait_for_step(run, 12)
    assert run.alive() and signalled_at < 60
    workers[1].send_signal(signal.SIGTERM)  # rank 1 only: rank 0 learns it at the next log step
    rc, stdout, stderr = run.finish(timeout=60)  # a rank stopping alone would leave the other hanging
    assert rc == 0, stderr[-6000:]  # the launcher exits 0 only when both ranks did
    match = re.search(r"stopped by signal on another rank after update (\d+); checkpoint saved", stdout)
    assert match, stdout + stderr
    stopped = int(match.group(1))
    assert stopped % 3 == 0 and signalled_at <= stopped <= signalled_at + 12  # a log step, soon after
    assert steps_of(out)[-1] == stopped and last_logged_step(out) == stopped
    assert not list(checkpoint_root(out).glob(".tmp-*"))
    assert not (out / "model.safetensors").exists()
    stdout, _ = train(TWO, out, nproc=2)
    assert f"resumed from {ckpt(out, stopped)} at update {stopped}" in stdout
    assert_same_training(ref_two, out)


# ------------------------------------------------------------------------------------------------
# 6. NaN in the data
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("log_every, caught_by", [(1, "non-finite loss nan at update 7"),
                                                  (40, "parameter 'theta' is non-finite")])
def test_nonfinite_stop_exits_1_and_never_saves_nan(tmp_path, log_every, caught_by):
    """NaN at update 7: caught where the loss is read (every update logged), or else before the save at 10."""
    out = tmp_path / "run"
    _, stderr = train_here((*ONE, *poisoned(poison([7], 40)), f"train.log_every={log_every}"), out, expect=1)
    line = one_error_line(stderr, "error: ")
    assert "non-finite" in line and caught_by in line
    assert steps_of(out) == [5]  # the last good state
    assert all_finite(ckpt(out, 5) / "model.safetensors")
    assert not (out / "model.safetensors").exists()
    assert not list(checkpoint_root(out).glob(".tmp-*"))
    if log_every == 1:
        assert last_logged_step(out) == 6


def expected_skip_columns(steps: Iterable[int], skipped: set[int]) -> dict[int, tuple[float, int]]:
    """(lr, skipped_updates) per step when the skipped updates do not advance StepLR(10, 0.5) from 0.1."""
    columns = {}
    for s in steps:
        applied_before = s - 1 - sum(k < s for k in skipped)
        columns[s] = (0.1 * 0.5 ** (applied_before // 10), sum(k <= s for k in skipped))
    return columns


def skip_columns(out: Path) -> dict[int, tuple[float, int]]:
    return {s: (r["lr"], r["skipped_updates"]) for s, r in train_rows(out).items()}


@pytest.mark.parametrize("strategy", ["builtin", "manual"])
def test_nonfinite_skip_skips_those_updates_and_holds_the_schedule(tmp_path, strategy):
    """NaN at updates 3 and 7: both skipped and counted, the lr stays 0.1 until update 12 (the 10th applied
    update), for a torch scheduler and a manual param_group rule alike; the manual run is also resumed
    after update 10, so the count and the schedule's clock come back from the checkpoint."""
    out = tmp_path / "run"
    args = ("--config", f"configs/seed_{strategy}.yaml", *ONE[2:], "train.nonfinite=skip",
            *poisoned(poison([3, 7], 40)))
    if strategy == "manual":
        train_here((*args, "train.max_steps=10"), out)
    train_here(args, out)
    columns = skip_columns(out)
    assert columns == expected_skip_columns(range(1, 41), {3, 7})
    assert [columns[s][0] for s in (1, 12, 13, 22, 23)] == [0.1, 0.1, 0.05, 0.05, 0.025]
    assert columns[40][1] == 2
    rows = train_rows(out)
    assert all((r["loss"] != r["loss"]) == (s in (3, 7)) for s, r in rows.items())  # NaN exactly there
    assert all_finite(out / "model.safetensors")
    assert all(all_finite(p / "model.safetensors") for p in complete_checkpoints(out))


@pytest.mark.ddp
def test_nonfinite_skip_on_one_rank_is_skipped_by_both(tmp_path):
    """The NaN samples land on rank 1 only: the all-reduced gradient is NaN on both, both skip."""
    out = tmp_path / "run"
    train((*TWO, "train.nonfinite=skip", *poisoned(poison([3, 7], 60, nproc=2, rank=1))), out, nproc=2)
    assert skip_columns(out) == expected_skip_columns(range(3, 61, 3), {3, 7})
    summary = read_summary(out)
    assert len(set(summary["replica_digests"])) == 1
    assert all_finite(out / "model.safetensors")
    assert not any(r.get("skipped_updates") is None for r in read_metrics(out))
