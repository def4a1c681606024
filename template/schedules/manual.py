"""`scheduler.strategy: manual`: a plain object that writes `param_group['lr']` itself.

The tutorial's last section made first-class: the trainer calls `step(update=, epoch=, metric=)`
after every applied update, exactly as it advances the other strategies, and the object's memory
(whatever it keeps in `self`, plus the lrs it wrote) is checkpointed through `state_dict()`.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from template.config import SchedulerConfig
from template.registry import Registry
from template.schedules.base import STRATEGIES

MANUAL_STRATEGIES: Registry[type[ManualLR]] = Registry("manual lr strategy", "scheduler.name")


class ManualLR:
    """Base class: subclass, implement `step`, register. Every attribute but the optimizer is checkpointed.

    `step(update=0, ...)` is also called once before the first update (as torch schedulers set their
    initial lr at construction), so a warmup rule sets update 1's lr; metric-driven strategies are not
    (there is no metric yet).
    """

    needs_metric = False

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]

    def step(self, update: int, epoch: int, metric: float | None) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "optimizer"}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.__dict__.update(state_dict)


@MANUAL_STRATEGIES.register("halving")
class ManualHalvingLR(ManualLR):
    """The tutorial's rule, verbatim in spirit: after every `every`-th update, `lr *= gamma` in each group."""

    def __init__(self, optimizer: torch.optim.Optimizer, every: int = 10, gamma: float = 0.5) -> None:
        super().__init__(optimizer)
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.every = every
        self.gamma = gamma

    def step(self, update: int, epoch: int, metric: float | None) -> None:
        if update > 0 and update % self.every == 0:
            for group in self.optimizer.param_groups:
                group["lr"] = group["lr"] * self.gamma


@MANUAL_STRATEGIES.register("cosine")
class ManualCosineLR(ManualLR):
    """nanoGPT's way: lr is a pure function of the update count, written into each group before it is used."""

    def __init__(self, optimizer: torch.optim.Optimizer, T_max: int, eta_min: float = 0.0) -> None:
        super().__init__(optimizer)
        if T_max < 1:
            raise ValueError(f"T_max must be >= 1, got {T_max}")
        self.T_max = T_max
        self.eta_min = eta_min

    def step(self, update: int, epoch: int, metric: float | None) -> None:
        progress = min(update, self.T_max) / self.T_max
        for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = self.eta_min + (base - self.eta_min) * 0.5 * (1 + math.cos(math.pi * progress))


@MANUAL_STRATEGIES.register("plateau_halving")
class ManualPlateauLR(ManualLR):
    """Metric-driven: halve every group's lr when the monitored metric has not improved for `patience` steps."""

    needs_metric = True

    def __init__(self, optimizer: torch.optim.Optimizer, patience: int = 10, gamma: float = 0.5,
                 min_lr: float = 0.0) -> None:
        super().__init__(optimizer)
        self.patience = patience
        self.gamma = gamma
        self.min_lr = min_lr
        self.best = float("inf")
        self.bad_steps = 0

    def step(self, update: int, epoch: int, metric: float | None) -> None:
        assert metric is not None
        if metric < self.best:
            self.best, self.bad_steps = metric, 0
            return
        self.bad_steps += 1
        if self.bad_steps > self.patience:
            for group in self.optimizer.param_groups:
                group["lr"] = max(self.min_lr, group["lr"] * self.gamma)
            self.bad_steps = 0


@STRATEGIES.register("manual")
def build_manual(cfg: SchedulerConfig, optimizer: torch.optim.Optimizer, updates_per_epoch: int):
    return MANUAL_STRATEGIES.build(cfg.name, optimizer, **cfg.kwargs)
