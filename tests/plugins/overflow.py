"""Make chosen updates overflow: `$FT_OVERFLOW_AT=3,7` makes those updates' gradients infinite.

The loss value is unchanged (an identity whose backward multiplies the incoming gradient by inf), but every
gradient is then inf or nan, so the fp16 GradScaler skips the optimizer step (and lowers its scale), as a
real overflow would; every other update is unchanged. An inf is certain where a large finite factor is not:
measured on an H200, scaling by 1e30 left the gradients of a model without fp16 matmuls (seed_builtin's
`linear`) finite in fp32, so the GradScaler applied them. Updates are counted by calls to UpdateStep,
i.e. attempted updates, 1-based. Without FT_OVERFLOW_AT the module does nothing.
"""

from __future__ import annotations

import os

import torch

from template.trainer import UpdateStep

_original = UpdateStep.__call__
AT = {int(u) for u in (os.environ.get("FT_OVERFLOW_AT") or "").split(",") if u.strip()}
_attempt = 0


class _InfiniteGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, loss):  # type: ignore[no-untyped-def,override]
        return loss.clone()

    @staticmethod
    def backward(ctx, grad):  # type: ignore[no-untyped-def,override]
        return grad * float("inf")


def _huge_gradient(loss):  # type: ignore[no-untyped-def]
    return _InfiniteGradient.apply(loss)


def _overflowing(self: UpdateStep, batches, want_norm: bool):  # type: ignore[no-untyped-def]
    global _attempt
    _attempt += 1
    if _attempt not in AT:
        return _original(self, batches, want_norm)
    loss_fn = self.loss_fn
    self.loss_fn = lambda y, target: _huge_gradient(loss_fn(y, target))  # type: ignore[method-assign,assignment]
    try:
        return _original(self, batches, want_norm)
    finally:
        self.loss_fn = loss_fn


if AT and UpdateStep.__call__ is _original:
    UpdateStep.__call__ = _overflowing  # type: ignore[method-assign]
