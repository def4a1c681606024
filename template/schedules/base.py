"""The one lr-strategy contract the trainer drives, whatever the strategy behind it.

Why not `accelerator.prepare(scheduler)`: Accelerate's wrapper advances a prepared scheduler once per
process on every `step()` (with N processes and the default `split_batches=False`, StepLR(10) reaches
0.025 after 10 updates on 2 ranks instead of 0.05), and a manual param_group rule is not wrapped at all,
so the strategies would silently disagree. Here nothing is prepared: every rank calls
`LRSchedule.after_update` exactly once per applied optimizer update (or once per epoch), so the lr is
a function of the global update count, identical on every rank and for any world size.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

import torch

from template.config import SchedulerConfig
from template.errors import ConfigError, describe
from template.registry import Registry


class Strategy(Protocol):
    """What every strategy object offers; torch's LRSchedulers already do."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: dict[str, Any]) -> None: ...


# A strategy builder turns the scheduler config into a strategy object for this optimizer.
# `updates_per_epoch` lets step-based formulas know epochs and epoch-based ones know steps.
StrategyBuilder = Callable[[SchedulerConfig, torch.optim.Optimizer, int], Strategy]
STRATEGIES: Registry[StrategyBuilder] = Registry("lr strategy", "scheduler.strategy")


def needs_metric(strategy: object) -> bool:
    """ReduceLROnPlateau and manual strategies that declare `needs_metric = True` are fed a metric."""
    return isinstance(strategy, torch.optim.lr_scheduler.ReduceLROnPlateau) or bool(
        getattr(strategy, "needs_metric", False)
    )


class LRSchedule:
    """Drives one strategy: `lrs()` before an update, `after_update()` after it, state for checkpoints.

    `interval='epoch'` advances the strategy only when an update closes an epoch. A metric-driven
    strategy advances only on updates where its monitored metric (already reduced over ranks by the
    trainer, so every rank sees the same number) is present.
    """

    def __init__(
        self, strategy: Strategy, optimizer: torch.optim.Optimizer, interval: str = "step",
        updates_per_epoch: int = 1, monitor: str = "train/loss",
    ) -> None:
        self.strategy = strategy
        self.optimizer = optimizer
        self.interval = interval
        self.updates_per_epoch = max(1, updates_per_epoch)
        self.monitor = monitor
        self.needs_metric = needs_metric(strategy)
        self.group_names = [str(g.get("name", i)) for i, g in enumerate(optimizer.param_groups)]
        torch_scheduler = isinstance(strategy, torch.optim.lr_scheduler.LRScheduler)
        # the common case, decided once rather than on every update: a torch scheduler fed nothing
        self._plain_torch = torch_scheduler and not self.needs_metric
        if not torch_scheduler and not self.needs_metric:
            strategy.step(update=0, epoch=0, metric=None)  # type: ignore[attr-defined]  # lr of update 1

    def lrs(self) -> dict[str, float]:
        """The lr of each param group, by name: what the next update will use."""
        return {name: float(g["lr"]) for name, g in zip(self.group_names, self.optimizer.param_groups, strict=True)}

    def after_update(self, update: int, metrics: Mapping[str, float] | None = None) -> None:
        """Advance after applied update number `update` (1-based, global): what the training loop calls."""
        self.advance(update, metrics)

    def advance(self, update: int, metrics: Mapping[str, float] | None = None) -> None:
        """The step itself; preflight's trial of the strategy calls it directly, so whatever observes
        `after_update` (a test's probe, a fork's wrapper) sees the training's updates only."""
        if self.interval == "epoch" and update % self.updates_per_epoch != 0:
            return
        if self._plain_torch:
            self.strategy.step()  # type: ignore[attr-defined]
            return
        epoch = update // self.updates_per_epoch
        metric = None
        if self.needs_metric:
            if metrics is None or self.monitor not in metrics:
                return
            metric = float(metrics[self.monitor])
        strategy: Any = self.strategy
        if isinstance(strategy, torch.optim.lr_scheduler.LRScheduler):
            if isinstance(strategy, torch.optim.lr_scheduler.ReduceLROnPlateau):
                strategy.step(metric)  # type: ignore[arg-type]  # needs_metric guarantees a float
            else:
                strategy.step()
        else:
            strategy.step(update=update, epoch=epoch, metric=metric)

    def state_dict(self) -> dict[str, Any]:
        return {"strategy": self.strategy.state_dict(), "lrs": [g["lr"] for g in self.optimizer.param_groups]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.strategy.load_state_dict(state["strategy"])
        for group, lr in zip(self.optimizer.param_groups, state["lrs"], strict=True):
            group["lr"] = lr


def build_schedule(cfg: SchedulerConfig, optimizer: torch.optim.Optimizer, updates_per_epoch: int) -> LRSchedule:
    try:
        strategy = STRATEGIES.get(cfg.strategy)(cfg, optimizer, updates_per_epoch)
    except ConfigError:
        raise
    except Exception as exc:  # the strategy rejected the arguments the config gave it
        raise ConfigError("scheduler.kwargs", f"{cfg.strategy} '{cfg.name}': {describe(exc)}") from None
    return LRSchedule(strategy, optimizer, cfg.interval, updates_per_epoch, cfg.monitor)
