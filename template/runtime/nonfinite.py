"""Non-finite loss or gradients: the `train.nonfinite` policy, and the guard that never saves NaN weights.

`stop` checks the loss where it is read anyway (log steps) and before every save, so it costs nothing
per update; `skip` must decide on every update, so it reads one scalar per update (one host-device
sync, as fp16's GradScaler does) from the gradient norm, which is identical on every rank after the
all-reduce, so all ranks skip the same updates.
"""

from __future__ import annotations

import torch
from torch import nn

from template.errors import NonFiniteError
from template.runtime.sharding import local


def gradients_finite(model: nn.Module, grad_norm: torch.Tensor | None) -> bool:
    if grad_norm is None:
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        grad_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    return bool(torch.isfinite(grad_norm).item())


def assert_finite(model: nn.Module) -> None:
    """Raise naming the first non-finite parameter: called before any weights are written."""
    for name, param in model.named_parameters():
        if not torch.isfinite(local(param)).all():  # a shard: each rank checks its own
            raise NonFiniteError(f"parameter '{name}' is non-finite (NaN/inf); refusing to save it, the newest "
                                 "checkpoint holds the last good state")
