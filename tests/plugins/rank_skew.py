"""A deliberately wrong manual lr strategy: the tutorial's halving, but rank 1 triples its lr once.

`scheduler.strategy: manual`, `scheduler.name: rank_skewed_halving`. At update `skew_at`, rank 1 (read
from torch.distributed, the way a forker's strategy might read a rank-local value) multiplies its
lr by `skew`; every other rank keeps the tutorial's schedule. The lr sync check must catch it.
"""

from __future__ import annotations

import torch

from template.schedules.manual import MANUAL_STRATEGIES, ManualHalvingLR


@MANUAL_STRATEGIES.register("rank_skewed_halving")
class RankSkewedHalvingLR(ManualHalvingLR):
    def __init__(self, optimizer: torch.optim.Optimizer, every: int = 10, gamma: float = 0.5,
                 skew_at: int = 5, skew: float = 3.0) -> None:
        super().__init__(optimizer, every, gamma)
        self.skew_at = skew_at
        self.skew = skew

    def step(self, update: int, epoch: int, metric: float | None) -> None:
        super().step(update, epoch, metric)
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        if update == self.skew_at and rank == 1:
            for group in self.optimizer.param_groups:
                group["lr"] = group["lr"] * self.skew
