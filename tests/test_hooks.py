"""Hooks: EMA by hand, early stopping at the predicted update (1 and 2 processes), exact resume with hooks on,
a hook that raises, a bad hook config."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import psutil
import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import load_file

from template.cli import run
from template.hooks import EMA, HOOKS, EarlyStopping, Hook, HookContext
from template.trainer import train

from conftest import ROOT, read_metrics, read_summary, run_here, run_train, train_rows
from harness import Launched, assert_same_training, train_here, wait_for_step

SEED = str(ROOT / "configs" / "seed_builtin.yaml")
QUIET = ("train.progress=false", "train.plots=false", "tracking.wandb=false")


def context(model: torch.nn.Module, step: int = 0) -> HookContext:
    return HookContext(Accelerator(cpu=True), model, model, None, Path("."), None, step)


def test_ema_matches_a_hand_computed_average():
    model = torch.nn.Linear(1, 1, bias=False)
    ema = EMA(decay=0.5, start=2, every=2)
    ctx = context(model)
    weights = {1: 8.0, 2: 4.0, 3: 100.0, 4: 2.0, 5: 100.0, 6: 10.0}
    for step, value in weights.items():
        with torch.no_grad():
            model.weight.fill_(value)
        ctx.step = step
        ema.after_update(ctx)
    # updates 2, 4, 6 only: copy 4, then 0.5*4 + 0.5*2 = 3, then 0.5*3 + 0.5*10 = 6.5
    assert ema.shadow["weight"].item() == 6.5 and ema.updates == 3
    restored = EMA(decay=0.5, start=2, every=2)
    restored.load_state_dict(json.loads(json.dumps({"shadow": {}, "updates": 0})) | ema.state_dict())
    assert torch.equal(restored.shadow["weight"], ema.shadow["weight"])


def test_ema_evaluates_its_weights_and_puts_the_model_back():
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema = EMA(decay=0.0)
    ctx = context(model, step=1)
    ema.after_update(ctx)
    with torch.no_grad():
        model.weight.fill_(5.0)
    ctx.evaluate = lambda: {"eval/loss": float(model.weight.item()), "eval/accuracy": 0.5}  # the weight it holds
    metrics = {"eval/loss": 5.0}
    ema.after_evaluate(ctx, metrics)
    assert metrics["eval/loss_ema"] == 1.0 and model.weight.item() == 5.0
    assert metrics["eval/accuracy_ema"] == 0.5  # every value of the evaluation, for the EMA weights


def test_early_stopping_stops_at_the_predicted_evaluation():
    stopper = EarlyStopping(patience=2, min_delta=0.1)
    ctx = context(torch.nn.Linear(1, 1))
    script = {10: 1.0, 20: 0.5, 30: 0.45, 40: 0.3, 50: 0.35, 60: 0.29, 70: 0.4}
    stopped_at = None
    for step, value in script.items():
        ctx.step = step
        stopper.after_evaluate(ctx, {"eval/loss": value})
        if stopper.stop_reason(ctx):
            stopped_at = step
            break
    # 0.45 is not 0.1 better than 0.5 (1 bad), 0.3 is (reset), 0.35 and 0.29 are not: 2 bad at update 60
    assert stopped_at == 60 and stopper.best == 0.3 and stopper.best_step == 40
    assert "best 0.3 at update 40" in stopper.stop_reason(ctx)


EARLY = ("--config", SEED, *QUIET, "train.max_steps=200", "train.log_every=5", "train.checkpoint_every=0",
         "hooks=[{name: early_stopping, kwargs: {monitor: train/loss, mode: max, patience: 3}}, "
         "{name: ema, kwargs: {decay: 0.9}}]")


@pytest.mark.e2e
@pytest.mark.parametrize("nproc", [1, pytest.param(2, marks=pytest.mark.ddp)])
def test_early_stopping_ends_the_run_like_a_normal_one_on_every_rank(tmp_path, nproc):
    """The loss falls, so in `max` mode it never improves after the first logged update (5): three more
    logged updates without improvement stop the run at update 20, on every rank."""
    out = tmp_path / "run"
    if nproc == 1:
        run_here(*EARLY, f"output_dir={out}", "train.checkpoint_every=10")
    else:
        run_train(*EARLY, f"output_dir={out}", launcher="accelerate", nproc=2)
    summary = read_summary(out)
    assert summary["step"] == 20 and "stopped_early" in summary
    assert summary["early_stopping"] == {"monitor": "train/loss", "best": train_rows(out)[5]["loss"], "best_step": 5}
    assert max(train_rows(out)) == 20 and (out / "model.safetensors").exists()
    assert len(set(summary["replica_digests"])) == 1 and len(summary["ema_replica_digests"]) == nproc
    assert len(set(summary["ema_replica_digests"])) == 1  # the replicas' EMAs are equal
    if nproc == 1:
        assert (out / "checkpoints" / "step_00000020").is_dir()  # the final checkpoint, as at max_steps


@pytest.mark.e2e
def test_resume_with_hooks_on_is_bit_identical_including_the_ema(tmp_path):
    args = ("--config", SEED, "imports=[plugins.pace]", *QUIET, "train.max_steps=30", "train.log_every=1",
            "train.checkpoint_every=5", "train.eval_every=10",
            "hooks=[{name: ema, kwargs: {decay: 0.8, start: 3}}, {name: early_stopping, kwargs: {patience: 50}}]")
    reference, out = tmp_path / "reference", tmp_path / "killed"
    train_here(args, reference)
    run = Launched(args, out, FT_PACE_S="0.05")
    wait_for_step(run, 12)
    time.sleep(0.02)
    run.kill_group()
    run.finish()
    stdout, _ = train_here(args, out)
    assert "resumed from" in stdout
    assert_same_training(reference, out)
    assert (out / "model_ema.safetensors").read_bytes() == (reference / "model_ema.safetensors").read_bytes()
    assert read_summary(out)["ema_digest"] == read_summary(reference)["ema_digest"]
    evals = [{k: v for k, v in r.items()} for r in read_metrics(reference) if "eval/loss" in r]
    assert evals and all("eval/loss_ema" in r for r in evals)
    assert [r for r in read_metrics(out) if "eval/loss" in r][-len(evals):] == evals[-len(evals):]
    names = set(load_file(out / "model_ema.safetensors"))
    assert names == set(load_file(out / "model.safetensors"))


@HOOKS.register("test_boom")
class Boom(Hook):
    def after_update(self, ctx: HookContext) -> None:
        if ctx.step == 3:
            raise KeyError("no such thing")


def test_a_hook_that_raises_is_one_line_naming_the_hook_and_the_event(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run(lambda cfg, args: train(cfg), "t", ["--config", SEED, *QUIET, f"output_dir={tmp_path}",
                                                "train.max_steps=10", "hooks=[{name: test_boom}]"])
    assert exit_info.value.code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == ["error: hook 'test_boom' failed in after_update: KeyError: 'no such thing'"]


def test_a_failed_run_gives_back_its_signal_handlers_lock_and_files(tmp_path):
    """train() called again in the same process (a notebook, a sweep) must not find the last run's SIGTERM
    handler, output_dir lock or metrics.jsonl still held because that run ended in an error."""
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGUSR1)}
    with pytest.raises(SystemExit):
        run(lambda cfg, args: train(cfg), "t", ["--config", SEED, *QUIET, f"output_dir={tmp_path}",
                                                "train.max_steps=10", "hooks=[{name: test_boom}]"])
    assert {sig: signal.getsignal(sig) for sig in handlers} == handlers
    assert not [f.path for f in psutil.Process().open_files() if f.path.startswith(str(tmp_path))]
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 2  # rows 1 and 2 were written (and flushed)


@pytest.mark.parametrize(("hooks", "fragment"), [
    ("[{name: emma}]", "error: hooks.0.name: unknown hook 'emma' (did you mean 'ema'?)"),
    ("[{name: ema, kwargs: {decay: 1.5}}]", "error: hooks.0.kwargs: hook 'ema': decay must be in [0, 1)"),
    ("[{name: early_stopping, kwargs: {mode: up}}]", "error: hooks.0.kwargs: hook 'early_stopping': mode must be"),
])
def test_a_bad_hook_config_is_a_config_error(tmp_path, capsys, hooks, fragment):
    with pytest.raises(SystemExit) as exit_info:
        run(lambda cfg, args: train(cfg), "t", ["--config", SEED, *QUIET, f"output_dir={tmp_path}", f"hooks={hooks}"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith(fragment)
