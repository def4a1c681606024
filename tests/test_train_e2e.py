"""The real training script end to end: the default run, the SPEC files, exact resume after kill -9."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from template.models import MLP, LinearModel

from conftest import ROOT, TRAIN, clean_env, read_metrics, read_summary, run_here, run_train, train_rows

pytestmark = pytest.mark.e2e
SEED = "configs/seed_builtin.yaml"
DETERMINISTIC = ("step", "lr", "loss", "epoch", "grad_norm")


def digest(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        h.update(name.encode())
        h.update(tensor.contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("default")
    started = time.perf_counter()
    proc = run_train(f"output_dir={out}")
    return out, proc, time.perf_counter() - started


def test_default_run_writes_the_three_files(default_run):
    out, _, seconds = default_run
    assert seconds < 60
    rows = [r for r in read_metrics(out) if "loss" in r]
    assert [r["step"] for r in rows] == list(range(10, 301, 10))
    assert all(isinstance(r["lr"], float) and r["lr"] > 0 for r in rows)
    assert rows[-1]["loss"] < rows[0]["loss"] / 2  # it learns
    summary = read_summary(out)
    assert summary["step"] == 300 and summary["world_size"] == 1
    weights = load_file(out / "model.safetensors")
    assert set(weights) == set(MLP(8, 64, 2).state_dict())
    assert summary["param_digest"] == digest(weights) == summary["replica_digests"][0]


def test_default_run_logs_eval_plots_config_and_wandb_offline(default_run):
    out, _, _ = default_run
    assert [r["step"] for r in read_metrics(out) if "eval/loss" in r] == [100, 200, 300]
    assert (out / "lr.png").stat().st_size > 0 and (out / "loss.png").stat().st_size > 0
    assert "max_steps: 300" in (out / "config.yaml").read_text()
    assert list((out / "wandb").glob("offline-run-*"))


def test_logged_lr_is_the_lr_used_by_the_update(tmp_path):
    """lr of row s is what update s used: StepLR(10) gives 0.1 for 1..10, 0.05 for 11..20."""
    run_here("--config", SEED, f"output_dir={tmp_path}", "train.max_steps=21")
    lrs = {s: r["lr"] for s, r in train_rows(tmp_path).items()}
    assert [lrs[s] for s in (1, 10, 11, 20, 21)] == [0.1, 0.1, 0.05, 0.05, 0.025]


def test_linear_model_weights_keep_the_tutorial_names(tmp_path):
    run_here("--config", SEED, f"output_dir={tmp_path}", "train.max_steps=5")
    assert set(load_file(tmp_path / "model.safetensors")) == set(LinearModel().state_dict()) == {"theta", "b"}


def test_resume_after_a_clean_stop_is_bit_identical(tmp_path):
    full, split = tmp_path / "full", tmp_path / "split"
    run_here("--config", SEED, f"output_dir={full}")
    run_here("--config", SEED, f"output_dir={split}", "train.max_steps=25")
    proc = run_here("--config", SEED, f"output_dir={split}")
    assert "resumed from" in proc.stdout + proc.stderr
    assert (full / "model.safetensors").read_bytes() == (split / "model.safetensors").read_bytes()
    assert rows_without_timing(full) == rows_without_timing(split)


def rows_without_timing(out):
    return {s: {k: v for k, v in r.items() if k in DETERMINISTIC} for s, r in train_rows(out).items()}


def test_kill_9_then_resume_is_bit_identical(tmp_path):
    """SIGKILL at random points (one run, several kills), rerun the same command, compare with no kill."""
    args = ["--config", SEED, "model.name=mlp", "model.kwargs={in_features: 1, hidden: 256, depth: 3}",
            "data.kwargs.size=4096", "train.max_steps=400", "train.checkpoint_every=15", "train.log_every=1",
            "train.keep_checkpoints=2", "train.progress=false"]
    reference = tmp_path / "reference"
    run_here(*args, f"output_dir={reference}")
    killed = tmp_path / "killed"
    rng = random.Random(1234)
    kills = 0
    for _ in range(3):
        proc = subprocess.Popen([*map(str, [*[sys.executable], TRAIN]), *args, f"output_dir={killed}"], cwd=ROOT,
                                env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        target = rng.randint(5, 380)
        while proc.poll() is None and logged_steps(killed) < target:
            time.sleep(0.01)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait()
    run_here(*args, f"output_dir={killed}")
    assert kills >= 1
    assert (reference / "model.safetensors").read_bytes() == (killed / "model.safetensors").read_bytes()
    assert rows_without_timing(reference) == rows_without_timing(killed)
    assert json.loads((killed / "summary.json").read_text())["param_digest"] == read_summary(reference)["param_digest"]


def logged_steps(out) -> int:
    path = out / "metrics.jsonl"
    if not path.exists():
        return 0
    lines = path.read_text().splitlines()
    try:
        return json.loads(lines[-1])["step"] if lines else 0
    except (json.JSONDecodeError, KeyError):
        return 0
