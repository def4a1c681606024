"""One training run's state and the named steps of its loop, so `trainer.run_training` reads like the tutorial.

`start_run` does the setup (prepare, compile, resume, tracker, data, clock); the loop then calls, per
update, the steps below in order: the lr step, the hooks and sync check, the log row, the checkpoint and
the stop request. Each step is one short method naming one concern; the concerns themselves live in
their own modules (checkpoint, tracking, distributed, hooks, preemption, throughput).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from torch import nn
from tqdm.auto import tqdm

from template import checkpoint, nonfinite
from template.clock import Clock, make_clock
from template.compile import compile_model
from template.config import Config, ConfigError
from template.data import TrainData, make_eval_loader
from template.distributed import check_lr_sync, plain_model
from template.hooks import HookContext, Hooks
from template.parts import Parts
from template.preemption import StopRequest
from template.preview import plot_lr_preview
from template.redaction import config_yaml
from template.schedules import LRSchedule
from template.throughput import Throughput
from template.tracking import Tracker, training_row
from template.update import UpdateStep


@torch.no_grad()
def evaluate(accelerator: Accelerator, model: nn.Module, loss_fn: nn.Module, loader: Any, batches: int) -> float:
    """Mean loss over the eval split, weighted by samples and reduced over ranks (same value everywhere)."""
    model.eval()
    totals = torch.zeros(2, dtype=torch.float64, device=accelerator.device)
    for x, y in itertools.islice(loader, batches or None):
        x, y = x.to(accelerator.device), y.to(accelerator.device)
        with accelerator.autocast():
            totals[0] += loss_fn(model(x), y).double() * len(x)
        totals[1] += len(x)
    model.train()
    totals = accelerator.reduce(totals, "sum")
    return (totals[0] / totals[1]).item()


@dataclass
class Window:
    """The current log window's wall time and updates, for the throughput keys of the next row."""

    start: float = field(default_factory=time.perf_counter)
    updates: int = 0
    first_update_s: float | None = None  # the process's first update: compile and warm-up included

    def count(self, restart_after_first: bool) -> None:
        self.updates += 1
        if self.first_update_s is None:
            self.first_update_s = time.perf_counter() - self.start
            if restart_after_first:  # compile time is reported apart from the training speed
                self.restart()

    def restart(self) -> None:
        self.start, self.updates = time.perf_counter(), 0


@dataclass
class Run:
    cfg: Config
    accelerator: Accelerator
    parts: Parts
    model: nn.Module
    optimizer: Any
    loss_fn: nn.Module
    schedule: LRSchedule
    hooks: Hooks
    tracker: Tracker
    clock: Clock
    data: TrainData
    update: UpdateStep
    ctx: HookContext
    progress: Any
    throughput: Throughput
    eval_loader: Any = None
    eval_steps: int = 0
    window: Window = field(default_factory=Window)
    stop: StopRequest = field(default_factory=StopRequest)
    start_step: int = 0
    last_step: int = 0
    loss_feeds_schedule: bool = False  # a plateau strategy monitoring train/loss: read the loss every update

    @property
    def out(self) -> Path:
        return Path(self.cfg.output_dir)

    def evaluate(self) -> float:
        return evaluate(self.accelerator, self.model, self.loss_fn, self.eval_loader, self.eval_steps)

    def eval_due(self, step: int) -> bool:
        every = self.cfg.train.eval_every
        return self.eval_loader is not None and bool(every) and (step % every == 0 or step == self.last_step)

    def step_schedule(self, lr_steps: range, metrics: Mapping[str, float]) -> None:
        """Advance the lr strategy by the steps this update completed (none after a skipped update); a
        metric-driven strategy sees the metric once, on the last of them."""
        for lr_step in lr_steps:
            self.schedule.after_update(lr_step, metrics if lr_step == lr_steps[-1] else None)

    def after_update(self, step: int, applied: bool, metrics: dict[str, float]) -> None:
        """Hook events (an after_evaluate hook may add metrics, e.g. eval/loss_ema), then the cross-rank lr
        check when it is due."""
        self.ctx.step = step
        if self.hooks and applied:
            self.hooks.after_update(self.ctx)
        if self.hooks and "eval/loss" in metrics:
            self.hooks.after_evaluate(self.ctx, metrics)
        every = self.cfg.distributed.sync_check_every
        if every and step % every == 0:
            check_lr_sync(self.accelerator, self.schedule, self.cfg.distributed.sync_check_action == "resync")

    def log(self, step: int, lrs: dict[str, float], loss: float, grad_norm: Any) -> None:
        """One metrics.jsonl / W&B row for a log update; the throughput window restarts after it."""
        t, c = self.cfg.train, self.clock
        rates = self.throughput.rates(self.window.updates, time.perf_counter() - self.window.start)
        row = training_row(step, lrs, loss, step / self.parts.updates_per_epoch, rates, grad_norm,
                           c.skipped if t.nonfinite == "skip" or c.skipped else None)
        row["samples"] = c.samples
        if self.hooks:
            self.hooks.on_log(self.ctx, row)
        self.tracker.log(row)
        self.progress.set_postfix(loss=f"{loss:.4g}", lr=f"{next(iter(lrs.values())):.3g}", refresh=False)
        self.window.restart()

    def log_eval(self, step: int, metrics: Mapping[str, float]) -> None:
        if "eval/loss" in metrics:
            self.tracker.log({"step": step, **{k: v for k, v in metrics.items() if k.startswith("eval/")}})

    def stop_requested(self, step: int, logging: bool) -> tuple[bool, str | None]:
        """(a signal asked this run to stop, a hook's reason to end early): the same on every rank. A
        signal is agreed on at log steps (a collective under DDP), at every update otherwise."""
        preempted = (self.accelerator.num_processes == 1 or logging) and self.stop.agreed(self.accelerator)
        return preempted, self.hooks.stop_reason(self.ctx) if self.hooks else None

    def checkpoint_due(self, step: int, preempted: bool, stopping: bool) -> bool:
        every = self.cfg.train.checkpoint_every
        return preempted or bool(every and (step % every == 0 or step == self.last_step or stopping))

    def save_checkpoint(self, step: int) -> None:
        nonfinite.assert_finite(self.model)
        state = {"step": step, "schedule": self.schedule.state_dict(), "wandb_run_id": self.tracker.run_id,
                 "hooks": self.hooks.state_dict(), **self.clock.state_dict(),
                 **self.data.state_dict(step)}
        checkpoint.save_checkpoint(self.accelerator, self.out, step, state, self.cfg.train.keep_checkpoints)

    def close(self, failed: bool = False) -> None:
        """Give back what the run holds: the progress bar, the signal handlers, metrics.jsonl and the W&B run
        (marked failed after an error, as an uncaught error's exit would). Safe to call twice."""
        self.progress.close()
        self.stop.restore()
        self.tracker.close(exit_code=1 if failed else 0)

    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        self.close(failed=exc_type is not None)

    def preempted(self, step: int) -> dict[str, Any]:
        self.close()
        self.accelerator.print(f"stopped by signal {self.stop.signal or 'on another rank'} after update {step}; "
                               "checkpoint saved, rerun the same command to resume")
        return {"step": step, "preempted": True}


def start_run(cfg: Config, accelerator: Accelerator, parts: Parts) -> Run:
    """Prepare model and optimizer, resume from the newest checkpoint, open the tracker, the data and
    the clock: everything the loop needs, in the order the tutorial sets it up."""
    out, t = Path(cfg.output_dir), cfg.train
    candidates = checkpoint.resume_candidates(out, t.resume)
    device = accelerator.device
    model, optimizer = accelerator.prepare(parts.model, parts.optimizer)
    if t.compile:
        compile_model(model)  # in place: names stay plain for checkpoints and digests
    loss_fn, schedule, hooks = parts.loss_fn.to(device), parts.schedule, parts.hooks

    start, run_id, state = 0, None, None
    resumed = checkpoint.load_checkpoint(accelerator, model, candidates)
    if resumed is not None:
        schedule.load_state_dict(resumed.state["schedule"])
        hooks.load_state_dict(resumed.state.get("hooks", {}))
        start, run_id, state = resumed.step, resumed.state.get("wandb_run_id"), resumed.state
        accelerator.print(f"resumed from {resumed.path} at update {start}")
    elif t.resume not in ("auto", "none"):
        raise ConfigError("train.resume", f"checkpoint {t.resume} could not be loaded")
    clock = make_clock(cfg, state, start)

    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(config_yaml(cfg))  # secrets redacted
    accelerator.wait_for_everyone()

    world, rank, pin = accelerator.num_processes, accelerator.process_index, device.type == "cuda"
    data = TrainData(parts.train_set, t.batch_size, t.grad_accum_steps, world, rank, cfg.seed, start,
                     cfg.data.num_workers, pin, state)
    eval_loader, eval_steps = None, 0
    if parts.eval_set is not None and t.eval_every:
        eval_loader, eval_steps = make_eval_loader(parts.eval_set, t.batch_size, t.eval_batches, world, rank, pin)

    last_step = clock.last_step(t.max_samples, t.max_steps)
    update = UpdateStep(accelerator, model, optimizer, loss_fn, t.grad_accum_steps, t.clip_grad_norm,
                        skip_nonfinite=t.nonfinite == "skip")
    ctx = HookContext(accelerator, model, plain_model(accelerator, model), optimizer, out,
                      (lambda: evaluate(accelerator, model, loss_fn, eval_loader, eval_steps)) if eval_loader else None)
    throughput = Throughput(parts.model, parts.train_set, t.batch_size, world, t.peak_flops, device)
    # Last, what the run holds until Run.close(): metrics.jsonl and the W&B run, then the progress bar
    tracker = Tracker(accelerator, cfg, run_id, start, draw_preview=lambda path: plot_lr_preview(cfg, path))
    progress = tqdm(total=last_step, initial=start, disable=not (accelerator.is_main_process and t.progress),
                    desc="train", dynamic_ncols=True)
    return Run(cfg, accelerator, parts, model, optimizer, loss_fn, schedule, hooks, tracker, clock, data, update, ctx,
               progress, throughput, eval_loader, eval_steps, start_step=start, last_step=last_step,
               loss_feeds_schedule=schedule.needs_metric and schedule.monitor == "train/loss")
