"""A hook that draws from every global random generator after each update and logs the draws.

`hooks: [{name: random_draws}]`. After each update it draws from Python's `random`, NumPy's global generator
and torch's CPU generator, on every rank, and puts this rank's draws (rank 0's in the row; the others' through
a gather) into the training row: a resumed run must log the draws of the uninterrupted run, on every rank.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from accelerate.utils import gather_object

from template.hooks import HOOKS, Hook, HookContext


@HOOKS.register("random_draws")
class RandomDraws(Hook):
    def __init__(self) -> None:
        self.last: list[float] = []

    def after_update(self, ctx: HookContext) -> None:
        self.last = [random.random(), float(np.random.rand()), torch.rand(()).item()]

    def on_log(self, ctx: HookContext, row: dict[str, Any]) -> None:
        every_rank = gather_object([self.last]) if ctx.accelerator.num_processes > 1 else [self.last]
        for rank, draws in enumerate(every_rank):
            row.update({f"draw/rank{rank}/{name}": value for name, value in zip(("python", "numpy", "torch"), draws,
                                                                                   strict=True)})
