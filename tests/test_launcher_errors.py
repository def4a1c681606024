"""Under a launcher, the error is what the user reads: one line per failure, named in the launcher's summary.

A rank that dies (SIGKILL, out of memory) leaves the others in a collective: gloo raises a long C++ trace
there; the survivors say one line instead. A checkpoint write that fails on rank 1 (not 0) stops every rank
with one line naming rank 1's cause, and the newest complete checkpoint stays intact. A compiler that fails
at the first forward (after the preflight check passed) is exit 2 with one line.
"""

from __future__ import annotations

import signal

import pytest

from conftest import ROOT, run_train
from harness import Launched, expect_exit, plugin_env, train, wait_for_step

SEED = str(ROOT / "configs" / "seed_builtin.yaml")
QUIET = ("train.progress=false", "train.plots=false", "tracking.wandb=false")
TWO = ("--config", SEED, "imports=[plugins.crash_in_save]", *QUIET, "train.max_steps=24", "train.log_every=1",
       "train.checkpoint_every=6")


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


@pytest.mark.ddp
def test_a_rank_that_dies_leaves_one_line_from_each_survivor_and_the_job_resumes(tmp_path):
    out = tmp_path / "run"
    run = Launched((*TWO, "train.max_steps=100000", "train.checkpoint_every=20"), out, nproc=2)
    workers = run.workers(2)
    wait_for_step(run, 25)
    workers[1].send_signal(signal.SIGKILL)
    rc, _, stderr = run.finish()
    assert rc != 0
    lines = error_lines(stderr)
    assert len(lines) == 1 and lines[0].startswith("error: rank 0: lost a peer process"), stderr[-4000:]
    assert "Traceback" not in stderr[: stderr.index("Root Cause")].split(lines[0])[0]  # nothing before our line
    assert "rank      : 1 (local_rank: 1)" in stderr and "SIGKILL" in stderr  # the launcher names the dead rank


@pytest.mark.ddp
def test_a_checkpoint_write_failing_on_rank_1_stops_every_rank_with_one_line(tmp_path):
    """(A rerun after such a failure resumes bit-exactly: test_fault_tolerance's disk-full test.)"""
    out = tmp_path / "full"
    _, stderr = train(TWO, out, nproc=2, expect=1, FT_CRASH="ENOSPC:12", FT_CRASH_RANK="1")
    lines = error_lines(stderr)
    assert len(lines) == 1, stderr[-4000:]
    assert lines[0].startswith("error: cannot write checkpoint")
    assert "rank 1: OSError: [Errno 28] No space left" in lines[0]
    assert "step_00000006, is intact" in lines[0]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000006"]


@pytest.mark.e2e
def test_a_compiler_that_fails_at_the_first_forward_is_exit_2_with_one_line(tmp_path):
    proc = run_train("--config", SEED, *QUIET, "imports=[plugins.broken_compiler]", "train.compile=true",
                     "train.max_steps=3", f"output_dir={tmp_path / 'o'}", check=False, env=plugin_env())
    expect_exit(2, proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: train.compile: torch.compile failed"), proc.stderr[-3000:]
    assert "simulated: the C++ compiler crashed" in lines[0]


