"""A nanoGPT-style hand-written loop for the GPT: what "a raw PyTorch loop" means for a token model.

`nanogpt_tuned` is the same after the trainer's malloc setting (as raw_tuned in bench/loops/raw.py): on
CPU, glibc's default thresholds page-fault much of each update's activations in again (measured: ~2,000
minor faults an update against ~20 with the setting, bench/sections/malloc.py), which the trainer
avoids; it isolates the trainer's own overhead.
"""

from __future__ import annotations

import fnmatch
import itertools
import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from bench.configs import LOG_EVERY, NO_DECAY_PATTERNS
from template.config import Config


def run_nanogpt(cfg: Config, device: torch.device) -> dict[str, Any]:
    """nanoGPT's training loop (train.py), cut down to what configs/gpt.yaml does; it reads on its own.

    The same training as `template.trainer.train(cfg)`, so that the two end with the same parameters:
    the model is built right after seeding torch with the run's seed; the batches are the same windows
    of `block_size + 1` tokens of the memmapped train.bin in the same order (epoch e is a permutation of
    the window ids seeded with seed * 100_003 + e, as GlobalBatchSampler draws it, where nanoGPT draws
    random offsets); AdamW on two parameter groups (no weight decay on biases, LayerNorms and the
    position embedding); the lr of WarmupCosineLR set by hand before each update (nanoGPT's `get_lr`);
    clipping; the loss read on the host only every LOG_EVERY updates. `train.compile` compiles the model
    in place (as the trainer does: parameter names stay plain); on CUDA the forward runs under bf16 autocast.
    """
    import numpy as np
    import torch.nn.functional as F

    from template.models.gpt import GPT
    from template.runtime.distributed import param_digest

    opt, lr_kw, t = cfg.optimizer, cfg.scheduler.kwargs, cfg.train
    block_size, batch_size = cfg.model.kwargs["block_size"], t.batch_size
    data_dir = Path(cfg.data.kwargs["dir"])
    dtype = np.dtype(json.loads((data_dir / "meta.json").read_text())["dtype"])  # nanoGPT reads meta.pkl
    num_windows = ((data_dir / "train.bin").stat().st_size // dtype.itemsize - 1) // block_size
    cuda = device.type == "cuda"

    torch.manual_seed(cfg.seed)
    model = GPT(**cfg.model.kwargs).to(device)
    if t.compile:
        model.compile()
    decay = [p for n, p in model.named_parameters() if not any(fnmatch.fnmatchcase(n, g) for g in NO_DECAY_PATTERNS)]
    no_decay = [p for n, p in model.named_parameters() if any(fnmatch.fnmatchcase(n, g) for g in NO_DECAY_PATTERNS)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": opt.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=opt.lr, **opt.kwargs)

    def get_lr(it: int) -> float:  # WarmupCosineLR's lr for update `it` (0-based), the same float ops
        warmup, total, min_ratio = lr_kw["warmup_steps"], lr_kw["total_steps"], lr_kw["min_lr_ratio"]
        if it < warmup:
            return opt.lr * ((it + 1) / warmup)
        progress = min(1.0, (it - warmup) / (total - warmup))
        return opt.lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))

    def get_batch(windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        data = np.memmap(data_dir / "train.bin", dtype=dtype, mode="r")  # nanoGPT maps the file anew per batch
        starts = (windows * block_size).tolist()
        x = torch.stack([torch.from_numpy(data[i:i + block_size].astype(np.int64)) for i in starts])
        y = torch.stack([torch.from_numpy(data[i + 1:i + 1 + block_size].astype(np.int64)) for i in starts])
        if cuda:
            return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
        return x, y

    params = list(model.parameters())
    model.train()
    step, started, first_update_s = 0, time.perf_counter(), 0.0
    for epoch in itertools.count():
        order = torch.randperm(num_windows, generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch))
        for u in range(num_windows // batch_size):
            lr = get_lr(step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x, y = get_batch(order[u * batch_size:(u + 1) * batch_size])
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=t.mixed_precision == "bf16"):
                logits = model(x)
                loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1), ignore_index=-1)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, t.clip_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if step == 1:
                first_update_s = time.perf_counter() - started  # with compile on: the compile time
            if step % LOG_EVERY == 0:
                _ = loss.item(), grad_norm.item()
            if step == t.max_steps:
                return {"param_digest": param_digest(model), "first_update_s": first_update_s}
    raise AssertionError("unreachable")


def run_nanogpt_tuned(cfg: Config, device: torch.device) -> dict[str, Any]:
    """The nanoGPT loop with the trainer's malloc thresholds: the trainer's own overhead at equal allocator settings."""
    from template.runtime.host_memory import keep_freed_memory

    keep_freed_memory()
    return run_nanogpt(cfg, device)

