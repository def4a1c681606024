"""The raw loop: what "a hand-written PyTorch loop" means in this benchmark.

Index the TensorDataset with a fresh permutation per epoch, forward, backward, clip, step, zero_grad,
scheduler.step(), and read `loss.item()` every LOG_EVERY updates. It builds the trainer's parts by hand
(the default config's MLP, SimpleMSELoss, RandomScaledSGD, WarmupCosineLR stepped after every update,
the synthetic data, the same seed) and draws its permutations like the trainer's sampler, so it ends
with bit-identical parameters: `same_params_as_trainer` checks that the comparison is like for like.

`raw_tuned` is the same loop after the trainer's malloc setting (template/runtime/host_memory.py: glibc keeps
freed memory instead of page-faulting each update's activations in again): the trainer's own overhead
at equal allocator settings.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch

from bench.configs import LOG_EVERY
from template.config import Config


def build_common(cfg: Config, device: torch.device) -> tuple[Any, ...]:
    """Model, loss, optimizer, scheduler and data the way the trainer builds them, by hand."""
    from template.data import synthetic_regression
    from template.losses import SimpleMSELoss
    from template.models import MLP
    from template.optim import RandomScaledSGD
    from template.schedules.subclass import WarmupCosineLR

    torch.manual_seed(cfg.seed)  # what the trainer's set_seed does for torch, before building the model
    model = MLP(**cfg.model.kwargs).to(device)
    loss_fn = SimpleMSELoss()
    optimizer = RandomScaledSGD(model.parameters(), lr=cfg.optimizer.lr, weight_decay=cfg.optimizer.weight_decay,
                                seed=cfg.seed)
    scheduler = WarmupCosineLR(optimizer, **cfg.scheduler.kwargs)
    train_set, _ = synthetic_regression(cfg.seed, **cfg.data.kwargs)
    return model, loss_fn, optimizer, scheduler, train_set



def run_raw(cfg: Config, device: torch.device) -> dict[str, Any]:
    from template.runtime.distributed import param_digest

    model, loss_fn, optimizer, scheduler, train_set = build_common(cfg, device)
    x_all, y_all = train_set.tensors
    batch, steps, clip = cfg.train.batch_size, cfg.train.max_steps, cfg.train.clip_grad_norm
    per_epoch = len(x_all) // batch
    params = list(model.parameters())
    model.train()
    step = 0
    for epoch in itertools.count():
        # The trainer's sampler draws epoch e's order from seed*100_003+e: the same order makes the
        # two runs bit-comparable (same_params_as_trainer).
        order = torch.randperm(len(x_all), generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch))
        for u in range(per_epoch):
            idx = order[u * batch:(u + 1) * batch]
            x, y = x_all[idx].to(device), y_all[idx].to(device)
            loss = loss_fn(model(x), y)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            step += 1
            if step % LOG_EVERY == 0:
                _ = loss.item(), grad_norm.item()
            if step == steps:
                return {"param_digest": param_digest(model)}
    raise AssertionError("unreachable")


def run_raw_tuned(cfg: Config, device: torch.device) -> dict[str, Any]:
    """The raw loop with the trainer's malloc thresholds: the trainer's own overhead at equal allocator settings."""
    from template.runtime.host_memory import keep_freed_memory

    keep_freed_memory()
    return run_raw(cfg, device)

