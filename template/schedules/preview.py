"""The lr curve a config will produce, computed without training.

The schedule is simulated, not re-derived: `build_parts` builds the real optimizer and lr strategy from
a deep copy of the config, and the strategy is driven exactly as the trainer drives it (`lrs()` before
update s is the lr update s uses, then `after_update(s)`), so any strategy a forker registers previews
correctly. Nothing the caller owns is touched: the config is copied, the parts are built on the `meta`
device when the components allow it (no memory for the weights or the data), and the global RNG states
that `build_parts` reseeds are put back, so previewing at the start of a training changes nothing.

A metric-driven strategy (ReduceLROnPlateau, plateau rules) sees no metric here: its curve is the lr it
starts from, without the drops the metric would cause.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any

import torch

from template.config import Config
from template.runtime.rng import preserved_rng

Curve = tuple[list[int], list[float]]


def _build(cfg: Config) -> Any:
    from template.parts import build_parts

    try:
        with torch.device("meta"):
            return build_parts(copy.deepcopy(cfg))
    except Exception:  # a component that needs real tensors to be built: build it on the CPU
        return build_parts(copy.deepcopy(cfg))


def preview_lr_curves(cfg: Config, max_steps: int | None = None) -> dict[str, Curve]:
    """{param group name: (updates 1..N, lr used by each update)} for N = train.max_steps."""
    steps = cfg.train.max_steps if max_steps is None else max_steps
    with preserved_rng(), warnings.catch_warnings():
        # torch warns when a scheduler steps before any optimizer.step(): expected in a simulation
        warnings.simplefilter("ignore")
        schedule = _build(cfg).schedule
        names = list(schedule.lrs())
        curves: dict[str, Curve] = {name: ([], []) for name in names}
        for step in range(1, steps + 1):
            for name, lr in schedule.lrs().items():
                curves[name][0].append(step)
                curves[name][1].append(lr)
            schedule.after_update(step, {})
    return curves


def preview_lr_curve(cfg: Config, max_steps: int | None = None) -> Curve:
    """(updates, lrs) of the first param group: the `lr` column metrics.jsonl will show."""
    return next(iter(preview_lr_curves(cfg, max_steps).values()))


def plot_lr_preview(cfg: Config, path: str | Path) -> Path:
    """Draw every param group's previewed lr curve into one PNG."""
    from template.reporting.plotting import plot_lr_curves

    curves = {f"lr/{name}": curve for name, curve in preview_lr_curves(cfg).items()}
    s = cfg.scheduler
    return plot_lr_curves(curves, path, title=f"lr preview: {s.strategy} {s.expression or s.name}")
