"""Schedules that will run but perhaps not as meant: warned about in one line each, or refused.

Argument errors (a warmup as long as the run, a negative count) are refused when the schedule is built.
What needs the rest of the config, `train.max_steps` and the lrs the optimizer starts from, is checked
here, once, before training:

- a named schedule whose horizon (`num_training_steps`) ends before `train.max_steps`: the updates after
  it run at the schedule's floor (0 for `linear`) or on a cosine rising again; warned, since a run
  extended past its schedule on purpose is legitimate;
- lr exactly 0 on update 1, which changes nothing. Hugging Face's warmups start there, and a config ported
  from HF must train the same, so for a named schedule that asked for a warmup it is a warning; from any
  other strategy nobody asked for it (a warmup written `step / W` instead of `(step + 1) / W`) and it is
  refused, as is a run whose only update would be that one.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping
from typing import Any

from template.config import SchedulerConfig
from template.errors import ConfigError, describe
from template.schedules.named import NAMED_SCHEDULES, Formula, build_formula

NAMED_STRATEGIES = ("lambda", "subclass")
KEY_WARMUP = "scheduler.kwargs.num_warmup_steps"


def named_formula(cfg: SchedulerConfig) -> Formula | None:
    """The named schedule a scheduler config selects, or None when it selects another strategy."""
    if cfg.strategy not in NAMED_STRATEGIES or cfg.expression is not None or cfg.name not in NAMED_SCHEDULES:
        return None
    return build_formula(cfg.name, cfg.kwargs)


def check_schedule(
    cfg: SchedulerConfig, max_steps: int, first_lrs: Mapping[str, float] | None = None,
    updates_per_epoch: int | None = 1,
) -> list[str]:
    """Warning lines (without a 'warning: ' prefix) about `cfg` over a run of `max_steps` updates; raises a
    ConfigError where the schedule cannot be what was meant. `first_lrs`: the lr of each param group on
    update 1 (`LRSchedule.lrs()` before any update, not after a resume); None skips that check.
    `updates_per_epoch` converts the horizon of a `scheduler.interval: epoch` schedule; None skips that."""
    formula = named_formula(cfg)
    lines = list(formula.notes) if formula else []
    per_count = 1 if cfg.interval != "epoch" else updates_per_epoch
    if formula and formula.horizon is not None and per_count is not None:
        end = formula.horizon * per_count  # update `end + 1` is the first one past the schedule
        if end < max_steps:
            lines.append(f"{formula.horizon_key}: '{cfg.name}' ends after update {end} but train.max_steps is "
                         f"{max_steps}: for the last {max_steps - end} updates the lr {formula.past_horizon}")
    zero = [name for name, lr in (first_lrs or {}).items() if lr == 0]
    if not zero:
        return lines
    groups = ", ".join(f"'{name}'" for name in zero)
    if formula is None:
        key = "scheduler.name"
        if cfg.expression is not None:
            key = "scheduler.expression"
        elif cfg.kwargs:
            key = "scheduler.kwargs"
        raise ConfigError(key, f"update 1 would use lr 0 in param group {groups} and change nothing; start the "
                               "warmup above 0 (e.g. (step + 1) / W), or use a named schedule (linear, cosine, "
                               "...) whose Hugging Face warmup starts at 0 on purpose")
    if max_steps <= 1:
        raise ConfigError(KEY_WARMUP, f"the run's only update would use lr 0 ('{cfg.name}' warms up from 0): "
                                      "it would change nothing")
    lines.append(f"{KEY_WARMUP}: update 1 uses lr 0 in param group {groups}: '{cfg.name}' warms up from 0 as "
                 "Hugging Face's schedules do, so the first update changes nothing")
    return lines



def trial_steps(schedule: Any, steps: int) -> None:
    """Step the lr strategy through its first `steps` updates and put it back: an argument its constructor
    accepted but its first step cannot use (`step_size: null`) is a ConfigError before training, not a
    traceback at update 1."""
    saved = copy.deepcopy(schedule.state_dict())
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch: a scheduler stepped before any optimizer.step()
            for step in range(1, steps + 1):
                schedule.lrs()
                schedule.advance(step, {})
    except ConfigError:
        raise
    except Exception as exc:  # whatever a strategy raises, it was built from these arguments
        raise ConfigError("scheduler.kwargs", f"the lr strategy fails at its first updates: {describe(exc)}") from None
    finally:
        schedule.load_state_dict(saved)
