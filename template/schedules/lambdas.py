"""`scheduler.strategy: lambda`: `LambdaLR` with a named function or a safe expression from the config.

`scheduler.name` picks a registered factory (extend `LAMBDAS` in Python); or `scheduler.expression`
gives a formula over `step`, `epoch` and `scheduler.constants`, parsed through a whitelist (never
`eval`). The multiplier is a closure, not an object, so `LambdaLR.state_dict()` stays plain data
that loads with `weights_only=True`.

Hugging Face's named schedules (`linear`, `cosine`, ..., template/schedules/named.py) are registered
here too: their factory returns a `Formula`, bound to each param group's own base lr (LambdaLR takes
one lambda per group), since `polynomial`'s `lr_end` is an absolute lr.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.optim.lr_scheduler import LambdaLR

from template.config import SchedulerConfig
from template.errors import ConfigError
from template.registry import Registry
from template.schedules.base import STRATEGIES
from template.schedules.expression import ExpressionError, compile_expression
from template.schedules.named import Formula, build_formula, on_named_schedule

Multiplier = Callable[[int], float]
# a factory returns one multiplier for every group, or a Formula that is bound per group
LAMBDAS: Registry[Callable[..., Multiplier | Formula]] = Registry("lr lambda", "scheduler.name")


@LAMBDAS.register("halving")
def halving(every: int = 10, gamma: float = 0.5) -> Multiplier:
    """The tutorial's `lambda e: 0.5 ** (e // 10)`."""
    return lambda count: gamma ** (count // every)


def _expose_named(name: str) -> None:
    """Every named schedule is a lambda too (`constant` among them: a multiplier of 1, as before)."""
    def factory(**kwargs: object) -> Formula:
        return build_formula(name, kwargs)

    factory.__doc__ = f"Hugging Face's '{name}' schedule (template/schedules/named.py)."
    LAMBDAS.add(name, factory)


on_named_schedule(_expose_named)


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
        return LambdaLR(optimizer, lr_lambda=fn)
    made = LAMBDAS.build(cfg.name, **cfg.kwargs)
    if isinstance(made, Formula):
        return LambdaLR(optimizer, lr_lambda=made.bind_groups(optimizer))
    return LambdaLR(optimizer, lr_lambda=made)
