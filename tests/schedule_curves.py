"""Driving an lr schedule as the trainer does, for the schedule tests: its lr per update, and across a resume."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from template.config import SchedulerConfig
from template.schedules import build_schedule

Metrics = Callable[[int], dict[str, float]] | None


def make_optimizer(lrs=(0.1,)):
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr, "name": f"g{i}"} for i, lr in enumerate(lrs)]
    return torch.optim.SGD(groups, lr=lrs[0])


def curve(cfg: SchedulerConfig, steps: int, lrs=(0.1,), updates_per_epoch: int = 1000, metrics: Metrics = None):
    """Per update 1..steps, the lr of each group that update uses, through `LRSchedule`."""
    optimizer = make_optimizer(lrs)
    schedule = build_schedule(cfg, optimizer, updates_per_epoch)
    out = []
    for update in range(1, steps + 1):
        out.append(list(schedule.lrs().values()))
        optimizer.step()
        schedule.after_update(update, metrics(update) if metrics else None)
    return out


def resumed_curve(cfg: SchedulerConfig, tmp_path: Path, lrs=(0.1, 0.3), metrics: Metrics = None,
                  stop: int = 13, steps: int = 30) -> list[list[float]]:
    """Stop after update `stop`, save as a checkpoint does (weights_only), restore into fresh objects, go on:
    the lrs of updates stop+1..steps, to compare with `curve(...)[stop:]`."""
    optimizer = make_optimizer(lrs)
    schedule = build_schedule(cfg, optimizer, 1000)
    for update in range(1, stop + 1):
        optimizer.step()
        schedule.after_update(update, metrics(update) if metrics else None)
    torch.save({"schedule": schedule.state_dict(), "optimizer": optimizer.state_dict()}, tmp_path / "s.pt")
    saved = torch.load(tmp_path / "s.pt", weights_only=True)
    optimizer2 = make_optimizer(lrs)
    schedule2 = build_schedule(cfg, optimizer2, 1000)
    optimizer2.load_state_dict(saved["optimizer"])
    schedule2.load_state_dict(saved["schedule"])
    resumed = []
    for update in range(stop + 1, steps + 1):
        resumed.append(list(schedule2.lrs().values()))
        optimizer2.step()
        schedule2.after_update(update, metrics(update) if metrics else None)
    return resumed
