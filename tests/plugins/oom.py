"""Out of memory on demand: `model.name: oom_mlp` raises `torch.OutOfMemoryError` for a forward with gradients
(a training micro-batch or a trial of the micro-batch search; never an eval batch) of more rows than fit.

`model.kwargs`: those of `mlp`, plus `fits` (rows that fit; null: any), `from_update` and `then_fits` (from
that update on, `then_fits` rows fit: memory lost mid-run), and `ranks` (the ranks these limits apply to;
null: all). The update about to run is told to the model by the `oom_clock` hook (`hooks: [{name:
oom_clock}]`), which sets it after each update, so a resumed run counts from its first update on.
"""

from __future__ import annotations

import torch

from template.hooks import HOOKS, Hook, HookContext
from template.models import MLP, MODELS


@MODELS.register("oom_mlp")
class OutOfMemoryMLP(MLP):
    def __init__(self, fits: int | None = None, from_update: int = 0, then_fits: int | None = None,
                 ranks: list[int] | None = None, **kwargs: int) -> None:
        super().__init__(**kwargs)
        self.fits, self.from_update, self.then_fits, self.ranks = fits, from_update, then_fits, ranks
        self.next_update = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        limit = self.then_fits if self.from_update and self.next_update >= self.from_update else self.fits
        if torch.is_grad_enabled() and limit is not None and len(x) > limit and rank in (self.ranks or [rank]):
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate 1.00 GiB (injected: {len(x)} rows, "
                                         f"{limit} fit, rank {rank}, update {self.next_update})")
        return super().forward(x)


@HOOKS.register("oom_clock")
class OutOfMemoryClock(Hook):
    def after_update(self, ctx: HookContext) -> None:
        ctx.plain.next_update = ctx.step + 1
