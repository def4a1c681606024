"""Shared helpers: run the real training script (1 process or a real 2-rank gloo launch) and read its files.

A run that ends on its own and is read only through its files, exit status and output lines can run here,
in the test's own process (`run_here`): the same script, the same arguments and environment, minus a fresh
interpreter. That saves the ~3 s a new process spends importing torch, Accelerate and dynamo, which is
most of what a small run costs. Runs that are killed, signalled, launched on several processes, log to
W&B or test the process itself (its exit without a traceback, its imports) stay real subprocesses.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import runpy
import socket
import subprocess
import sys
import traceback
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
TRAIN = ROOT / "scripts" / "train.py"
torch.set_num_threads(1)  # as the subprocesses' OMP_NUM_THREADS=1: in-process runs give the same bits


# The files with the longest runs, longest first (measured). pytest-xdist (--dist loadfile
# --no-loadscope-reorder) hands whole files to the workers in collection order: started first, these run
# side by side and the many short files fill in behind them, so both workers finish together instead of
# one waiting on a long file picked up last.
LONGEST_FIRST = ("test_ddp.py", "test_fault_tolerance.py", "test_wandb_logging.py", "test_hf_data.py",
                 "test_benchmark.py", "test_gpt.py", "test_robustness.py", "test_host_memory.py",
                 "test_train_e2e.py", "test_hooks.py", "test_lr_find.py", "test_tutorial_script.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_command(launcher: str, nproc: int, script: Path = TRAIN) -> list[str]:
    """The command line for `python`, `accelerate` (--multi_gpu: the gloo path on CPU) or `torchrun`."""
    if launcher == "python":
        assert nproc == 1
        return [sys.executable, str(script)]
    if launcher == "accelerate":
        return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "1",
                "--mixed_precision", "no", "--dynamo_backend", "no", "--num_processes", str(nproc),
                "--main_process_port", str(free_port()), str(script)]
    if launcher == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                "--master_port", str(free_port()), str(script)]
    raise ValueError(launcher)


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "ACCELERATE_"))}
    env.update(WANDB_MODE="offline", WANDB_SILENT="true", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               TOKENIZERS_PARALLELISM="false")
    env.update(extra)
    return env


def run_train(*args: str, launcher: str = "python", nproc: int = 1, check: bool = True, timeout: float = 300,
              env: dict[str, str] | None = None, script: Path = TRAIN) -> subprocess.CompletedProcess[str]:
    """Run scripts/train.py for real; on an unexpected exit code fail with its stderr."""
    cmd = [*launch_command(launcher, nproc, script), *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=env or clean_env(), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {proc.returncode}\n--- stderr ---\n{proc.stderr[-6000:]}")
    return proc


@contextlib.contextmanager
def _as_a_fresh_process(script: Path, args: list[str], env: dict[str, str], cwd: Path) -> Iterator[None]:
    """argv, environment, cwd, sys.path and warning filters as `python script args` would have them, put back
    afterwards (in-process runs share this interpreter with the other tests)."""
    saved_env, saved_argv, saved_path = dict(os.environ), sys.argv, list(sys.path)
    os.environ.clear()
    os.environ.update(env)
    sys.argv = [str(script), *args]
    try:
        with contextlib.chdir(cwd), warnings.catch_warnings():
            warnings.resetwarnings()  # a fresh interpreter shows each warning again
            yield
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        sys.argv, sys.path[:] = saved_argv, saved_path


def run_here(*args: str, check: bool = True, env: dict[str, str] | None = None, script: Path = TRAIN,
             cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """`run_train(*args)` in this process: the script runs as `__main__`; SystemExit gives the exit status,
    an uncaught exception status 1 with its traceback on stderr, as the interpreter would."""
    environment = {**(env or clean_env()), "WANDB_MODE": "disabled"}  # W&B runs stay subprocesses: no service here
    stdout, stderr = io.StringIO(), io.StringIO()
    code = 0
    with _as_a_fresh_process(script, list(args), environment, cwd), contextlib.redirect_stdout(stdout), \
            contextlib.redirect_stderr(stderr):
        try:
            runpy.run_path(str(script), run_name="__main__")
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        except Exception:  # reported as the interpreter would: traceback, status 1
            traceback.print_exc()
            code = 1
    proc = subprocess.CompletedProcess([str(script), *args], code, stdout.getvalue(), stderr.getvalue())
    if check and code != 0:
        pytest.fail(f"{script.name} {' '.join(args)} exited {code} (in-process)\n--- stderr ---\n{proc.stderr[-6000:]}")
    return proc


def read_metrics(output_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (Path(output_dir) / "metrics.jsonl").read_text().splitlines() if line]


def train_rows(output_dir: Path) -> dict[int, dict[str, Any]]:
    """The last training row for each step (what SPEC.md says a resumed run must get right)."""
    return {r["step"]: r for r in read_metrics(output_dir) if "loss" in r}


def read_summary(output_dir: Path) -> dict[str, Any]:
    return json.loads((Path(output_dir) / "summary.json").read_text())
