"""`scheduler.strategy: builtin`: any class of `torch.optim.lr_scheduler` by name, with its kwargs.

Compositions are written in YAML as nested {name, kwargs} entries, e.g. linear warmup then cosine:

    name: SequentialLR
    kwargs:
      milestones: [100]
      schedulers:
        - {name: LinearLR, kwargs: {start_factor: 0.01, total_iters: 100}}
        - {name: CosineAnnealingLR, kwargs: {T_max: 900}}
"""

from __future__ import annotations

from typing import Any

import torch
from torch.optim import lr_scheduler

from template.config import SchedulerConfig
from template.errors import ConfigError, suggest
from template.schedules.base import STRATEGIES

COMPOSITES = ("SequentialLR", "ChainedScheduler")
# Counts torch only divides by at the first step() (StepLR(step_size=0) constructs fine, then crashes
# mid-training): checked up front so a bad value fails at config time.
POSITIVE_COUNTS = ("step_size", "T_max", "T_0", "total_iters", "total_steps", "step_size_up", "epochs",
                   "steps_per_epoch", "T_mult")


def _torch_class(name: str, key: str) -> type:
    cls = getattr(lr_scheduler, name, None)
    if not (isinstance(cls, type) and issubclass(cls, lr_scheduler.LRScheduler)) or name.startswith("_"):
        names = [n for n in dir(lr_scheduler) if isinstance(getattr(lr_scheduler, n), type)
                 and issubclass(getattr(lr_scheduler, n), lr_scheduler.LRScheduler) and not n.startswith("_")]
        raise ConfigError(key, f"unknown torch scheduler '{name}'{suggest(name, names)}")
    return cls


def build_torch_scheduler(
    name: str, kwargs: dict[str, Any], optimizer: torch.optim.Optimizer, key: str = "scheduler.name"
) -> lr_scheduler.LRScheduler:
    cls = _torch_class(name, key)
    kwargs = dict(kwargs)
    section = key.rsplit(".", 1)[0]
    for count in POSITIVE_COUNTS:
        value = kwargs.get(count)
        if isinstance(value, (int, float)) and value <= 0:
            raise ConfigError(f"{section}.kwargs.{count}", f"must be > 0 for {name}, got {value}")
    if name in COMPOSITES:
        children = kwargs.get("schedulers")
        if not isinstance(children, list) or not children:
            raise ConfigError(f"{section}.kwargs.schedulers", "must be a list of {name, kwargs}")
        built = []
        for i, child in enumerate(children):
            child_key = f"scheduler.kwargs.schedulers.{i}"
            if not isinstance(child, dict) or "name" not in child:
                raise ConfigError(child_key, "must be a mapping with 'name' (and optional 'kwargs')")
            child_kwargs = child.get("kwargs") or {}
            built.append(build_torch_scheduler(child["name"], child_kwargs, optimizer, f"{child_key}.name"))
        kwargs["schedulers"] = built
        if name == "ChainedScheduler":
            kwargs.setdefault("optimizer", optimizer)
            return cls(**kwargs)
    try:
        return cls(optimizer, **kwargs)
    except (TypeError, ValueError, KeyError, ZeroDivisionError) as exc:
        raise ConfigError(f"{section}.kwargs", f"{name}: {exc}") from None


@STRATEGIES.register("builtin")
def build_builtin(cfg: SchedulerConfig, optimizer: torch.optim.Optimizer, updates_per_epoch: int):
    return build_torch_scheduler(cfg.name, cfg.kwargs, optimizer)
