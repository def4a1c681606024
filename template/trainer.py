"""The training loop: the tutorial's forward, loss, backward, optimizer step, lr step, at any scale.

Everything the loop needs is built by `build_parts` from the config through the registries; side
concerns (checkpoints, tracking, cross-rank checks, plots) are one call each into their own module.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from safetensors.torch import save_file
from torch import nn

from template import checkpoint, host_memory, nonfinite
from template.compile import check_compile
from template.config import Config, ConfigError
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
from template.run import Run, start_run
from template.run_lock import RunLock
from template.schedules import check_schedule
from template.tracking import Tracker


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
    # One live run per output_dir; on every way out (errors too) the lock, signal handlers and files go back,
    # so a process that calls train() again (a notebook, a sweep, the tests) starts clean.
    with lock_output_dir(accelerator, Path(cfg.output_dir)), start_run(cfg, accelerator, parts) as run:
        return run_training(run)


def run_training(run: Run) -> dict[str, Any]:
    """The tutorial's loop: per update forward, loss, backward and optimizer step, then the lr step; the side
    concerns are one named step each (template/run.py). Host reads only where a value is needed."""
    cfg, accelerator = run.cfg, run.accelerator
    t, world = cfg.train, accelerator.num_processes
    loss_value, stopped_early = float("nan"), None
    run.model.train()
    if cfg.distributed.sync_check_every:  # the first update's lr too (a strategy set up rank-dependently)
        check_lr_sync(accelerator, run.schedule, cfg.distributed.sync_check_action == "resync")
    for step in range(run.start_step + 1, run.last_step + 1):
        logging = step % t.log_every == 0 or step == run.last_step
        lrs = run.schedule.lrs() if logging else {}  # the lr this update uses: what gets logged for it
        loss, grad_norm, applied = run.update(run.data.batches, want_norm=logging and cfg.tracking.log_grad_norm)
        lr_steps = run.clock.advance(applied)  # none if the update was skipped (non-finite, fp16 overflow)
        run.window.count(restart_after_first=t.compile and not logging)

        metrics: dict[str, float] = {}
        if logging or run.loss_feeds_schedule:
            loss_value = (accelerator.reduce(loss, "mean") if world > 1 else loss).item()
            metrics["train/loss"] = loss_value
            if t.nonfinite == "stop" and not math.isfinite(loss_value):
                raise nonfinite.NonFiniteError(f"non-finite loss {loss_value} at update {step}; the newest "
                                               "checkpoint holds the last good state")
        if run.eval_due(step):
            metrics["eval/loss"] = run.evaluate()
        run.step_schedule(lr_steps, metrics)
        run.after_update(step, applied, metrics)  # hooks, lr sync check
        if logging:
            run.log(step, lrs, loss_value, grad_norm)
        run.log_eval(step, metrics)
        run.progress.update(1)

        preempted, stopped_early = run.stop_requested(step, logging)
        if run.checkpoint_due(step, preempted, stopping=stopped_early is not None):
            run.save_checkpoint(step)
        if preempted:
            return run.preempted(step)
        if stopped_early:
            accelerator.print(f"stopped early after update {step}: {stopped_early}")
            break
    run.progress.close()

    extra: dict[str, Any] = {"first_update_s": round(run.window.first_update_s or 0.0, 3), "compiled": t.compile}
    if stopped_early:
        extra["stopped_early"] = stopped_early
    return finish(accelerator, cfg, run.model, run.tracker, run.out, run.ctx, run.hooks, extra)


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
