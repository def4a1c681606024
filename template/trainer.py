"""The training loop: the tutorial's forward, loss, backward, optimizer step, lr step, at any scale.

Everything the loop needs is built by `build_parts` from the config through the registries; side
concerns (checkpoints, tracking, cross-rank checks, plots) are one call each into their own module.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from safetensors.torch import save_file
from torch import nn
from tqdm.auto import tqdm

from template import checkpoint, host_memory, nonfinite
from template.compile import check_compile, compile_model
from template.config import Config, ConfigError
from template.data import data_state, make_eval_loader, train_batches
from template.distributed import (
    any_rank,
    check_launch_env,
    check_lr_sync,
    first_drift,
    launcher_world_size,
    make_accelerator,
    plain_model,
    replica_digests,
)
from template.hooks import HookContext, Hooks
from template.parts import Parts, build_parts
from template.preemption import StopRequest
from template.preview import plot_lr_preview
from template.run_lock import RunLock
from template.schedules import check_schedule
from template.throughput import Throughput
from template.tracking import Tracker, config_yaml, training_row
from template.update import UpdateStep


class DriftError(RuntimeError):
    """Replicas that should be bit-identical are not."""


def preflight(cfg: Config, world_size: int = 1, device: torch.device | None = None) -> Parts:
    """Everything that can reject a config, before a write or a collective: the parts, the output_dir, the
    resume path, and what the device cannot do. Any bad input ends here as one ConfigError."""
    parts = build_parts(cfg, world_size)
    parts.notes = check_schedule(cfg.scheduler, cfg.train.max_steps, parts.schedule.lrs(), parts.updates_per_epoch)
    s, t = cfg.scheduler, cfg.train
    if s.interval == "epoch" and t.max_steps < parts.updates_per_epoch:
        raise ConfigError("scheduler.interval", f"'epoch' steps the lr once per epoch ({parts.updates_per_epoch} "
                                                f"updates), but train.max_steps is {t.max_steps}: it never changes")
    if parts.schedule.needs_metric and s.monitor.startswith("eval/") and not (t.eval_every and parts.eval_set):
        raise ConfigError("scheduler.monitor", f"'{s.monitor}' is never produced: this run does not evaluate "
                                               "(set train.eval_every, or monitor train/loss)")
    out = Path(cfg.output_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError("output_dir", f"{out} exists and is not a directory")
    checkpoint.resume_candidates(out, cfg.train.resume)  # a path that is no complete checkpoint
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if cfg.train.mixed_precision == "fp16" and device.type != "cuda":
        # Accelerate would accept it and silently train in fp32: no GradScaler, no fp16 autocast off CUDA
        raise ConfigError("train.mixed_precision", f"fp16 needs a CUDA device (this run is on {device.type}); "
                                                   "use bf16, or no")
    if cfg.train.compile:
        check_compile(device)
    return parts


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


def use_deterministic_kernels() -> None:
    """Deterministic algorithms only (an error where an op has none), cuDNN without autotuning, and the cuBLAS
    workspace setting that deterministic GEMMs need; set before the first CUDA kernel runs."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False


def lock_output_dir(accelerator: Accelerator, out: Path) -> RunLock:
    """Rank 0 takes the output_dir's lock (ConfigError on every rank if it cannot)."""
    lock = RunLock(out)
    problem: ConfigError | None = None
    if accelerator.is_main_process:
        try:
            note = lock.acquire()
            if note:
                print(note, flush=True)
        except ConfigError as exc:
            problem = exc
    if any_rank(accelerator, problem is not None):
        raise problem or ConfigError("output_dir", "rank 0 could not lock it")
    return lock


def train(cfg: Config) -> dict[str, Any]:
    """Run (or resume) the training described by `cfg` on however many processes were launched."""
    if cfg.train.keep_freed_memory:
        host_memory.keep_freed_memory()  # before the first tensors: no page faults on every update's activations
    if cfg.train.deterministic:
        use_deterministic_kernels()
    check_launch_env()
    parts = preflight(cfg, launcher_world_size())  # every check of the config before a process group exists
    accelerator = make_accelerator(cfg.train.mixed_precision, log_with="wandb" if cfg.tracking.wandb else None,
                                   timeout_s=cfg.distributed.timeout_s)
    if accelerator.is_main_process:
        for note in parts.notes:
            print(f"warning: {note}", flush=True)
    lock = lock_output_dir(accelerator, Path(cfg.output_dir))  # one live run per output_dir
    try:
        return run_training(cfg, accelerator, parts)
    finally:
        lock.release()


def run_training(cfg: Config, accelerator: Accelerator, parts: Parts) -> dict[str, Any]:
    """The training itself, once the config passed preflight and this run holds the output_dir."""
    out = Path(cfg.output_dir)
    candidates = checkpoint.resume_candidates(out, cfg.train.resume)
    t = cfg.train
    device = accelerator.device
    model, optimizer = accelerator.prepare(parts.model, parts.optimizer)
    if t.compile:
        compile_model(model)  # in place: names stay plain for checkpoints and digests
    loss_fn, schedule, hooks = parts.loss_fn.to(device), parts.schedule, parts.hooks

    start, run_id = 0, None
    resumed = checkpoint.load_checkpoint(accelerator, model, candidates)
    if resumed is not None:
        schedule.load_state_dict(resumed.state["schedule"])
        hooks.load_state_dict(resumed.state.get("hooks", {}))
        start, run_id = resumed.step, resumed.state.get("wandb_run_id")
        accelerator.print(f"resumed from {resumed.path} at update {start}")
    elif cfg.train.resume not in ("auto", "none"):
        raise ConfigError("train.resume", f"checkpoint {cfg.train.resume} could not be loaded")

    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(config_yaml(cfg))  # secrets redacted
    accelerator.wait_for_everyone()
    tracker = Tracker(accelerator, cfg, run_id, start, draw_preview=lambda path: plot_lr_preview(cfg, path))

    world, rank = accelerator.num_processes, accelerator.process_index
    pin = device.type == "cuda"
    batches = train_batches(parts.train_set, t.batch_size, t.grad_accum_steps, world, rank, cfg.seed, start,
                            cfg.data.num_workers, pin, resumed.state.get("data") if resumed is not None else None)
    eval_loader, eval_steps = None, 0
    if parts.eval_set is not None and t.eval_every:
        eval_loader, eval_steps = make_eval_loader(parts.eval_set, t.batch_size, t.eval_batches, world, rank, pin)

    resync = cfg.distributed.sync_check_action == "resync"
    metric_from_train = schedule.needs_metric and schedule.monitor == "train/loss"
    progress = tqdm(total=t.max_steps, initial=start, disable=not (accelerator.is_main_process and t.progress),
                    desc="train", dynamic_ncols=True)
    throughput = Throughput(parts.model, parts.train_set, t.batch_size, world, t.peak_flops, device)
    window_start, window_updates = time.perf_counter(), 0
    first_update_s: float | None = None
    loss_value = float("nan")
    skipped = int(resumed.state.get("skipped", 0)) if resumed is not None else 0
    stop = StopRequest()

    update = UpdateStep(accelerator, model, optimizer, loss_fn, t.grad_accum_steps, t.clip_grad_norm,
                        skip_nonfinite=t.nonfinite == "skip")
    ctx = HookContext(accelerator, model, plain_model(accelerator, model), optimizer, out,
                      (lambda: evaluate(accelerator, model, loss_fn, eval_loader, eval_steps)) if eval_loader else None)
    stopped_early: str | None = None

    model.train()
    if cfg.distributed.sync_check_every:  # the first update's lr too (a strategy set up rank-dependently)
        check_lr_sync(accelerator, schedule, resync)
    for step in range(start + 1, t.max_steps + 1):
        logging = step % t.log_every == 0 or step == t.max_steps
        lrs = schedule.lrs() if logging else {}  # the lr this update uses: what gets logged for it
        update_loss, grad_norm, applied = update(batches, want_norm=logging and cfg.tracking.log_grad_norm)
        skipped += not applied
        window_updates += 1
        if first_update_s is None:  # compile (and warm-up) time, reported apart from the training speed
            first_update_s = time.perf_counter() - window_start
            if t.compile and not logging:
                window_start, window_updates = time.perf_counter(), 0

        # Host reads (and the collectives behind them) only where a value is needed, not every update.
        metrics: dict[str, float] = {}
        if logging or metric_from_train:
            loss_value = (accelerator.reduce(update_loss, "mean") if world > 1 else update_loss).item()
            metrics["train/loss"] = loss_value
            if t.nonfinite == "stop" and not math.isfinite(loss_value):
                raise nonfinite.NonFiniteError(f"non-finite loss {loss_value} at update {step}; the newest "
                                               "checkpoint holds the last good state")
        if eval_loader is not None and t.eval_every and (step % t.eval_every == 0 or step == t.max_steps):
            metrics["eval/loss"] = evaluate(accelerator, model, loss_fn, eval_loader, eval_steps)
        if applied:  # a skipped update (non-finite, fp16 overflow) does not advance the schedule: its clock
            schedule.after_update(step - skipped, metrics)  # counts applied updates, as torch's schedulers do
        ctx.step = step
        if hooks and applied:
            hooks.after_update(ctx)
        if hooks and "eval/loss" in metrics:
            hooks.after_evaluate(ctx, metrics)
        if cfg.distributed.sync_check_every and step % cfg.distributed.sync_check_every == 0:
            check_lr_sync(accelerator, schedule, resync)

        if logging:
            elapsed = time.perf_counter() - window_start
            row = training_row(step, lrs, loss_value, step / parts.updates_per_epoch,
                               throughput.rates(window_updates, elapsed),
                               grad_norm, skipped if t.nonfinite == "skip" or skipped else None)
            if hooks:
                hooks.on_log(ctx, row)
            tracker.log(row)
            progress.set_postfix(loss=f"{loss_value:.4g}", lr=f"{next(iter(lrs.values())):.3g}", refresh=False)
            window_start, window_updates = time.perf_counter(), 0
        if "eval/loss" in metrics:
            tracker.log({"step": step, **{k: v for k, v in metrics.items() if k.startswith("eval/")}})
        progress.update(1)

        # a stop request is agreed on at log steps (a collective under DDP), at every update otherwise
        preempted = (world == 1 or logging) and stop.agreed(accelerator)
        stopped_early = hooks.stop_reason(ctx) if hooks else None  # the same on every rank, by contract
        last = step == t.max_steps or stopped_early is not None
        if preempted or (t.checkpoint_every and (step % t.checkpoint_every == 0 or last)):
            nonfinite.assert_finite(model)
            checkpoint.save_checkpoint(accelerator, out, step, {
                "step": step, "schedule": schedule.state_dict(), "wandb_run_id": tracker.run_id, "skipped": skipped,
                "hooks": hooks.state_dict(), **data_state(parts.train_set),
            }, t.keep_checkpoints)
        if preempted:
            progress.close()
            tracker.close()
            accelerator.print(f"stopped by signal {stop.signal or 'on another rank'} after update {step}; "
                              "checkpoint saved, rerun the same command to resume")
            return {"step": step, "preempted": True}
        if stopped_early:
            accelerator.print(f"stopped early after update {step}: {stopped_early}")
            break
    progress.close()
    stop.restore()

    extra: dict[str, Any] = {"first_update_s": round(first_update_s or 0.0, 3), "compiled": t.compile}
    if stopped_early:
        extra["stopped_early"] = stopped_early
    return finish(accelerator, cfg, model, tracker, out, ctx, hooks, extra)


def finish(accelerator: Accelerator, cfg: Config, model: nn.Module, tracker: Tracker, out: Path,
           ctx: HookContext, hooks: Hooks, extra: dict[str, Any]) -> dict[str, Any]:
    """Check replicas agree, let the hooks finish, then write model.safetensors, summary.json and the curves
    (rank 0). `extra` goes into the summary: how long this process's first update took (with `compiled`,
    that is the compile time), and why the run stopped early if it did.
    """
    digests = replica_digests(accelerator, model)
    drifted = first_drift(accelerator, model) if len(set(digests)) > 1 else None
    unwrapped = plain_model(accelerator, model)
    backend = torch.distributed.get_backend() if torch.distributed.is_initialized() else None
    summary = {"step": ctx.step or cfg.train.max_steps, "world_size": accelerator.num_processes,
               "device": accelerator.device.type, "backend": backend,
               "param_digest": digests[accelerator.process_index], "replica_digests": digests, **extra}
    if drifted is None:
        hooks.on_end(ctx, summary)
    full: dict[str, torch.Tensor] | None = None
    if accelerator.distributed_type == DistributedType.FSDP and drifted is None:  # sharded: every rank checks
        nonfinite.assert_finite(unwrapped)                      # and gathers; the full tensors land on rank 0
        full = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        if drifted is None:
            if full is None:
                nonfinite.assert_finite(unwrapped)
            save_file(checkpoint.untied(full or unwrapped.state_dict()), str(out / "model.safetensors"))
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        if cfg.train.plots:
            from template.plotting import plot_training_curves  # matplotlib: 0.25 s of import, only at the end

            rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line]
            tracker.log_images({k: v for k, v in plot_training_curves(rows, out).items()}, cfg.train.max_steps)
    tracker.close()
    accelerator.wait_for_everyone()
    if drifted is not None:
        raise DriftError(f"replicas drifted: parameter '{drifted}' differs between ranks ({digests})")
    return summary
