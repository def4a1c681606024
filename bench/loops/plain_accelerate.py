"""A plain Accelerate loop as the docs show it.

Accelerator(cpu=...), prepare(model, optimizer, DataLoader(shuffle=True, drop_last=True), scheduler),
accelerator.backward and accelerator.clip_grad_norm_, on the raw loop's parts (same model, data,
optimizer, schedule, clipping and seed; its own shuffling, so its parameters differ).
"""

from __future__ import annotations

from typing import Any

import torch

from bench.configs import LOG_EVERY
from bench.loops.raw import build_common
from template.config import Config


def run_accelerate(cfg: Config, device: torch.device) -> dict[str, Any]:
    from accelerate import Accelerator
    from torch.utils.data import DataLoader

    accelerator = Accelerator(cpu=device.type == "cpu")
    model, loss_fn, optimizer, scheduler, train_set = build_common(cfg, torch.device("cpu"))
    loader = DataLoader(train_set, batch_size=cfg.train.batch_size, shuffle=True, drop_last=True)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    model.train()
    step, steps = 0, cfg.train.max_steps
    while step < steps:
        for x, y in loader:
            loss = loss_fn(model(x), y)
            accelerator.backward(loss)
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.train.clip_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            step += 1
            if step % LOG_EVERY == 0:
                _ = loss.item(), grad_norm.item()
            if step == steps:
                break
    return {}
