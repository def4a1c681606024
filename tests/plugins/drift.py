"""A deliberately wrong optimizer: the tutorial's RandomScaledSGD, but rank 1 nudges one parameter.

`optimizer.name: rank1_perturbing_sgd`. After its `perturb_at`-th step, on rank 1 only, it adds
`amount` to parameter number `index` of the first param group (by default 0: `theta` for the linear
model, registered before `b`, so NOT the first name in sorted order: the check has to find the right
one). DDP does not re-broadcast parameters, so the replicas stay apart until the
trainer's final digest check names the parameter and refuses to write model.safetensors.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from template.optim import OPTIMIZERS, RandomScaledSGD


@OPTIMIZERS.register("rank1_perturbing_sgd")
class Rank1PerturbingSGD(RandomScaledSGD):
    def __init__(self, params, lr: float = 0.1, weight_decay: float = 0.0, seed: int = 0,
                 factor: float | None = None, perturb_at: int = 3, amount: float = 1e-3, index: int = 0) -> None:
        super().__init__(params, lr=lr, weight_decay=weight_decay, seed=seed, factor=factor)
        self.perturb_at = perturb_at
        self.amount = amount
        self.index = index
        self.steps = 0

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = super().step(closure)
        self.steps += 1
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        if self.steps == self.perturb_at and rank == 1:
            self.param_groups[0]["params"][self.index].add_(self.amount)
        return loss
