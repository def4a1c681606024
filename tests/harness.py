"""Running the real training script as a user would, and comparing what runs left behind.

`Launched` starts scripts/train.py (1 process, or `accelerate launch` of 2) in its own process group, so a
test can signal or kill it anywhere; `assert_same_training` is what "bit-identical to an uninterrupted run"
means: the same model.safetensors bytes, the same param_digest, and the same last metrics.jsonl row for
every step, all keys but the wall-clock measurements.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import psutil
import pytest

from template.runtime.checkpoint import checkpoint_root

from conftest import ROOT, clean_env, launch_command, read_summary, run_here, train_rows

TESTS = Path(__file__).resolve().parent
WALL_CLOCK_KEYS = frozenset({"samples_per_s", "tokens_per_s", "model_flops_per_s", "mfu", "memory/max_rss_gb",
                             "memory/max_allocated_gb", "memory/max_reserved_gb"})  # measurements, not training
PREPARE = ROOT / "scripts" / "prepare_text.py"
STDLIB = Path(sysconfig.get_paths()["stdlib"])
TINY_MODEL = {"vocab_size": 256, "block_size": 32, "n_layer": 2, "n_head": 2, "n_embd": 32}


def tiny_args(data: Path, steps: int = 24, *extra: str) -> tuple[str, ...]:
    """configs/gpt.yaml shrunk to seconds: 2 layers of width 32 on 32-byte windows, batch 8."""
    return ("--config", "configs/gpt.yaml", f"data.kwargs.dir={data}", *(f"model.kwargs.{k}={v}" for k, v in
            TINY_MODEL.items() if k != "vocab_size"), "train.batch_size=8", f"train.max_steps={steps}",
            "train.log_every=1", "train.checkpoint_every=6", "train.eval_every=12", "train.eval_batches=2",
            "scheduler.kwargs.warmup_steps=4", "train.progress=false", "train.plots=false", "tracking.wandb=false",
            *extra)


def prepare(*args: str) -> subprocess.CompletedProcess[str]:
    """scripts/prepare_text.py with these arguments."""
    return subprocess.run([sys.executable, str(PREPARE), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def small_corpus(out: Path) -> Path:
    """Token files of a few hundred kB: two standard-library packages' sources, bytes."""
    proc = prepare("--input", str(STDLIB / "json" / "*.py"), str(STDLIB / "email" / "*.py"), "--out", str(out),
                   "--every", "5")
    assert proc.returncode == 0, proc.stderr
    return out


def plugin_env(**extra: str) -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))
    return clean_env(PYTHONPATH=path, **extra)


class Launched:
    """One run of scripts/train.py (1 process, or `accelerate launch` of 2) in its own process group."""

    def __init__(self, args: Iterable[str], out: Path, nproc: int = 1, **env: str) -> None:
        launcher = "python" if nproc == 1 else "accelerate"
        self.cmd = [*launch_command(launcher, nproc), *args, f"output_dir={out}"]
        self.out = out
        self._stdout = tempfile.TemporaryFile("w+")  # noqa: SIM115 (closed by finish)
        self._stderr = tempfile.TemporaryFile("w+")  # noqa: SIM115
        self.proc = subprocess.Popen(self.cmd, cwd=ROOT, env=plugin_env(**env), stdout=self._stdout,
                                     stderr=self._stderr, text=True, start_new_session=True)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill_group(self) -> None:
        """kill -9 the launcher and every process under it. The process group alone is not enough under
        `accelerate launch` / torchrun: torch's elastic agent starts each rank in a session of its own
        (start_new_session=True in torch/distributed/elastic/multiprocessing/subprocess_handler), so the
        ranks would outlive their launcher and finish the run."""
        try:
            workers = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            workers = []
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        for worker in workers:
            with contextlib.suppress(psutil.NoSuchProcess):
                worker.kill()
        _, alive = psutil.wait_procs(workers, timeout=10)
        assert not alive, f"processes of the run survived kill -9: {alive}"

    def finish(self, timeout: float = 90) -> tuple[int, str, str]:
        """Wait for the exit (a run that hangs is killed, group and all, and the test fails)."""
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill_group()
            self.proc.wait()
            pytest.fail(f"{' '.join(self.cmd)} hung for {timeout} s\n--- stdout ---\n{self.read(self._stdout)}"
                        f"\n--- stderr ---\n{self.read(self._stderr)[-6000:]}")
        self.kill_group()  # nothing of the run may outlive it
        return rc, self.read(self._stdout), self.read(self._stderr)

    @staticmethod
    def read(f: Any) -> str:
        f.seek(0)
        text = f.read()
        f.close()
        return text

    def workers(self, count: int, timeout: float = 60) -> dict[int, psutil.Process]:
        """The training processes the launcher started, by RANK."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.alive():
            found = {}
            for child in psutil.Process(self.proc.pid).children(recursive=True):
                try:
                    if any(part.endswith("train.py") for part in child.cmdline()):
                        found[int(child.environ()["RANK"])] = child
                except (psutil.NoSuchProcess, KeyError):
                    continue
            if len(found) == count:
                return found
            time.sleep(0.05)
        pytest.fail(f"the launcher did not start {count} workers")


def train(args: Iterable[str], out: Path, nproc: int = 1, expect: int = 0, timeout: float = 90,
          **env: str) -> tuple[str, str]:
    """Run to the end; fail unless the exit status is `expect`. Returns (stdout, stderr)."""
    return expect_exit(expect, *Launched(args, out, nproc, **env).finish(timeout))


def train_here(args: Iterable[str], out: Path, expect: int = 0, **env: str) -> tuple[str, str]:
    """`train` in this process (conftest.run_here), for runs that end on their own: no kill, no signal."""
    proc = run_here(*args, f"output_dir={out}", check=False, env=plugin_env(**env))
    return expect_exit(expect, proc.returncode, proc.stdout, proc.stderr)


def expect_exit(expect: int, rc: int, stdout: str, stderr: str) -> tuple[str, str]:
    """Fail, with the run's output, unless it exited `expect`; return (stdout, stderr)."""
    assert rc == expect, (f"exit {rc}, expected {expect}\n--- stdout ---\n{stdout[-3000:]}"
                          f"\n--- stderr ---\n{stderr[-6000:]}")
    return stdout, stderr


def last_logged_step(out: Path) -> int:
    path = out / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    match = re.match(r'\{"step": (\d+)', lines[-1]) if lines else None
    return int(match.group(1)) if match else 0


def wait_for_step(run: Launched, step: int, timeout: float = 60) -> int:
    """Wait until the run has logged update `step` (or has ended); return the last logged update."""
    deadline = time.monotonic() + timeout
    while run.alive() and last_logged_step(run.out) < step:
        if time.monotonic() > deadline:
            run.kill_group()
            pytest.fail(f"no progress to update {step} in {timeout} s")
        time.sleep(0.005)
    return last_logged_step(run.out)


def comparable_rows(out: Path) -> dict[int, dict[str, Any]]:
    """The last training row of each step without its wall-clock measurements."""
    return {s: {k: v for k, v in r.items() if k not in WALL_CLOCK_KEYS} for s, r in train_rows(out).items()}


def assert_same_training(reference: Path, out: Path) -> None:
    assert (out / "model.safetensors").read_bytes() == (reference / "model.safetensors").read_bytes()
    assert read_summary(out)["param_digest"] == read_summary(reference)["param_digest"]
    assert comparable_rows(out) == comparable_rows(reference)
    assert not list(checkpoint_root(out).glob(".tmp-*")), "a half-written checkpoint was left behind"
