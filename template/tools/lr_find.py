"""The lr range test: train with an exponentially growing lr and read a good lr off the loss curve.

Why here and not a library's: Lightning's `lr_find` (the one in common use) fails under DDP (its issues
#14624, #19912, #8983). This one runs the configured model, data, loss and optimizer through the trainer's
own `UpdateStep`, fed by the same `GlobalBatchSampler`, so on N processes every update sees the same global
batch as on one, and the loss read after each update is the mean over ranks. Every rank then computes the
same smoothed loss from the same all-reduced number, so every rank takes the same stop decision at the
same update without a further collective; one gather at the end checks that the curves did agree.

The lr of update i (0-based) is min_lr * (max_lr / min_lr) ** (i / (num_steps - 1)), written into every
param group (a group with its own base lr is scaled by the same factor, so the suggestion is a value for
`optimizer.lr`). The configured lr schedule is not used. The loss is smoothed with a bias-corrected
exponential moving average (as fastai and Lightning do); the test stops once the smoothed loss exceeds
`diverge` x the best so far, or a loss is not finite. Suggestions: the lr where the smoothed curve falls
fastest against log(lr) (searched past the smoothing's half-life: `skip_begin_for`), and the lr of its
minimum / 10. Model and optimizer state (and the RNG) are restored afterwards: the weights are untouched for
whoever called it.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from torch import nn

from template.config import Config, OptimizerConfig
from template.data import GlobalBatchSampler, make_loader
from template.errors import ConfigError, DriftError
from template.runtime.compile import compile_model
from template.runtime.distributed import check_launch_env, launcher_world_size, make_accelerator, plain_model
from template.trainer import UpdateStep, preflight, use_deterministic_kernels

COMPLETED, DIVERGED, NONFINITE = "completed", "diverged", "non-finite"
MIN_SLOPE_POINTS = 5  # fewer points left for the slope search: its steepest point is one batch's noise


@dataclass(frozen=True)
class LRFindSettings:
    """The range test's own knobs (command-line flags of scripts/find_lr.py, not config keys)."""

    min_lr: float = 1e-6
    max_lr: float = 1.0
    num_steps: int = 100
    beta: float = 0.98  # EMA weight of the past: 0.98 averages over roughly the last 50 updates
    diverge: float = 4.0  # stop once the smoothed loss exceeds this multiple of the best smoothed loss

    def check(self) -> None:
        """ConfigError naming the flag at fault, before any process group or write."""
        if not (math.isfinite(self.min_lr) and self.min_lr > 0):
            raise ConfigError("--min-lr", f"must be a finite number > 0, got {self.min_lr}")
        if not (math.isfinite(self.max_lr) and self.max_lr > self.min_lr):
            raise ConfigError("--max-lr", f"must be finite and above --min-lr ({self.min_lr}), got {self.max_lr}")
        if self.num_steps < 2:
            raise ConfigError("--num-steps", f"must be >= 2 (a range needs two ends), got {self.num_steps}")
        if not 0 <= self.beta < 1:
            raise ConfigError("--beta", f"must be in [0, 1), got {self.beta}")
        if not self.diverge > 1:
            raise ConfigError("--diverge", f"must be > 1 (a multiple of the best smoothed loss), got {self.diverge}")


@dataclass
class LRFindResult:
    """The curve (one entry per update run) and what to read off it; `stop_step` updates were run."""

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggestion_steepest: float | None
    suggestion_min_over_10: float | None
    stopped_reason: str  # COMPLETED, DIVERGED or NONFINITE
    stop_step: int
    settings: LRFindSettings = field(default_factory=LRFindSettings)
    world_size: int = 1

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"


def lr_at(step: int, settings: LRFindSettings) -> float:
    """The lr of update `step` (0-based): exponential from min_lr (first) to max_lr (last)."""
    return settings.min_lr * (settings.max_lr / settings.min_lr) ** (step / (settings.num_steps - 1))


class SmoothedLoss:
    """Bias-corrected exponential moving average: without the correction the first values are pulled
    towards 0 (the average starts at 0), which would look like a steep early descent."""

    def __init__(self, beta: float) -> None:
        self.beta, self.average, self.count = beta, 0.0, 0

    def update(self, loss: float) -> float:
        self.count += 1
        self.average = self.beta * self.average + (1 - self.beta) * loss
        return self.average / (1 - self.beta**self.count)


def smooth(losses: Sequence[float], beta: float) -> list[float]:
    ema = SmoothedLoss(beta)
    return [ema.update(loss) for loss in losses]


def skip_begin_for(points: int, beta: float) -> int:
    """How many leading points the steepest-slope search leaves out: the smoothing's half-life, at most a
    third of the curve, at least Lightning's 10 of 100.

    Why the half-life: in the bias-corrected average, update k's loss moves the smoothed value by
    (1 - beta) / (1 - beta**k) of its distance, ~1/k early on against (1 - beta) later; until beta**k
    falls to 1/2 one batch's noise moves the curve more than twice as much as it will later, and its slope
    there is mostly noise. Measured on configs/default.yaml (1e-4 to 10, 100 updates): Lightning's fixed
    skip of 10 picked 4e-4, a noise dip on the flat start (that config trains well from 0.018 to 1.0);
    the half-life skip picks 0.43.
    """
    half_life = math.ceil(math.log(0.5) / math.log(beta)) if beta > 0 else 0
    return max(min(10, points // 10), min(half_life, points // 3))


def suggest(lrs: Sequence[float], smoothed: Sequence[float], beta: float = 0.98, skip_begin: int | None = None,
            skip_end: int = 1) -> tuple[float | None, float | None]:
    """(steepest, minimum / 10) from a smoothed curve; None where the curve is too short to say.

    Steepest: the most negative slope of the smoothed loss against log(lr), leaving out the first
    `skip_begin` points (default: `skip_begin_for`) and the last `skip_end` (the blow-up a diverged run
    stops on); None with fewer than MIN_SLOPE_POINTS left. Minimum / 10: the lr of the lowest smoothed loss,
    over the whole curve, divided by 10.
    """
    n = len(smoothed)
    minimum = lrs[int(np.argmin(smoothed))] / 10 if n else None
    begin = skip_begin_for(n, beta) if skip_begin is None else skip_begin
    kept = slice(begin, n - skip_end)
    x, y = np.log(np.asarray(lrs[kept], dtype=np.float64)), np.asarray(smoothed[kept], dtype=np.float64)
    if len(y) < MIN_SLOPE_POINTS:
        return None, minimum
    return float(np.exp(x[int(np.argmin(np.gradient(y, x)))])), minimum


def base_ratios(optimizer: torch.optim.Optimizer, cfg: OptimizerConfig) -> list[float]:
    """Each param group's base lr / `optimizer.lr`: the schedule built with the optimizer may already have
    moved the groups' lr (a warmup starting at 0), so the base is the `initial_lr` it recorded, else the
    config's (an optimizer may set a group's base lr itself: `muon`'s Muon part)."""
    own = {g.name: g.lr for g in cfg.groups if g.lr is not None}
    return [float(group.get("initial_lr", own.get(str(group.get("name", "")), cfg.lr))) / cfg.lr
            for group in optimizer.param_groups]


def range_test(accelerator: Accelerator, model: nn.Module, optimizer: Any, update: UpdateStep,
               batches: Iterator[Any], ratios: Sequence[float], settings: LRFindSettings) -> LRFindResult:
    """Run the test on prepared objects, then put model, optimizer and RNG back as they were.

    `optimizer` is the prepared one (its param groups are the raw optimizer's); every rank must call this.
    """
    world = accelerator.num_processes
    plain = plain_model(accelerator, model)
    raw = getattr(optimizer, "optimizer", optimizer)
    saved_model = copy.deepcopy(plain.state_dict())
    saved_optimizer = copy.deepcopy(raw.state_dict())
    saved_rng = torch.random.get_rng_state()
    saved_cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    was_training = model.training

    lrs: list[float] = []
    losses: list[float] = []
    smoothed: list[float] = []
    ema, best, reason = SmoothedLoss(settings.beta), math.inf, COMPLETED
    model.train()
    try:
        for step in range(settings.num_steps):
            lr = lr_at(step, settings)
            for group, ratio in zip(optimizer.param_groups, ratios, strict=True):
                group["lr"] = lr * ratio
            local_loss, _, _ = update(batches, want_norm=False)
            # the same all-reduced number on every rank: every rank decides alike below
            loss = (accelerator.reduce(local_loss, "mean") if world > 1 else local_loss).item()
            if not math.isfinite(loss):
                reason = NONFINITE
                break
            value = ema.update(loss)
            lrs.append(lr)
            losses.append(loss)
            smoothed.append(value)
            if value > settings.diverge * best:  # best is inf until the first point: never on update 1
                reason = DIVERGED
                break
            best = min(best, value)
    finally:
        plain.load_state_dict(saved_model)
        raw.load_state_dict(saved_optimizer)
        torch.random.set_rng_state(saved_rng)
        if saved_cuda_rng is not None:
            torch.cuda.set_rng_state_all(saved_cuda_rng)
        model.train(was_training)

    steepest, minimum = suggest(lrs, smoothed, settings.beta)
    result = LRFindResult(lrs, losses, smoothed, steepest, minimum, reason, len(losses) + (reason == NONFINITE),
                          settings, world)
    if world > 1:  # holds by construction (see the module docstring); checked, as replicas are after training
        curves = gather_object([(result.stop_step, result.losses)])
        if any(curve != curves[0] for curve in curves[1:]):
            raise DriftError(f"lr range test: ranks disagree on the curve or the stop update "
                             f"(stop updates {[c[0] for c in curves]})")
    return result


def find_lr(cfg: Config, settings: LRFindSettings) -> LRFindResult:
    """The range test for `cfg` on however many processes were launched; rank 0 writes lr_find.json and
    lr_find.png into `cfg.output_dir` (nothing else: no checkpoint, no weights, no W&B run)."""
    settings.check()
    if cfg.train.deterministic:
        use_deterministic_kernels()
    check_launch_env()
    # the test starts from the model's initialisation, never from a checkpoint of the output_dir
    cfg = replace(cfg, train=replace(cfg.train, resume="none"))
    parts, _ = preflight(cfg, launcher_world_size())
    t = cfg.train
    accelerator = make_accelerator(t.mixed_precision, timeout_s=cfg.distributed.timeout_s)
    model, optimizer = accelerator.prepare(parts.model, parts.optimizer)
    if t.compile:
        compile_model(model)
    loss_fn = parts.loss_fn.to(accelerator.device)
    sampler = GlobalBatchSampler(len(parts.train_set), t.batch_size, t.grad_accum_steps,  # type: ignore[arg-type]
                                 accelerator.num_processes, accelerator.process_index, cfg.seed)
    batches = iter(make_loader(parts.train_set, sampler, cfg.data.num_workers, accelerator.device.type == "cuda"))
    update = UpdateStep(accelerator, model, optimizer, loss_fn, t.grad_accum_steps, t.clip_grad_norm,
                        skip_nonfinite=t.nonfinite == "skip")
    result = range_test(accelerator, model, optimizer, update, batches, base_ratios(parts.optimizer, cfg.optimizer),
                        settings)
    if accelerator.is_main_process:
        write_outputs(result, Path(cfg.output_dir))
    accelerator.wait_for_everyone()
    return result


def write_outputs(result: LRFindResult, out: Path) -> tuple[Path, Path]:
    """lr_find.json (the curve and the suggestions) and lr_find.png (the plot) in `out`."""
    from template.reporting.plotting import plot_lr_find  # matplotlib's import only where a plot is drawn

    out.mkdir(parents=True, exist_ok=True)
    curve = out / "lr_find.json"
    curve.write_text(result.to_json())
    return curve, plot_lr_find(result.lrs, result.losses, result.smoothed, result.suggestion_steepest,
                               result.suggestion_min_over_10, out / "lr_find.png")
