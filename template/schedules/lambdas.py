"""`scheduler.strategy: lambda`: `LambdaLR` with a named function or a safe expression from the config.

`scheduler.name` picks a registered factory (extend `LAMBDAS` in Python); or `scheduler.expression`
gives a formula over `step`, `epoch` and `scheduler.constants`, parsed through a whitelist (never
`eval`). The multiplier is a closure, not an object, so `LambdaLR.state_dict()` stays plain data
that loads with `weights_only=True`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.optim.lr_scheduler import LambdaLR

from template.config import ConfigError, SchedulerConfig
from template.registry import Registry
from template.schedules.base import STRATEGIES
from template.schedules.expression import ExpressionError, compile_expression

Multiplier = Callable[[int], float]
LAMBDAS: Registry[Callable[..., Multiplier]] = Registry("lr lambda", "scheduler.name")


@LAMBDAS.register("halving")
def halving(every: int = 10, gamma: float = 0.5) -> Multiplier:
    """The tutorial's `lambda e: 0.5 ** (e // 10)`."""
    return lambda count: gamma ** (count // every)


@LAMBDAS.register("constant")
def constant() -> Multiplier:
    return lambda count: 1.0


def expression_multiplier(
    source: str, constants: dict[str, float], interval: str, updates_per_epoch: int
) -> Multiplier:
    """Compile `source` now (a typo fails at config time) and map the scheduler's count to step/epoch."""
    try:
        expr = compile_expression(source, ("step", "epoch"), constants)
        per_epoch = interval == "epoch"
        expr(step=0, epoch=0)
    except ExpressionError as exc:
        raise ConfigError("scheduler.expression", str(exc)) from None

    def multiplier(count: int) -> float:
        if per_epoch:
            return expr(step=count * updates_per_epoch, epoch=count)
        return expr(step=count, epoch=count // updates_per_epoch)

    return multiplier


@STRATEGIES.register("lambda")
def build_lambda(cfg: SchedulerConfig, optimizer: torch.optim.Optimizer, updates_per_epoch: int) -> LambdaLR:
    if cfg.expression is not None:
        fn = expression_multiplier(cfg.expression, dict(cfg.constants), cfg.interval, updates_per_epoch)
    else:
        fn = LAMBDAS.build(cfg.name, **cfg.kwargs)
    return LambdaLR(optimizer, lr_lambda=fn)
