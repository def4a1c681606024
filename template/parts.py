"""The parts of a run, built from the config through the registries: model, loss, optimizer, lr schedule,
data, hooks. Below the trainer and the preview (which both build them), so imports point one way.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

import torch
from accelerate.utils import set_seed
from torch import nn
from torch.utils.data import Dataset

from template.config import Config
from template.data import DATASETS, StreamingData
from template.errors import ConfigError
from template.hooks import Hooks
from template.losses import LOSSES
from template.metrics import EvalMetrics
from template.models import MODELS
from template.optim import build_optimizer
from template.runtime.batch_size import initial_accum
from template.schedules import LRSchedule, build_schedule


@dataclass
class Parts:
    model: nn.Module
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    train_set: Dataset
    eval_set: Dataset | None
    updates_per_epoch: int
    hooks: Hooks
    notes: list[str] = field(default_factory=list)  # warnings about the config, printed once before training
    resume_changes: list[str] = field(default_factory=list)  # allowed changes since the checkpoint
    shard_units: list[tuple[str, nn.Module]] = field(default_factory=list)  # distributed.shard's units, by name
    metrics: EvalMetrics | None = None  # eval.metrics, built and tried by the trainer's preflight


def import_plugins(cfg: Config) -> None:
    """Import the modules listed under `imports:` so their registrations exist (a forker's components)."""
    for i, name in enumerate(cfg.imports):
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ConfigError(f"imports.{i}", f"cannot import '{name}': {exc}") from None


def stream_horizon(cfg: Config, stream: StreamingData) -> int:
    """Check that a stream gives at least one global batch, and return what stands in for its epoch length:
    a stream's pass length is unknown until it is read, so the run's `train.max_steps` (its `epoch` column
    is the fraction of the run done), and an lr schedule cannot count in epochs."""
    if cfg.scheduler.interval == "epoch":
        raise ConfigError("scheduler.interval", f"'epoch' needs a known epoch length, which the stream "
                                                f"'{cfg.data.name}' has not: use 'step'")
    stream.check(cfg.train.batch_size)
    return cfg.train.max_steps


def build_parts(cfg: Config, world_size: int = 1) -> Parts:
    """Model, loss, optimizer, lr schedule and data from the config; every bad value is a ConfigError."""
    import_plugins(cfg)
    t = cfg.train
    if t.batch_size % (world_size * t.grad_accum_steps):
        raise ConfigError(
            "train.batch_size",
            f"global batch {t.batch_size} is not divisible by world size {world_size} "
            f"x train.grad_accum_steps {t.grad_accum_steps}",
        )
    initial_accum(t, world_size)  # train.micro_batch_size against the batch and the processes
    set_seed(cfg.seed)
    model = MODELS.build(cfg.model.name, **cfg.model.kwargs)
    loss_fn = LOSSES.build(cfg.loss.name, **cfg.loss.kwargs)
    train_set, eval_set = DATASETS.build(cfg.data.name, cfg.seed, **cfg.data.kwargs)
    if isinstance(train_set, StreamingData):
        updates_per_epoch = stream_horizon(cfg, train_set)
    else:
        size = len(train_set)  # type: ignore[arg-type]
        if t.batch_size > size:
            raise ConfigError("train.batch_size", f"{t.batch_size} is larger than the dataset ({size} samples)")
        updates_per_epoch = size // t.batch_size
    optimizer = build_optimizer(model, cfg.optimizer, cfg.seed)
    schedule = build_schedule(cfg.scheduler, optimizer, updates_per_epoch)
    hooks = Hooks(cfg.hooks)
    hooks.check(cfg, model)
    return Parts(model, loss_fn, optimizer, schedule, train_set, eval_set, updates_per_epoch, hooks)
