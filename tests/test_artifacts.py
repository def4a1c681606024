"""`tracking.log_model`: the weights as versioned W&B model artifacts, read back from the offline run's records.

Real wandb, offline, in real subprocesses (W&B runs are never in-process here): a `checkpoints` run resumed
once (the second process adds versions to the same artifacts, and its `best` alias remembers the first
process's versions), a `final` run, and the bad inputs' exit status. Every expected alias is derived from the
run's own metrics.jsonl, never hard-coded.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from conftest import clean_env, read_metrics, run_train

pytest.importorskip("wandb")

from wandb_offline import read_runs

BASE = ("train.log_every=10", "train.eval_every=10", "train.checkpoint_every=10", "train.progress=false",
        "train.plots=false", "scheduler.kwargs.warmup_steps=5", "scheduler.kwargs.total_steps=30",
        "tracking.wandb=true")
# Monitoring the eval loss for its *highest* value makes `best` stay on an early version (the loss falls):
# a resumed process that forgot the first one's best would move it to its own newest version.
WORST_IS_BEST = "hooks=[{name: early_stopping, kwargs: {monitor: eval/loss, mode: max, patience: 100}}]"


def wandb_env(root: Path) -> dict[str, str]:
    return clean_env(WANDB_DATA_DIR=str(root / "wandb-data"))  # the staging area, inside the test's directory


def models(out: Path) -> list[list[dict[str, Any]]]:
    """Each process's logged model artifacts, oldest process first (W&B's own table artifacts left out)."""
    return [[a for a in run.artifacts if a["type"] == "model"] for run in read_runs(out / "wandb")]


def best_steps(out: Path, mode: str) -> set[int]:
    """The updates whose eval loss was the best so far when it was measured."""
    best, steps = None, set()
    for row in read_metrics(out):
        if "eval/loss" in row:
            value = row["eval/loss"]
            if best is None or (value < best if mode == "min" else value > best):
                best = value
                steps.add(row["step"])
    return steps


def expected_aliases(step: int, best: set[int]) -> list[str]:
    return sorted(["latest", f"step-{step}", *(["best"] if step in best else [])])


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def resumed(tmp_path_factory) -> Path:
    """log_model=checkpoints: 20 updates, then the same command resumed to 30."""
    root = tmp_path_factory.mktemp("log_checkpoints")
    out = root / "run"
    for steps in (20, 30):
        run_train(*BASE, "tracking.log_model=checkpoints", WORST_IS_BEST, f"train.max_steps={steps}",
                  f"output_dir={out}", env=wandb_env(root))
    return out


@pytest.fixture(scope="module")
def final(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("log_final")
    out = root / "run"
    run_train(*BASE, "tracking.log_model=final", "train.max_steps=30", f"output_dir={out}", env=wandb_env(root))
    return out


@pytest.mark.e2e
def test_each_checkpoint_and_the_final_weights_are_versions_and_a_resume_adds_to_them(resumed):
    first, second = models(resumed)
    run_ids = {run.run_id for run in read_runs(resumed / "wandb")}
    assert len(run_ids) == 1  # the resumed process continued the same W&B run ...
    run_id = run_ids.pop()
    best = best_steps(resumed, "max")
    assert best == {10}  # the loss falls: the first evaluation stays the highest
    # ... and logged into the same two artifacts: each checkpoint once complete, the final weights at the end
    expected = [[("checkpoint", 10), ("checkpoint", 20), ("model", 20)], [("checkpoint", 30), ("model", 30)]]
    for process, versions in zip((first, second), expected, strict=True):
        assert [(a["name"], a["metadata"]["step"]) for a in process] == [(f"{k}-{run_id}", s) for k, s in versions]
        for artifact, (_, step) in zip(process, versions, strict=True):
            assert artifact["aliases"] == expected_aliases(step, best), artifact
    checkpoint = first[0]
    assert {"model.safetensors", "optimizer.bin", "trainer.pt", "checksums.json"} <= set(checkpoint["files"])
    assert checkpoint["metadata"]["eval/loss"] == next(r["eval/loss"] for r in read_metrics(resumed)
                                                       if r["step"] == 10 and "eval/loss" in r)
    final_version = second[-1]
    assert final_version["files"] == ["config.yaml", "model.safetensors"]
    # the staged copy `wandb sync` uploads is the final model.safetensors, byte for byte
    assert sha256(Path(final_version["staged"]["model.safetensors"])) == sha256(resumed / "model.safetensors")


@pytest.mark.e2e
def test_final_logs_the_weights_once_with_their_aliases(final):
    (versions,) = models(final)
    (run,) = read_runs(final / "wandb")
    assert [a["name"] for a in versions] == [f"model-{run.run_id}"]
    (version,) = versions
    assert version["aliases"] == expected_aliases(30, best_steps(final, "min"))  # eval/loss, lowest: best
    assert "best" in version["aliases"]
    assert version["metadata"] == {"step": 30, "eval/loss": read_metrics(final)[-1]["eval/loss"]}
    assert sha256(Path(version["staged"]["config.yaml"])) == sha256(final / "config.yaml")


@pytest.mark.parametrize(("args", "words"), [
    (("tracking.wandb=false", "tracking.log_model=final"), "tracking.wandb is false"),
    (("tracking.wandb=true", "tracking.log_model=always"), "must be one of false, final, checkpoints"),
])
def test_bad_log_model_is_one_line_naming_the_key_and_exit_2(tmp_path, args, words):
    proc = run_train(*args, f"output_dir={tmp_path / 'run'}", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith("error: tracking.log_model: ") and words in proc.stderr
    assert not (tmp_path / "run").exists()
