"""`early_stopping`: end the run when a monitored metric stops improving.

After each evaluation (or each logged update, for a `train/...` metric) the value is compared with the
best so far: an improvement is a change beyond `min_delta` in the direction of `mode` (min or max);
`patience` evaluations without one end the run. The metric is the same on every rank (the trainer reduces
it over ranks before anyone sees it), so every rank stops at the same update without a collective. The run
then ends like a normal one (final checkpoint, model.safetensors, summary.json with `stopped_early`: the
reason, the best value and its update).
"""

from __future__ import annotations

import math
from typing import Any

from template.hooks.base import HOOKS, Hook, HookContext


@HOOKS.register("early_stopping")
class EarlyStopping(Hook):
    def __init__(self, monitor: str = "eval/loss", patience: int = 3, min_delta: float = 0.0,
                 mode: str = "min") -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got '{mode}'")
        if patience < 1 or min_delta < 0:
            raise ValueError(f"need patience >= 1 and min_delta >= 0, got {patience}, {min_delta}")
        self.monitor, self.patience, self.min_delta, self.mode = monitor, patience, min_delta, mode
        self.best: float | None = None
        self.best_step = 0
        self.bad = 0  # evaluations since the last improvement

    def _see(self, step: int, value: float) -> None:
        better = self.best is None or (value < self.best - self.min_delta if self.mode == "min"
                                       else value > self.best + self.min_delta)
        if better and math.isfinite(value):
            self.best, self.best_step, self.bad = value, step, 0
        else:
            self.bad += 1

    def after_evaluate(self, ctx: HookContext, metrics: dict[str, float]) -> None:
        if self.monitor in metrics:
            self._see(ctx.step, metrics[self.monitor])

    def on_log(self, ctx: HookContext, row: dict[str, Any]) -> None:
        if self.monitor == "train/loss":  # the training loss is seen where it is read: on logged updates
            self._see(ctx.step, row["loss"])

    def stop_reason(self, ctx: HookContext) -> str | None:
        if self.bad < self.patience:
            return None
        return (f"early_stopping: {self.monitor} did not improve by more than {self.min_delta} for {self.patience} "
                f"evaluations (best {self.best} at update {self.best_step})")

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_step": self.best_step, "bad": self.bad}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_step, self.bad = state["best"], int(state["best_step"]), int(state["bad"])

    def on_end(self, ctx: HookContext, summary: dict[str, Any]) -> None:
        summary.setdefault("early_stopping", {"monitor": self.monitor, "best": self.best,
                                              "best_step": self.best_step})
