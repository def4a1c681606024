"""`scheduler.strategy: subclass`: `LRScheduler` subclasses written the right way, registered by name.

Each `get_lr` is a closed form of `last_epoch` (the scheduler's own count of steps) and `base_lrs`,
so there is no `_last_lr` to pre-seed (the tutorial's `MyLR` hack), no drift from repeated
multiplication, and a restored `last_epoch` alone resumes the curve exactly.

Hugging Face's named schedules (`linear`, `cosine`, ..., template/schedules/named.py) are registered
here as `NamedLR` subclasses, one per name, evaluating the same formula the lambda strategy does.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, cast

import torch
from torch.optim.lr_scheduler import LRScheduler

from template.config import SchedulerConfig
from template.registry import Registry
from template.schedules.base import STRATEGIES
from template.schedules.named import build_formula, on_named_schedule

SUBCLASS_SCHEDULERS: Registry[type[LRScheduler]] = Registry("subclass lr scheduler", "scheduler.name")


@SUBCLASS_SCHEDULERS.register("halving")
class HalvingLR(LRScheduler):
    """The tutorial's schedule: lr = base_lr * gamma ** (steps // every); 0.1 halved every 10 updates."""

    def __init__(self, optimizer: torch.optim.Optimizer, every: int = 10, gamma: float = 0.5, last_epoch: int = -1):
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.every = every
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:  # type: ignore[override]
        return [float(base) * self.gamma ** (self.last_epoch // self.every) for base in self.base_lrs]


@SUBCLASS_SCHEDULERS.register("warmup_cosine")
class WarmupCosineLR(LRScheduler):
    """Linear warmup from ~0 to base_lr over `warmup_steps`, then cosine decay to `min_lr_ratio * base_lr`."""

    def __init__(
        self, optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0,
        last_epoch: int = -1,
    ):
        if warmup_steps < 0 or total_steps <= warmup_steps:
            raise ValueError(f"need 0 <= warmup_steps < total_steps, got {warmup_steps}, {total_steps}")
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.min_lr_ratio = min_lr_ratio
        super().__init__(optimizer, last_epoch)

    def multiplier(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / (self.total_steps - self.warmup_steps))
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    def get_lr(self) -> list[float]:  # type: ignore[override]
        return [float(base) * self.multiplier(self.last_epoch) for base in self.base_lrs]


class NamedLR(LRScheduler):
    """A named schedule as an LRScheduler: lr = base_lr * formula(last_epoch, base_lr), per param group.

    `schedule_name` picks the formula; the config's kwargs are its (Hugging Face) arguments. The bound
    per-group formulas are closures rebuilt from the config, so they stay out of `state_dict()`, which
    remains plain data (`last_epoch` alone resumes the curve).
    """

    schedule_name: ClassVar[str] = ""

    def __init__(self, optimizer: torch.optim.Optimizer, last_epoch: int = -1, **kwargs: Any) -> None:
        self.multipliers = build_formula(self.schedule_name, kwargs).bind_groups(optimizer)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:  # type: ignore[override]
        return [float(base) * m(self.last_epoch) for m, base in zip(self.multipliers, self.base_lrs, strict=True)]

    def state_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "multipliers")}


def named_lr_class(name: str) -> type[NamedLR]:
    """The `NamedLR` subclass that evaluates the named schedule `name`."""
    return cast(type[NamedLR], type(f"NamedLR[{name}]", (NamedLR,), {
        "schedule_name": name, "__module__": __name__,
        "__doc__": f"Hugging Face's '{name}' schedule (template/schedules/named.py) as an LRScheduler.",
    }))


on_named_schedule(lambda name: SUBCLASS_SCHEDULERS.add(name, named_lr_class(name)))


@STRATEGIES.register("subclass")
def build_subclass(cfg: SchedulerConfig, optimizer: torch.optim.Optimizer, updates_per_epoch: int):
    return SUBCLASS_SCHEDULERS.build(cfg.name, optimizer, **cfg.kwargs)
