"""No traceback for any input, no hang on a stuck rank, one run per output_dir, no lost checkpoint on a full disk.

1. Any override of any key, with values of every kind, ends in success or exit 2 with one `error:` line
   naming a key, and leaves an existing output_dir as it was (hypothesis, in-process through the CLI's
   own `run`, up to `preflight`: everything that can reject a config before training); a few real
   subprocess cases besides, and under `accelerate launch` the line is printed once.
2. A rank stopped with SIGSTOP makes the other fail within `distributed.timeout_s`, naming the collective.
3. A second run on a live run's output_dir stops at once (exit 2, naming host and pid); a dead run's lock
   is taken over with a note.
4. A checkpoint write that fails (ENOSPC, EROFS, EACCES) stops the run with one line, the newest complete
   checkpoint intact (the end-to-end run, resumed bit-identically after, is in test_fault_tolerance.py).
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import signal
import tempfile
import time
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from template.cli import run
from template.config import Config, _schema_keys
from template.errors import CheckpointWriteError
from template.runtime.checkpoint import complete_checkpoints, save_checkpoint
from template.runtime.run_lock import LOCK_FILE, RunLock
from template.trainer import train

from conftest import ROOT, run_train
from harness import Launched, plugin_env, wait_for_step

SEED = str(ROOT / "configs" / "seed_builtin.yaml")
QUIET = ("train.progress=false", "train.plots=false", "tracking.wandb=false")

# ------------------------------------------------------------------------------------------------
# 1. every input path: exit 0 or exit 2 with one error line
# ------------------------------------------------------------------------------------------------

SCHEMA_KEYS = _schema_keys(OmegaConf.structured(Config))
COMPONENT_KEYS = ["model.kwargs.in_features", "model.kwargs.hidden", "model.kwargs.depth", "data.kwargs.size",
                  "data.kwargs.noise", "loss.kwargs.reduction", "optimizer.kwargs.factor", "optimizer.kwargs.seed",
                  "scheduler.kwargs.step_size", "scheduler.kwargs.gamma", "optimizer.groups.0.params"]
UNKNOWN_KEYS = ["nope", "train.nope", "model.kwargs.nope", "train.max_steps.deeper", "a.b.c", "train..x"]
NASTY = ["", " ", "0", "-1", "-5", "1e308", "-1e308", "nan", ".nan", "inf", "-.inf", "2147483648",
         "9223372036854775808", "1e-320", "0.5", "true", "no", "null", "~", "[", "]", "[1", "{", "{a: 1",
         "{a: [1, 2]}", "[1]*10**9", "'", '"', "a: b", "- a", "x" * 5000, "ünïcödé ✓", "\x00", "a\x00b",
         "${oops}", "${train.max_steps}", "!!python/object/apply:os.system ['true']", "&anchor", "*alias",
         "%YAML 1.2", "#comment", "@", "`", "\\", "/", "..", "[[[[[[[[[[", "{{}}", "[1, 2, 3]", "{}", "[]",
         "adam", "StepLR", "mlp", "bf16", "fp16", "auto", "none", "3", "1", "2"]
VALUES = st.one_of(st.sampled_from(NASTY), st.text(max_size=12), st.integers(-50, 300).map(str),
                   st.floats(allow_nan=True, allow_infinity=True).map(repr))
OVERRIDES = st.lists(st.tuples(st.sampled_from(SCHEMA_KEYS + COMPONENT_KEYS + UNKNOWN_KEYS), VALUES),
                     min_size=1, max_size=3)
PRECIOUS = tempfile.mkdtemp(prefix="precious-")  # an existing output_dir that no bad input may touch


def snapshot(root: Path) -> dict[str, tuple[bool, bytes | None]]:
    return {str(p.relative_to(root)): (p.is_dir(), None if p.is_dir() else p.read_bytes())
            for p in [root, *sorted(root.rglob("*"))]}


EXAMPLES = int(os.environ.get("HYPOTHESIS_EXAMPLES", "80"))  # HYPOTHESIS_EXAMPLES=5000 for a deeper search


def train_a_few_updates(cfg: Config, args: object) -> None:
    """train() itself on what the config checks let through: what a run can still reject is tested too."""
    cfg.train.max_steps, cfg.train.max_samples = min(cfg.train.max_steps, 4), None
    train(cfg)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(OVERRIDES)
def test_any_override_ends_in_success_or_one_error_line(overrides):
    """Through the config checks AND a few updates of train(): exit 0, or exit 2 (1 for a run that fails
    while training, e.g. a loss that overflows) with exactly one `error:` line and nothing else on stderr;
    an exit 2 leaves the existing output_dir untouched."""
    out = Path(tempfile.mkdtemp(dir=PRECIOUS)) / "out"
    out.mkdir()
    (out / "metrics.jsonl").write_text("precious\n")
    before = snapshot(out)
    argv = ["--config", SEED, f"output_dir={out}", *(f"{k}={v}" for k, v in overrides), *QUIET]
    stderr, code = io.StringIO(), 0
    deterministic = torch.are_deterministic_algorithms_enabled()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        try:
            run(train_a_few_updates, "t", argv)  # any other exception fails the test
        except SystemExit as exc:
            code = exc.code
        finally:
            torch.use_deterministic_algorithms(deterministic)  # train.deterministic=true sets it process-wide
    lines = stderr.getvalue().splitlines()
    assert code in (0, 1, 2), (code, stderr.getvalue())
    if code:
        assert len(lines) == 1 and lines[0].startswith("error: "), (code, stderr.getvalue())
    else:
        assert not [line for line in lines if line.startswith("error: ")], stderr.getvalue()
    if code == 2:
        assert snapshot(out) == before
    else:
        assert (out / "metrics.jsonl").read_text().startswith("precious\n")  # appended to, never overwritten


@pytest.mark.e2e
@pytest.mark.parametrize(("args", "fragment"), [
    (["optimizer.lr=[0.1"], "error: optimizer.lr: cannot parse the value '[0.1' as YAML"),
    (["model.kwargs.hidden=-5"], "error: model.kwargs: model 'mlp': RuntimeError: Trying to create tensor with "
                                 "negative dimension"),
])
def test_real_script_bad_values_exit_2_with_one_line(tmp_path, args, fragment):
    proc = run_train("--config", "configs/default.yaml", *args, f"output_dir={tmp_path / 'o'}", check=False)
    assert proc.returncode == 2 and proc.stderr.strip().startswith(fragment), proc.stderr[-3000:]
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


@pytest.mark.e2e
@pytest.mark.ddp
def test_under_accelerate_launch_the_error_line_is_printed_once(tmp_path):
    proc = run_train("--config", SEED, "model.kwargs.theta=[1, 2]", f"output_dir={tmp_path / 'o'}",
                     launcher="accelerate", nproc=2, check=False)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith("error: model.kwargs: model 'linear'"), proc.stderr[-3000:]
    # the launcher's own failure summary names it as the root cause (torch elastic's error file)
    summary = proc.stderr[proc.stderr.index("Root Cause"):]
    assert f"traceback : {errors[0]}" in summary, proc.stderr[-3000:]


def test_an_output_dir_that_cannot_be_created_is_a_config_error(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(SystemExit) as exit_info:
        run(lambda cfg, args: train(cfg), "t", ["--config", SEED, f"output_dir={blocker / 'out'}", *QUIET])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith(f"error: output_dir: cannot create or write {blocker / 'out'}")


# ------------------------------------------------------------------------------------------------
# 2. a stuck rank
# ------------------------------------------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.ddp
def test_a_stopped_rank_fails_the_job_within_the_timeout_naming_the_collective(tmp_path):
    out = tmp_path / "stuck"
    args = ("--config", SEED, "imports=[plugins.pace]", *QUIET, "train.max_steps=400", "train.log_every=2",
            "distributed.timeout_s=3")
    launched = Launched(args, out, nproc=2, FT_PACE_S="0.02")
    victim: int | None = None
    try:
        wait_for_step(launched, 10)
        victim = launched.workers(2)[1].pid
        os.kill(victim, signal.SIGSTOP)
        stopped = time.monotonic()
        stderr = launched._stderr
        deadline = stopped + 60
        while time.monotonic() < deadline:
            stderr.seek(0)
            text = stderr.read()
            if "timed out" in text and "error: rank 0:" in text:
                break
            time.sleep(0.1)
        waited = time.monotonic() - stopped
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(launched.proc.pid, signal.SIGCONT)
        if victim is not None:  # the elastic agent may be gone before it kills the stopped rank: never leave it
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
        launched.kill_group()
        launched.proc.wait()
    line = next(line for line in text.splitlines() if line.startswith("error: rank 0:"))
    assert waited < 3 + 15, f"rank 0 took {waited:.1f} s to give up"
    assert "all-reduce" in line or "all_reduce" in line or "barrier" in line, line
    assert "distributed.timeout_s" in line and "rerun the same command" in line


# ------------------------------------------------------------------------------------------------
# 3. one run per output_dir
# ------------------------------------------------------------------------------------------------


def test_the_lock_refuses_a_second_holder_and_takes_over_from_a_dead_one(tmp_path):
    first, second = RunLock(tmp_path), RunLock(tmp_path)
    assert first.acquire() is None
    with pytest.raises(Exception, match=f"in use by a running training \\(host .* pid {os.getpid()}\\)"):
        second.acquire()
    first.release()
    assert (tmp_path / LOCK_FILE).read_text() == ""  # released: nothing left to take over
    assert second.acquire() is None
    second.release()
    (tmp_path / LOCK_FILE).write_text("host elsewhere pid 99999999\n")  # a run killed with -9 left this
    third = RunLock(tmp_path)
    assert "took over the lock of a run that is no longer running (host elsewhere pid 99999999)" in third.acquire()
    third.release()


@pytest.mark.e2e
def test_a_second_training_on_a_live_runs_output_dir_stops_at_once(tmp_path):
    out = tmp_path / "busy"
    args = ("--config", SEED, "imports=[plugins.pace]", *QUIET, "train.max_steps=1000", "train.log_every=1")
    first = Launched(args, out, FT_PACE_S="0.05")
    wait_for_step(first, 3)
    started = time.monotonic()
    proc = run_train(*args, f"output_dir={out}", check=False, env=plugin_env())
    assert time.monotonic() - started < 30
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().startswith(f"error: output_dir: {out} is in use by a running training (host ")
    assert f"pid {first.proc.pid}" in proc.stderr
    assert first.alive()
    first.proc.send_signal(signal.SIGTERM)  # the first run was not disturbed: it stops as asked, lock released
    rc, stdout, stderr = first.finish()
    assert rc == 0 and "stopped by signal" in stdout, stderr[-3000:]
    assert (out / LOCK_FILE).read_text() == ""


# ------------------------------------------------------------------------------------------------
# 4. a checkpoint that cannot be written
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_a_failed_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch, code):
    accelerator = Accelerator(cpu=True)
    model = accelerator.prepare(torch.nn.Linear(2, 2))
    first = save_checkpoint(accelerator, tmp_path, 5, {"step": 5}, keep=2)
    before = {p.name: p.read_bytes() for p in first.iterdir()}

    def failing_save_state(output_dir: str, **kwargs: object) -> None:
        (Path(output_dir) / "model.safetensors").write_bytes(b"half")
        raise OSError(code, os.strerror(code), output_dir)

    monkeypatch.setattr(accelerator, "save_state", failing_save_state)
    with pytest.raises(CheckpointWriteError) as info:
        save_checkpoint(accelerator, tmp_path, 10, {"step": 10}, keep=1)
    message = str(info.value)
    assert os.strerror(code) in message and ".tmp-step_00000010" in message
    assert f"the newest complete checkpoint, {first}, is intact" in message and "rerun" in message
    assert complete_checkpoints(tmp_path) == [first]
    assert {p.name: p.read_bytes() for p in first.iterdir()} == before
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))  # the partial write is gone
    del model
