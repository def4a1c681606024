"""Shared helpers: run the real training script (1 process or a real 2-rank gloo launch) and read its files."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
TRAIN = ROOT / "scripts" / "train.py"


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


def read_metrics(output_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (Path(output_dir) / "metrics.jsonl").read_text().splitlines() if line]


def train_rows(output_dir: Path) -> dict[int, dict[str, Any]]:
    """The last training row for each step (what SPEC.md says a resumed run must get right)."""
    return {r["step"]: r for r in read_metrics(output_dir) if "loss" in r}


def read_summary(output_dir: Path) -> dict[str, Any]:
    return json.loads((Path(output_dir) / "summary.json").read_text())
