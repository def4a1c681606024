"""The training loop: the tutorial's forward, loss, backward, optimizer step and lr step, at any scale.

Read `train` top to bottom: setup (config checks, processes, parts, checkpoint, tracker), the updates, then
teardown (replica check, weights, summary). What an update does is `UpdateStep`, just above it. Side concerns
are one call each into a module named for them: `runtime/` (processes, checkpoints, signals, memory),
`reporting/` (metrics rows, W&B, plots, throughput), `data/` (the global batch sampler), `schedules/` (lr).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import shutil
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from safetensors.torch import save_file
from torch import nn
from tqdm.auto import tqdm

from template.config import Config
from template.data import TrainData, make_eval_loader
from template.errors import ConfigError, DriftError, NonFiniteError
from template.hooks import HookContext, Hooks
from template.metrics import EvalMetrics, build_eval_metrics, check_monitors
from template.parts import Parts, build_parts
from template.reporting.bits_per_byte import bits_per_byte
from template.reporting.memory import PeakMemory, per_rank
from template.reporting.profiling import UpdateProfiler
from template.reporting.redaction import config_yaml, safe_config
from template.reporting.throughput import Throughput, Window
from template.reporting.tracking import Tracker, training_row
from template.runtime import checkpoint, host_memory, nonfinite, sharding
from template.runtime.batch_size import AdaptiveUpdate, MicroBatch
from template.runtime.checkpoint import Checkpointer
from template.runtime.clock import Clock
from template.runtime.compile import check_compile, compile_model
from template.runtime.distributed import (
    any_rank,
    check_launch_env,
    check_lr_sync,
    first_drift,
    launcher_world_size,
    make_accelerator,
    plain_model,
    replica_digests,
)
from template.runtime.preemption import StopRequest
from template.runtime.rng import RNGState
from template.runtime.run_lock import RunLock
from template.schedules import check_schedule
from template.schedules.checks import trial_steps

# ------------------------------------------------------------------------------------------------
# One optimizer update
# ------------------------------------------------------------------------------------------------

# Accelerate's wrappers add host time to every update (`AcceleratedOptimizer.step` looks up an optional
# package twice, `zero_grad` inspects a signature, `backward` divides by 1; docs/benchmark.md). Where they forward
# only (no GradScaler; single-process, DDP or multi-CPU runs), UpdateStep calls what they would call: the
# same ops, the same results. fp16, FSDP, DeepSpeed and XLA keep the wrappers.
PASS_THROUGH = (DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU)
NO_CONTEXT = nullcontext()  # reusable, so no-op contexts cost no object per micro-batch


class UpdateStep:
    """Forward, loss and backward over the accumulation micro-batches, clip, optimizer step."""

    def __init__(self, accelerator: Accelerator, model: nn.Module, optimizer: Any, loss_fn: nn.Module,
                 accum: int, clip: float, skip_nonfinite: bool) -> None:
        self.accelerator, self.model, self.optimizer, self.loss_fn = accelerator, model, optimizer, loss_fn
        self.accum, self.clip, self.skip_nonfinite = accum, clip, skip_nonfinite
        self.device = accelerator.device
        self.non_blocking = self.device.type == "cuda"
        self._move = self.device.type != "cpu"  # batches are built on the CPU: nothing to move there
        self._direct = accelerator.scaler is None and accelerator.distributed_type in PASS_THROUGH
        self._step_optimizer = optimizer.optimizer if self._direct else optimizer
        self._backward = torch.Tensor.backward if self._direct else accelerator.backward
        self._autocast = accelerator.autocast if accelerator.native_amp else lambda: NO_CONTEXT
        self._params = list(model.parameters())
        self._scaled = accelerator.scaler is not None
        self.sharded = sharding.is_sharded(model)
        # the norm on every update: clipping needs it, and so does skipping sharded gradients (their finiteness
        # is read from the norm over every shard)
        self._every_norm = bool(clip) or (self.sharded and skip_nonfinite)

    def grad_norm(self, max_norm: float) -> torch.Tensor:
        """Clip to `max_norm` and return the total norm (max_norm=inf: the norm only, grads x 1.0)."""
        if self.sharded:
            return sharding.clip_grad_norm(self._params, max_norm)
        if self._direct:
            return torch.nn.utils.clip_grad_norm_(self._params, max_norm)
        return self.accelerator.clip_grad_norm_(self.model.parameters(), max_norm)

    def __call__(self, batches: Iterator[Any], want_norm: bool) -> tuple[torch.Tensor, torch.Tensor | None, bool]:
        """Run one update; return (this rank's loss as a device tensor, grad norm or None, applied?)."""
        total: torch.Tensor | None = None
        for micro in range(self.accum):
            x, y = next(batches)
            if self._move:
                x, y = (t.to(self.device, non_blocking=self.non_blocking) for t in (x, y))
            # gradients are all-reduced (reduce-scattered, sharded) once per update, on the last micro-batch
            if self.sharded:
                sharding.set_gradient_sync(self.model, micro == self.accum - 1)
                sync = NO_CONTEXT
            else:
                sync = NO_CONTEXT if micro == self.accum - 1 else self.accelerator.no_sync(self.model)
            with sync, self._autocast():
                loss = self.loss_fn(self.model(x), y)
                if self.accum > 1:
                    loss = loss / self.accum
            self._backward(loss)
            total = loss.detach() if total is None else total + loss.detach()
        assert total is not None
        norm = self.grad_norm(self.clip or math.inf) if self._every_norm or want_norm else None
        # fp16's GradScaler already skips a non-finite update, and must be the one to (its scale has to update)
        applied = self._scaled or not self.skip_nonfinite or nonfinite.gradients_finite(self.model, norm)
        if applied:
            self._step_optimizer.step()
        self._step_optimizer.zero_grad(set_to_none=True)
        return total, norm, applied and not self.optimizer.step_was_skipped


@torch.no_grad()
def evaluate(accelerator: Accelerator, model: nn.Module, loss_fn: nn.Module, loader: Any, batches: int,
             metrics: EvalMetrics | None = None) -> dict[str, float]:
    """eval/loss (the mean over the eval split, weighted by samples) and each `eval.metrics` value over the same
    batches, reduced over ranks: the same values everywhere."""
    model.eval()
    totals = torch.zeros(2, dtype=torch.float64, device=accelerator.device)
    for x, y in itertools.islice(loader, batches or None):
        x, y = x.to(accelerator.device), y.to(accelerator.device)
        with accelerator.autocast():
            outputs = model(x)
            totals[0] += loss_fn(outputs, y).double() * len(x)
        totals[1] += len(x)
        if metrics is not None:
            metrics.update(outputs, y)
    if sharding.is_sharded(model):
        sharding.reshard(model)
    model.train()
    totals = accelerator.reduce(totals, "sum")
    values = {"eval/loss": (totals[0] / totals[1]).item()}
    if metrics is not None:
        values.update(metrics.compute())  # torchmetrics sums each metric's state over the ranks
    return values


# ------------------------------------------------------------------------------------------------
# Setup helpers
# ------------------------------------------------------------------------------------------------


def preflight(cfg: Config, world_size: int = 1, device: torch.device | None = None) -> tuple[Parts, list[Path]]:
    """Everything that can reject a config, before a write or a collective: the parts, the output_dir, what
    the device cannot do, and where to resume from (decided here, once). Any bad input is one ConfigError."""
    parts = build_parts(cfg, world_size)
    parts.notes = check_schedule(cfg.scheduler, cfg.train.max_steps, parts.schedule.lrs(), parts.updates_per_epoch)
    trial_steps(parts.schedule, min(cfg.train.max_steps, 3))
    s, t = cfg.scheduler, cfg.train
    if s.interval == "epoch" and t.max_steps < parts.updates_per_epoch:
        raise ConfigError("scheduler.interval", f"'epoch' steps the lr once per epoch ({parts.updates_per_epoch} "
                                                f"updates), but train.max_steps is {t.max_steps}: it never changes")
    evaluates = bool(t.eval_every and parts.eval_set is not None)
    parts.metrics = build_eval_metrics(cfg.eval, parts.model, parts.eval_set if evaluates else None)
    # a monitor (scheduler.monitor, early stopping's) must name an eval/ key that an evaluation produces
    parts.notes += check_monitors(cfg, parts.schedule.needs_metric, parts.hooks, parts.metrics, evaluates)
    out = Path(cfg.output_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError("output_dir", f"{out} exists and is not a directory")
    resume_from = checkpoint.resume_candidates(out, t.resume)  # a path that is no complete checkpoint: error
    # a refused change: error, nothing loaded; an allowed one: said in one line at resume
    parts.resume_changes = checkpoint.resume_changes(safe_config(cfg), resume_from)
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if cfg.distributed.shard == "fsdp2" and str(t.micro_batch_size) == "auto":
        raise ConfigError("train.micro_batch_size", "auto's trial updates run per rank, but a sharded forward is a "
                                                    "collective of every rank: set a number with distributed.shard")
    if cfg.distributed.shard == "fsdp2" and cfg.optimizer.name == "muon":
        raise ConfigError("optimizer.name", "muon orthogonalises each hidden matrix whole, and distributed.shard=fsdp2 "
                                            "splits them across ranks: use adamw sharded, or muon unsharded")
    if cfg.distributed.shard == "fsdp2" and t.mixed_precision == "fp16":
        raise ConfigError("train.mixed_precision", "fp16's GradScaler does not work on FSDP2's sharded gradients; "
                                                   "use bf16 (FSDP2 keeps fp32 weights and reduces in fp32)")
    if t.mixed_precision == "fp16" and device.type != "cuda":
        # Accelerate would accept it and silently train in fp32: no GradScaler, no fp16 autocast off CUDA
        raise ConfigError("train.mixed_precision", f"fp16 needs a CUDA device (this run is on {device.type}); "
                                                   "use bf16, or no")
    if t.compile:
        check_compile(device)
    if cfg.distributed.shard == "fsdp2":
        parts.shard_units = sharding.shard_units(parts.model, cfg.distributed.shard_units)
    return parts, resume_from


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


def draw_lr_preview(cfg: Config, out: Path) -> dict[str, Path]:
    """The lr curve this config will produce, drawn once before training for the W&B run (rank 0)."""
    from template.schedules.preview import plot_lr_preview  # matplotlib: only when W&B shows it

    return {"lr_preview": plot_lr_preview(cfg, out / "lr_preview.png")}


# ------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------


def train(cfg: Config) -> dict[str, Any]:
    """Run (or resume) the training described by `cfg` on however many processes were launched."""
    t = cfg.train
    if t.keep_freed_memory:
        host_memory.keep_freed_memory()  # before the first tensors: no page faults on every update's activations
    if t.deterministic:
        use_deterministic_kernels()
    check_launch_env()
    parts, resume_from = preflight(cfg, launcher_world_size())  # every config check before a process group
    accelerator = make_accelerator(t.mixed_precision, log_with="wandb" if cfg.tracking.wandb else None,
                                   timeout_s=cfg.distributed.timeout_s)
    world, out = accelerator.num_processes, Path(cfg.output_dir)
    for note in parts.notes:
        accelerator.print(f"warning: {note}")
    if parts.resume_changes:
        accelerator.print(f"note: resuming with changed settings: {', '.join(parts.resume_changes)}")

    # One live run per output_dir; on every way out (errors too) the lock, the signal handlers, the progress
    # bar and the tracker are given back, so a process that calls train() again starts clean.
    with lock_output_dir(accelerator, out), contextlib.ExitStack() as held:
        # ---- setup: the parts on their devices, then the checkpoint's state over them ----
        if cfg.distributed.shard == "fsdp2":  # compile per unit, then shard: the trainer's own FSDP2, on any device
            held.callback(sharding.own_process_group(accelerator.device))
            model = sharding.shard_model(parts.model, parts.shard_units, parts.optimizer, accelerator.device,
                                         t.mixed_precision, compile_units=t.compile)
            optimizer = accelerator.prepare(parts.optimizer)
        else:
            model, optimizer = accelerator.prepare(parts.model, parts.optimizer)
            if t.compile:
                compile_model(model)  # in place: names stay plain for checkpoints and digests
        loss_fn, schedule, hooks = parts.loss_fn.to(accelerator.device), parts.schedule, parts.hooks
        clock = Clock.from_config(cfg)
        micro = MicroBatch(t, world)  # train.micro_batch_size: the accumulation that makes up the global batch
        data = TrainData(parts.train_set, t.batch_size, micro.accum, world, accelerator.process_index,
                         cfg.seed, cfg.data.num_workers, accelerator.device.type == "cuda")
        tracker = Tracker(accelerator, cfg, parts.metrics.higher_is_better if parts.metrics else None)
        # Everything a checkpoint carries, by name: adding state to a run is adding an entry here.
        checkpointer = Checkpointer(accelerator, out, t.keep_checkpoints, model, safe_config(cfg),
                                    shared={"schedule": schedule, "clock": clock, "data": data, "hooks": hooks,
                                            "tracker": tracker, "micro_batch": micro},
                                    per_rank={"rng": RNGState()},
                                    sharded_optimizer=optimizer.optimizer if sharding.is_sharded(model) else None)
        start = checkpointer.load(resume_from)
        micro.choose(accelerator, model, loss_fn, data)  # auto: the checkpoint's size, or a search all ranks agree on
        if accelerator.is_main_process:  # each resume's config apart: config.yaml describes the first process
            out.mkdir(parents=True, exist_ok=True)
            (out / ("config.yaml" if start == 0 else f"config.resumed-{start:08d}.yaml")).write_text(config_yaml(cfg))
            for path in getattr(parts.train_set, "run_files", ()):  # the tokenizer: samples decode from out alone
                shutil.copyfile(path, out / path.name)
        accelerator.wait_for_everyone()
        preview = draw_lr_preview(cfg, out) if tracker.wandb and t.plots and accelerator.is_main_process else {}
        tracker.start(start, preview)
        held.push(lambda failed, *_: tracker.close(exit_code=1 if failed else 0))
        stop = StopRequest()  # SIGTERM / SIGUSR1: finish the update, checkpoint, exit
        held.callback(stop.restore)

        eval_loader, eval_batches = None, 0
        if parts.eval_set is not None and t.eval_every:
            eval_loader, eval_batches = make_eval_loader(parts.eval_set, t.batch_size, t.eval_batches, world,
                                                         accelerator.process_index, accelerator.device.type == "cuda",
                                                         micro.accum)
        eval_metrics = parts.metrics.to(accelerator.device) if parts.metrics else None
        update: UpdateStep | AdaptiveUpdate
        update = UpdateStep(accelerator, model, optimizer, loss_fn, micro.accum, t.clip_grad_norm,
                            skip_nonfinite=t.nonfinite == "skip")
        if micro.auto:  # out of memory mid-run: halve the micro-batch and redo the update
            update = AdaptiveUpdate(update, micro, data, clock, accelerator, cfg.distributed.timeout_s)
        ctx = HookContext(accelerator, model, plain_model(accelerator, model), optimizer, out,
                          (lambda: evaluate(accelerator, model, loss_fn, eval_loader, eval_batches, eval_metrics))
                          if eval_loader is not None else None)
        throughput = Throughput(ctx.plain, parts.train_set, t.batch_size, world, t.peak_flops, accelerator.device)
        memory = PeakMemory(accelerator.device)
        profiler = UpdateProfiler(t.profile, out, accelerator.process_index, accelerator.is_main_process)
        reduce_max = (lambda x: accelerator.reduce(x, "max")) if world > 1 else None
        last_step = clock.last_step(t.max_samples, t.max_steps)
        loss_feeds_schedule = schedule.needs_metric and schedule.monitor == "train/loss"  # read it every update
        progress = tqdm(total=last_step, initial=start, disable=not (accelerator.is_main_process and t.progress),
                        desc="train", dynamic_ncols=True)
        held.callback(progress.close)

        # ---- the updates ----
        model.train()
        if cfg.distributed.sync_check_every:  # the first update's lr too (a strategy set up rank-dependently)
            check_lr_sync(accelerator, schedule, cfg.distributed.sync_check_action == "resync")
        window = Window()
        loss_value, metrics = math.nan, dict[str, float]()
        stop_reason: str | None = None
        preempted = False
        while clock.step < last_step and stop_reason is None:
            step = clock.step + 1
            profiler.begin(step)  # train.profile's window only
            logging = step % t.log_every == 0 or step == last_step
            lrs = schedule.lrs() if logging else {}  # the lr this update uses: what gets logged for it
            loss, grad_norm, applied = update(data, want_norm=logging and cfg.tracking.log_grad_norm)
            lr_steps = clock.advance(applied)  # none if the update was skipped (non-finite, fp16 overflow)
            window.count(restart_after_first=t.compile and not logging)

            metrics = {}
            if logging or loss_feeds_schedule:
                loss_value = (accelerator.reduce(loss, "mean") if world > 1 else loss).item()
                metrics["train/loss"] = loss_value
                if t.nonfinite == "stop" and not math.isfinite(loss_value):
                    raise NonFiniteError(f"non-finite loss {loss_value} at update {step}; the newest checkpoint "
                                         "holds the last good state")
            if eval_loader is not None and (step % t.eval_every == 0 or step == last_step):
                metrics.update(evaluate(accelerator, model, loss_fn, eval_loader, eval_batches, eval_metrics))
                tracker.log_confusion(step, eval_metrics)  # eval.confusion_matrix: these weights' (before a hook's)
                metrics.update(bits_per_byte(metrics["eval/loss"], parts.eval_set))  # if it knows tokens/byte
            # the lr step: the strategy advances by the steps this update completed; a metric-driven one sees
            # the metric once, on the last of them
            for lr_step in lr_steps:
                schedule.after_update(lr_step, metrics if lr_step == lr_steps[-1] else None)

            ctx.step = step
            if hooks and applied:
                hooks.after_update(ctx)
            if hooks and "eval/loss" in metrics:
                hooks.after_evaluate(ctx, metrics)  # may add metrics, e.g. eval/loss_ema
            if cfg.distributed.sync_check_every and step % cfg.distributed.sync_check_every == 0:
                check_lr_sync(accelerator, schedule, cfg.distributed.sync_check_action == "resync")
            if logging:
                row = training_row(step, lrs, loss_value, data.epochs(step / parts.updates_per_epoch),
                                   throughput.rates(window.updates, window.seconds()), grad_norm,
                                   clock.skipped if t.nonfinite == "skip" or clock.skipped else None, clock.samples)
                if throughput.tokens_per_sample:  # W&B's alternative x axes: runs of other batches on one chart
                    row["tokens"] = clock.samples * throughput.tokens_per_sample
                row.update(memory.window(reduce_max))  # peaks since the last row, the max over ranks
                row.update(micro.row())  # an auto run's micro-batch: in its first row and when it changed
                if hooks:
                    hooks.on_log(ctx, row)
                tracker.log(row)
                progress.set_postfix(loss=f"{loss_value:.4g}", lr=f"{next(iter(lrs.values())):.3g}", refresh=False)
                window.restart()
            if "eval/loss" in metrics:
                tracker.log_eval(step, {k: v for k, v in metrics.items() if k.startswith("eval/")})
            progress.update(1)
            tracker.attach(profiler.end(step))  # the traces, into the W&B run

            # a signal is agreed on by every rank at log updates (a collective under DDP), at every update alone
            preempted = (world == 1 or logging) and stop.agreed(accelerator)
            stop_reason = "preempted" if preempted else (hooks.stop_reason(ctx) if hooks else None)
            every = t.checkpoint_every
            if preempted or (every and (step % every == 0 or step == last_step or stop_reason)):
                tracker.log_checkpoint(checkpointer.save(step), step)  # a W&B artifact with log_model=checkpoints
        progress.close()

        # ---- teardown ----
        if preempted:
            tracker.close()
            accelerator.print(f"stopped by signal {stop.signal or 'on another rank'} after update {clock.step}; "
                              "checkpoint saved, rerun the same command to resume")
            return {"step": clock.step, "preempted": True}
        if stop_reason:
            accelerator.print(f"stopped early after update {clock.step}: {stop_reason}")
        summary: dict[str, Any] = {"step": clock.step, "world_size": world,
                                   "loss": loss_value if math.isfinite(loss_value) else None,
                                   **{k: v for k, v in metrics.items() if k.startswith("eval/")},
                                   "first_update_s": round(window.first_update_s or 0.0, 3), "compiled": t.compile}
        if stop_reason:
            summary["stopped_early"] = stop_reason
        summary.update(tracker.run_summary())  # the best eval values and their updates, the peak memory
        summary.update(micro.summary())
        summary.update(per_rank(memory, sharding.local_bytes(model, optimizer)))  # what each rank holds
        summary = write_results(accelerator, cfg, model, hooks, ctx, tracker, summary)
        ran = f", loss {loss_value:.4g}" if math.isfinite(loss_value) else " (no update left to run)"
        evals = "".join(f", {k} {v:.4g}" for k, v in summary.items() if k.startswith("eval/"))
        accelerator.print(f"done: update {clock.step}{ran}{evals}; results in {out}", flush=True)
        return summary


def write_results(accelerator: Accelerator, cfg: Config, model: nn.Module, hooks: Hooks, ctx: HookContext,
                  tracker: Tracker, summary: dict[str, Any]) -> dict[str, Any]:
    """Check the replicas agree, let the hooks finish, then write model.safetensors, summary.json and the
    curves (rank 0). Raises DriftError (after writing summary.json) if the replicas differ."""
    out = Path(cfg.output_dir)
    digests = replica_digests(accelerator, model)
    drifted = first_drift(accelerator, model) if len(set(digests)) > 1 else None
    unwrapped = plain_model(accelerator, model)
    backend = torch.distributed.get_backend() if torch.distributed.is_initialized() else None
    summary = {**summary, "device": accelerator.device.type, "backend": backend,
               "param_digest": digests[accelerator.process_index], "replica_digests": digests}
    if drifted is None:
        hooks.on_end(ctx, summary)
    full: dict[str, torch.Tensor] | None = None
    if sharding.is_sharded(model) and drifted is None:  # sharded: every rank checks its shards and gathers; the
        nonfinite.assert_finite(unwrapped)              # full tensors land on rank 0
        full = sharding.full_state_dict(model)
    if accelerator.is_main_process:
        if drifted is None:
            if full is None:
                nonfinite.assert_finite(unwrapped)
            save_file(checkpoint.untied(full or unwrapped.state_dict()), str(out / "model.safetensors"))
            tracker.log_model(summary["step"])  # tracking.log_model: the weights as a W&B artifact
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        if cfg.train.plots:
            from template.reporting.plotting import plot_training_curves  # matplotlib imported only at the end

            rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line]
            tracker.log_images(plot_training_curves(rows, out), cfg.train.max_steps)
    tracker.close()
    accelerator.wait_for_everyone()
    if drifted is not None:
        raise DriftError(f"replicas drifted: parameter '{drifted}' differs between ranks ({digests})")
    return summary
