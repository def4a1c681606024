"""One optimizer update: forward, loss and backward over the accumulation micro-batches, clip, step.

Accelerate's wrappers cost ~150 us per update on a small model (`AcceleratedOptimizer.step` looks up
the optional `lomo_optim` package twice, `zero_grad` inspects a signature, `backward` divides by 1,
`clip_grad_norm_` re-checks versions). Where they only forward the call (no GradScaler; single-process,
DDP or multi-CPU runs), this calls what they would call: the same ops, the same results, measured by
scripts/benchmark.py. fp16, FSDP, DeepSpeed and XLA keep the wrappers.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import nullcontext
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from torch import nn

from template import nonfinite

PASS_THROUGH = (DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU)
NO_CONTEXT = nullcontext()  # reusable, so no-op contexts cost no object per micro-batch


class UpdateStep:
    def __init__(self, accelerator: Accelerator, model: nn.Module, optimizer: Any, loss_fn: nn.Module,
                 accum: int, clip: float, skip_nonfinite: bool) -> None:
        self.accelerator, self.model, self.optimizer, self.loss_fn = accelerator, model, optimizer, loss_fn
        self.accum, self.clip, self.skip_nonfinite = accum, clip, skip_nonfinite
        self.device = accelerator.device
        self.non_blocking = self.device.type == "cuda"
        self._move = self.device.type != "cpu"  # batches are built on the CPU: nothing to move there
        direct = accelerator.scaler is None and accelerator.distributed_type in PASS_THROUGH
        self._step_optimizer = optimizer.optimizer if direct else optimizer
        self._backward = torch.Tensor.backward if direct else accelerator.backward
        self._autocast = accelerator.autocast if accelerator.native_amp else lambda: NO_CONTEXT
        self._params = list(model.parameters())
        self._direct = direct
        self._scaled = accelerator.scaler is not None

    def grad_norm(self, max_norm: float) -> torch.Tensor:
        """Clip to `max_norm` and return the total norm (max_norm=inf: the norm only, grads x 1.0)."""
        if self._direct:
            return torch.nn.utils.clip_grad_norm_(self._params, max_norm)
        return self.accelerator.clip_grad_norm_(self.model.parameters(), max_norm)

    def __call__(self, batches: Iterator[Any], want_norm: bool) -> tuple[torch.Tensor, torch.Tensor | None, bool]:
        """Run one update; return (this rank's loss as a device tensor, grad norm or None, applied?)."""
        total: torch.Tensor | None = None
        for micro in range(self.accum):
            x, y = next(batches)
            if self._move:
                x, y = (t.to(self.device, non_blocking=self.non_blocking) for t in (x, y))
            # gradients are all-reduced once per update, on the last micro-batch
            sync = NO_CONTEXT if micro == self.accum - 1 else self.accelerator.no_sync(self.model)
            with sync, self._autocast():
                loss = self.loss_fn(self.model(x), y)
                if self.accum > 1:
                    loss = loss / self.accum
            self._backward(loss)
            total = loss.detach() if total is None else total + loss.detach()
        assert total is not None
        norm = self.grad_norm(self.clip or math.inf) if self.clip or want_norm else None
        # fp16's GradScaler already skips a non-finite update, and must be the one to (its scale has to update)
        applied = self._scaled or not self.skip_nonfinite or nonfinite.gradients_finite(self.model, norm)
        if applied:
            self._step_optimizer.step()
        self._step_optimizer.zero_grad(set_to_none=True)
        return total, norm, applied and not self.optimizer.step_was_skipped
