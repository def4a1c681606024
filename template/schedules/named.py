"""Hugging Face's named lr schedules, each written once as a function of the scheduler's step count.

`scheduler.name` = `linear`, `cosine`, `cosine_with_restarts`, `polynomial`, `constant`,
`constant_with_warmup`, `inverse_sqrt`, `warmup_stable_decay` (and `cosine_with_min_lr`,
`cosine_warmup_with_min_lr`), under `scheduler.strategy: lambda` or `subclass`, with the arguments named
as `transformers.get_scheduler` names them (`num_warmup_steps`, `num_training_steps`, `num_cycles`,
`power`, `lr_end`, ...). Why the formulas are reproduced here, arithmetic included, rather than imported:
the template does not depend on transformers, and a config ported from an HF `lr_scheduler_type` must
train the same, update by update, down to the lr of 0 on update 1 that HF's warmups start from.

A builder checks its arguments up front (a bad value is a ConfigError naming the key at config time, not
a ZeroDivisionError at update 900) and returns a `Formula`: multiplier(count, base_lr), where `count` is
the number of scheduler steps taken (update s uses count s - 1, like LambdaLR's `last_epoch`). The base
lr is an argument because `polynomial`'s `lr_end` and `cosine_with_min_lr`'s `min_lr` are absolute lrs:
each param group's multiplier comes from its own base lr. `lambdas.py` wraps a formula in a LambdaLR and
`subclass.py` in an LRScheduler subclass: one formula, two wrappers. A forker's own formula, registered
with `@named_schedule("name")`, becomes usable from both strategies the same way.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from template.errors import ConfigError, suggest
from template.registry import Registry

GroupMultiplier = Callable[[int, float], float]  # (scheduler steps taken, the group's base lr) -> lr factor
Multiplier = Callable[[int], float]
KEY = "scheduler.kwargs"
SHAPES = ("linear", "cosine", "1-sqrt")  # warmup_stable_decay's warmup_type / decay_type


@dataclass(frozen=True)
class Formula:
    """A named schedule with its arguments checked and bound; what both strategy wrappers evaluate."""

    name: str
    multiplier: GroupMultiplier
    horizon: int | None = None  # the count where the schedule ends (num_training_steps); None: it never ends
    horizon_key: str = f"{KEY}.num_training_steps"  # the argument that set the horizon, for the warning
    past_horizon: str = ""  # what the lr does after the horizon, said in the warning
    notes: tuple[str, ...] = ()  # arguments HF accepts but ignores or overrides: warned about, not refused
    lr_end: float | None = None  # an absolute end lr every param group's base lr must exceed (polynomial)

    def bind(self, base_lr: float, group: str) -> Multiplier:
        """The multiplier of one param group: a closure, so LambdaLR's state_dict stays plain data."""
        if self.lr_end is not None and not base_lr > self.lr_end:
            raise ConfigError(f"{KEY}.lr_end", f"{self.lr_end} must be below the base lr of param group "
                                               f"'{group}' ({base_lr}): '{self.name}' decays from one to the other")
        multiplier = self.multiplier
        return lambda count: multiplier(count, base_lr)

    def bind_groups(self, optimizer: torch.optim.Optimizer) -> list[Multiplier]:
        """One multiplier per param group, from the base lr a torch scheduler will record as `initial_lr`."""
        return [self.bind(float(g.get("initial_lr", g["lr"])), str(g.get("name", i)))
                for i, g in enumerate(optimizer.param_groups)]


NAMED_SCHEDULES: Registry[Callable[..., Formula]] = Registry("named lr schedule", "scheduler.name")
_wrappers: list[Callable[[str], None]] = []


def named_schedule(name: str) -> Callable[[Callable[..., Formula]], Callable[..., Formula]]:
    """Register a formula builder (keyword-only arguments, checked) and expose it through every wrapper."""
    def add(builder: Callable[..., Formula]) -> Callable[..., Formula]:
        NAMED_SCHEDULES.add(name, builder)
        for wrap in _wrappers:
            wrap(name)
        return builder

    return add


def on_named_schedule(wrap: Callable[[str], None]) -> None:
    """A strategy module's hook: `wrap(name)` for every named schedule, those registered so far and later ones."""
    _wrappers.append(wrap)
    for name in NAMED_SCHEDULES:
        wrap(name)


def build_formula(name: str, kwargs: Mapping[str, Any]) -> Formula:
    """The named schedule `name` with the config's kwargs; a misspelt or missing argument names its key."""
    builder = NAMED_SCHEDULES.get(name)
    params = inspect.signature(builder).parameters
    for key in kwargs:
        if key not in params:
            raise ConfigError(f"{KEY}.{key}", f"not an argument of '{name}'{suggest(key, list(params))}; "
                                              f"it takes: {', '.join(params)}")
    for param in params.values():
        if param.default is inspect.Parameter.empty and param.name not in kwargs:
            raise ConfigError(f"{KEY}.{param.name}", f"required by '{name}'")
    return builder(**kwargs)


# -- argument checks: every bad value fails before the first update, naming its key ---------------------


def _count(key: str, value: Any, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{KEY}.{key}", f"must be an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{KEY}.{key}", f"must be >= {minimum}, got {value}")
    return value


def _number(key: str, value: Any, low: float | None = None, high: float | None = None, above: bool = False) -> float:
    """A real number in [low, high] (`above`: strictly greater than low)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{KEY}.{key}", f"must be a finite number, got {value!r}")
    if low is not None and (value <= low if above else value < low):
        raise ConfigError(f"{KEY}.{key}", f"must be {'>' if above else '>='} {low}, got {value}")
    if high is not None and value > high:
        raise ConfigError(f"{KEY}.{key}", f"must be <= {high}, got {value}")
    return value


def _warmup_and_end(num_warmup_steps: Any, num_training_steps: Any) -> tuple[int, int | None]:
    """A warmup as long as the whole run never reaches the lr it warms up to: refused wherever both are given."""
    w = _count("num_warmup_steps", num_warmup_steps)
    if num_training_steps is None:
        return w, None
    t = _count("num_training_steps", num_training_steps, minimum=1)
    if w >= t:
        raise ConfigError(f"{KEY}.num_warmup_steps", f"{w} must be below num_training_steps ({t}): "
                                                     "the warmup would never reach the base lr")
    return w, t


def _warmup(count: int, num_warmup_steps: int) -> float:
    """HF's linear warmup: 0 at count 0 (update 1), (W - 1) / W at the last warmup update."""
    return float(count) / float(max(1, num_warmup_steps))


# -- the formulas ----------------------------------------------------------------------------------------


@named_schedule("constant")
def constant(*, num_warmup_steps: int = 0, num_training_steps: int | None = None) -> Formula:
    """The base lr throughout (HF `constant`). Like `transformers.get_scheduler('constant', ...)` it takes the
    warmup and horizon a ported config passes to every name, and ignores them: warned, not silently."""
    _warmup_and_end(num_warmup_steps, num_training_steps)
    notes = (f"{KEY}.num_warmup_steps: 'constant' ignores it, as transformers does; "
             "use 'constant_with_warmup' for a warmup",) if num_warmup_steps else ()
    return Formula("constant", lambda count, base_lr: 1.0, notes=notes)


@named_schedule("constant_with_warmup")
def constant_with_warmup(*, num_warmup_steps: int = 0, num_training_steps: int | None = None) -> Formula:
    """Linear warmup from 0, then the base lr (HF `constant_with_warmup`; `num_training_steps` only checked)."""
    w, _ = _warmup_and_end(num_warmup_steps, num_training_steps)

    def multiplier(count: int, base_lr: float) -> float:
        return float(count) / float(max(1.0, w)) if count < w else 1.0

    return Formula("constant_with_warmup", multiplier)


@named_schedule("linear")
def linear(*, num_warmup_steps: int = 0, num_training_steps: int) -> Formula:
    """Linear warmup from 0, then linear decay to 0 at `num_training_steps` (HF `linear`, its default)."""
    w, t = _warmup_and_end(num_warmup_steps, num_training_steps)
    assert t is not None

    def multiplier(count: int, base_lr: float) -> float:
        if count < w:
            return _warmup(count, w)
        return max(0.0, float(t - count) / float(max(1, t - w)))

    return Formula("linear", multiplier, horizon=t, past_horizon="stays at 0")


def _cosine(
    name: str, num_warmup_steps: Any, num_training_steps: Any, num_cycles: Any,
    min_lr_rate: float | None = None, min_lr: float | None = None,
) -> Formula:
    """HF's half-cosine after a warmup, floored at `min_lr_rate` x base lr (or the absolute `min_lr`)."""
    w, t = _warmup_and_end(num_warmup_steps, num_training_steps)
    assert t is not None
    cycles = _number("num_cycles", num_cycles, 0.0, above=True)

    def multiplier(count: int, base_lr: float) -> float:
        if count < w:
            return _warmup(count, w)
        progress = float(count - w) / float(max(1, t - w))
        factor = 0.5 * (1.0 + math.cos(math.pi * float(cycles) * 2.0 * progress))
        rate = min_lr / base_lr if min_lr is not None else min_lr_rate or 0.0
        return max(0.0, factor * (1 - rate) + rate)

    return Formula(name, multiplier, horizon=t, past_horizon="rises again (the cosine goes on past its end)")


@named_schedule("cosine")
def cosine(
    *, num_warmup_steps: int = 0, num_training_steps: int, num_cycles: float = 0.5, min_lr_ratio: float = 0.0,
) -> Formula:
    """Linear warmup from 0, then a half-cosine to `min_lr_ratio` x base lr (HF `cosine` at the default 0;
    `min_lr_ratio` > 0 equals HF `cosine_with_min_lr` with `min_lr_rate`)."""
    return _cosine("cosine", num_warmup_steps, num_training_steps, num_cycles,
                   min_lr_rate=_number("min_lr_ratio", min_lr_ratio, 0.0, 1.0))


@named_schedule("cosine_with_min_lr")
def cosine_with_min_lr(
    *, num_warmup_steps: int = 0, num_training_steps: int, num_cycles: float = 0.5, min_lr: float | None = None,
    min_lr_rate: float | None = None,
) -> Formula:
    """HF `cosine_with_min_lr`: the cosine floored at `min_lr_rate` x base lr or at the absolute `min_lr`
    (HF divides `min_lr` by the optimizer's default lr; here by each group's own base lr)."""
    if (min_lr is None) == (min_lr_rate is None):
        raise ConfigError(KEY, "'cosine_with_min_lr' takes exactly one of min_lr, min_lr_rate")
    if min_lr is not None:
        _number("min_lr", min_lr, 0.0)
    rate = None if min_lr_rate is None else _number("min_lr_rate", min_lr_rate, 0.0, 1.0)
    return _cosine("cosine_with_min_lr", num_warmup_steps, num_training_steps, num_cycles, rate, min_lr)


@named_schedule("cosine_warmup_with_min_lr")
def cosine_warmup_with_min_lr(
    *, num_warmup_steps: int = 0, num_training_steps: int, num_cycles: float = 0.5, min_lr: float | None = None,
    min_lr_rate: float | None = None, warmup_lr_rate: float | None = None,
) -> Formula:
    """HF `cosine_warmup_with_min_lr`: the warmup starts at 1 / W (or `warmup_lr_rate`) instead of 0 and the
    cosine is one step ahead of `cosine_with_min_lr`'s."""
    if (min_lr is None) == (min_lr_rate is None):
        raise ConfigError(KEY, "'cosine_warmup_with_min_lr' takes exactly one of min_lr, min_lr_rate")
    if min_lr is not None:
        _number("min_lr", min_lr, 0.0)
    rate = None if min_lr_rate is None else _number("min_lr_rate", min_lr_rate, 0.0, 1.0)
    start = None if warmup_lr_rate is None else _number("warmup_lr_rate", warmup_lr_rate, 0.0, 1.0)
    w, t = _warmup_and_end(num_warmup_steps, num_training_steps)
    assert t is not None
    cycles = _number("num_cycles", num_cycles, 0.0, above=True)

    def multiplier(count: int, base_lr: float) -> float:
        step, warmup, total = float(count), float(w), float(t)
        if step < warmup:
            if start is None:
                return (step + 1.0) / max(1.0, warmup)
            return start + (1.0 - start) * step / max(1, warmup - 1)
        progress = (step - warmup + 1.0) / max(1.0, total - warmup)
        factor = 0.5 * (1.0 + math.cos(math.pi * cycles * 2.0 * progress))
        floor = min_lr / base_lr if min_lr is not None else rate or 0.0
        return max(0.0, factor * (1 - floor) + floor)

    return Formula("cosine_warmup_with_min_lr", multiplier, horizon=t,
                   past_horizon="rises again (the cosine goes on past its end)")


@named_schedule("cosine_with_restarts")
def cosine_with_restarts(*, num_warmup_steps: int = 0, num_training_steps: int, num_cycles: int = 1) -> Formula:
    """Linear warmup from 0, then `num_cycles` half-cosines from the base lr to 0, each restarting at the
    base lr (HF `cosine_with_restarts`, hard restarts)."""
    w, t = _warmup_and_end(num_warmup_steps, num_training_steps)
    assert t is not None
    cycles = _number("num_cycles", num_cycles, 0.0, above=True)

    def multiplier(count: int, base_lr: float) -> float:
        if count < w:
            return _warmup(count, w)
        progress = float(count - w) / float(max(1, t - w))
        if progress >= 1.0:
            return 0.0
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * ((float(cycles) * progress) % 1.0))))

    return Formula("cosine_with_restarts", multiplier, horizon=t, past_horizon="stays at 0")


@named_schedule("polynomial")
def polynomial(
    *, num_warmup_steps: int = 0, num_training_steps: int, lr_end: float = 1e-7, power: float = 1.0,
) -> Formula:
    """Linear warmup from 0, then (base - lr_end) x remaining ** power + lr_end, down to the ABSOLUTE lr
    `lr_end` (HF `polynomial`, BERT's decay). HF computes it from the optimizer's default lr; here each
    param group decays from its own base lr to `lr_end` (the same thing for a group at the default lr)."""
    w, t = _warmup_and_end(num_warmup_steps, num_training_steps)
    assert t is not None
    end = _number("lr_end", lr_end, 0.0)
    exponent = _number("power", power, 0.0, above=True)

    def multiplier(count: int, base_lr: float) -> float:
        if count < w:
            return _warmup(count, w)
        if count > t:
            return end / base_lr
        remaining = 1 - (count - w) / (t - w)
        return ((base_lr - end) * remaining**exponent + end) / base_lr

    return Formula("polynomial", multiplier, horizon=t, past_horizon=f"stays at lr_end ({end})", lr_end=end)


@named_schedule("inverse_sqrt")
def inverse_sqrt(
    *, num_warmup_steps: int = 0, timescale: int | None = None, num_training_steps: int | None = None,
) -> Formula:
    """Linear warmup from 0, then 1 / sqrt((count + timescale - W) / timescale) (HF `inverse_sqrt`; the
    timescale defaults to the warmup, or 10_000 without one; `num_training_steps` is only checked)."""
    w, _ = _warmup_and_end(num_warmup_steps, num_training_steps)
    scale = (w or 10_000) if timescale is None else _count("timescale", timescale, minimum=1)
    shift = scale - w

    def multiplier(count: int, base_lr: float) -> float:
        if count < w:
            return _warmup(count, w)
        return 1.0 / math.sqrt((count + shift) / scale)

    return Formula("inverse_sqrt", multiplier)


def _shape(kind: str, progress: float, num_cycles: float, rising: bool) -> float:
    """warmup_stable_decay's warmup (rising, 0 -> 1) and decay (1 -> 0) curves over progress in [0, 1)."""
    if kind == "linear":
        return progress if rising else 1.0 - progress
    if kind == "cosine" and rising:
        return 0.5 * (1.0 - math.cos(math.pi * progress))
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * float(num_cycles) * 2.0 * progress))
    return 1.0 - math.sqrt(1.0 - progress) if rising else 1.0 - math.sqrt(progress)


@named_schedule("warmup_stable_decay")
def warmup_stable_decay(
    *, num_warmup_steps: int = 0, num_decay_steps: int | None = None, num_training_steps: int | None = None,
    num_stable_steps: int | None = None, decay_ratio: float | None = None, warmup_type: str = "linear",
    decay_type: str = "cosine", min_lr_ratio: float = 0.0, num_cycles: float = 0.5,
) -> Formula:
    """WSD (HF `warmup_stable_decay`): warm up from `min_lr_ratio` x base lr, hold the base lr, then decay over
    the last `num_decay_steps` (or the fraction `decay_ratio` of `num_training_steps`, an addition to HF's
    arguments) with a linear, cosine or 1-sqrt curve, and stay at `min_lr_ratio` x base lr."""
    w, t = _warmup_and_end(num_warmup_steps, num_training_steps)
    notes: list[str] = []
    if (num_decay_steps is None) == (decay_ratio is None):
        raise ConfigError(KEY, "'warmup_stable_decay' takes exactly one of num_decay_steps, decay_ratio")
    if decay_ratio is not None:
        if t is None:
            raise ConfigError(f"{KEY}.decay_ratio", "needs num_training_steps (a fraction of it)")
        d = round(_number("decay_ratio", decay_ratio, 0.0, 1.0, above=True) * t)  # rounded, not ceil'd: 0.7 x 100
        if d == 0:
            raise ConfigError(f"{KEY}.decay_ratio", f"{decay_ratio} x num_training_steps ({t}) rounds to no decay step")
    else:
        d = _count("num_decay_steps", num_decay_steps)
    if num_stable_steps is not None:
        s = _count("num_stable_steps", num_stable_steps)
        if t is not None and w + s + d != t:
            notes.append(f"{KEY}.num_stable_steps: used instead of num_training_steps (as transformers does): "
                         f"the schedule ends at {w + s + d}, not {t}")
    elif t is None:
        raise ConfigError(KEY, "'warmup_stable_decay' needs num_training_steps or num_stable_steps")
    else:
        s = t - w - d
        if s < 0:
            raise ConfigError(f"{KEY}.num_decay_steps", f"num_warmup_steps ({w}) + decay steps ({d}) exceed "
                                                        f"num_training_steps ({t})")
    for key, kind in (("warmup_type", warmup_type), ("decay_type", decay_type)):
        if kind not in SHAPES:
            raise ConfigError(f"{KEY}.{key}", f"unknown '{kind}'{suggest(str(kind), SHAPES)}; "
                                              f"expected one of {', '.join(SHAPES)}")
    floor = _number("min_lr_ratio", min_lr_ratio, 0.0, 1.0)
    cycles = _number("num_cycles", num_cycles, 0.0, above=True)

    def multiplier(count: int, base_lr: float) -> float:
        if count < w:
            progress = float(count) / float(max(1, w))
            return max(0.0, _shape(warmup_type, progress, cycles, rising=True) * (1.0 - floor) + floor)
        if count < w + s:
            return 1.0
        if count < w + s + d:
            progress = float(count - w - s) / float(max(1, d))
            return max(0.0, _shape(decay_type, progress, cycles, rising=False) * (1.0 - floor) + floor)
        return floor

    horizon_key = f"{KEY}.num_stable_steps" if num_stable_steps is not None else f"{KEY}.num_training_steps"
    return Formula("warmup_stable_decay", multiplier, horizon=w + s + d, horizon_key=horizon_key,
                   past_horizon=f"stays at min_lr_ratio ({floor}) x the base lr", notes=tuple(notes))
