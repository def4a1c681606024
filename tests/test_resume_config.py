"""A config that changed under a checkpoint: what a resume may change, and one error line for the rest.

A resume may change how long and how the run goes on (train.max_steps, cadences, tracking, processes, hooks)
and says so in one line; a change to what the checkpoint's weights, optimizer, lr strategy or data order were
made with (the model, the optimizer and its groups, the lr strategy and its horizon, the data, the seed, the
batch under the updates clock) is exit 2 with one line naming the key and both values, decided before
anything is loaded. Each resume's config is kept apart from the first one.
"""

from __future__ import annotations

import pytest

from conftest import ROOT
from harness import expect_exit, train_here

BASE = ("--config", str(ROOT / "configs" / "default.yaml"), "train.max_steps=20", "train.checkpoint_every=10",
        "train.progress=false", "train.plots=false", "tracking.wandb=false", "train.eval_every=0",
        "scheduler.kwargs.warmup_steps=5")


@pytest.fixture(scope="module")
def checkpointed(tmp_path_factory):
    out = tmp_path_factory.mktemp("resume-config") / "run"
    train_here(BASE, out)
    return out


def files(out):
    return {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file() and p.name != ".lock"}


@pytest.mark.parametrize(("change", "key", "values"), [
    (("optimizer.name=adamw",), "optimizer.name", "('random_scaled_sgd' -> 'adamw')"),
    (("optimizer.name=sgd",), "optimizer.name", "('random_scaled_sgd' -> 'sgd')"),
    (("optimizer.lr=0.1",), "optimizer.lr", "(0.2 -> 0.1)"),
    (("optimizer.groups=[{name: biases, params: ['*.bias']}]",), "optimizer.groups", "-> [{'name': 'biases'"),
    (("scheduler.kwargs.min_lr_ratio=0.1",), "scheduler.kwargs.min_lr_ratio", "(0.05 -> 0.1)"),
    (("train.max_steps=40",), "scheduler.kwargs.total_steps", "(20 -> 40): the lr strategy's horizon"),
    (("train.batch_size=32",), "train.batch_size", "(64 -> 32): with scheduler.clock=updates"),
    (("model.kwargs.hidden=32",), "model.kwargs.hidden", "(64 -> 32)"),
    (("seed=1",), "seed", "(0 -> 1)"),
])
def test_a_change_the_checkpoint_cannot_follow_is_one_error_line_before_anything_is_loaded(checkpointed, change,
                                                                                          key, values):
    before = files(checkpointed)
    _, stderr = train_here((*BASE, *change), checkpointed, expect=2)
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {key}: changed since the checkpoint"), stderr
    assert values in lines[0]
    assert files(checkpointed) == before  # config.yaml included: nothing rewritten


def test_allowed_changes_are_named_in_one_line_and_each_resume_keeps_its_config(checkpointed, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    for path, data in files(checkpointed).items():
        (out / path).parent.mkdir(parents=True, exist_ok=True)
        (out / path).write_bytes(data)
    first = (out / "config.yaml").read_text()
    longer = ("train.max_steps=30", "scheduler.kwargs.total_steps=20", "train.log_every=5",
              "train.profile={start: 22, steps: 2}")
    stdout, _ = train_here((*BASE, *longer), out)
    notes = [line for line in stdout.splitlines() if "changed settings" in line]
    assert notes == ["note: resuming with changed settings: train.log_every 10 -> 5, train.max_steps 20 -> 30, "
                     "train.profile None -> {'start': 22, 'steps': 2}"]
    assert "resumed from" in stdout and "done: update 30" in stdout
    assert (out / "config.yaml").read_text() == first  # still the config the first 20 updates ran with
    assert "log_every: 5" in (out / "config.resumed-00000020.yaml").read_text()
    rows = [line for line in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert rows  # and past the horizon the lr stays at its final value:
    import json

    lrs = {json.loads(r)["step"]: json.loads(r)["lr"] for r in rows}
    assert lrs[25] == lrs[30] == pytest.approx(0.2 * 0.05)


def test_resume_none_starts_a_new_run_whatever_changed(checkpointed, tmp_path):
    out = tmp_path / "run"
    stdout, _ = expect_exit(0, *_run(checkpointed, out))
    assert "resumed from" not in stdout


def _run(src, out):
    import shutil

    shutil.copytree(src, out)
    from conftest import run_here

    proc = run_here(*BASE, "optimizer.name=adamw", "optimizer.lr=0.01", "train.resume=none", f"output_dir={out}",
                    check=False)
    return proc.returncode, proc.stdout, proc.stderr
