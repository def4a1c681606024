"""Process-group setup and the cross-rank checks that make "same training on 1 or N processes" true."""

from __future__ import annotations

import hashlib
import os
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from torch import nn


class LaunchError(RuntimeError):
    """The launch does not match what the processes see; reported like a config error (exit 2)."""


def make_accelerator(mixed_precision: str | None = None, log_with: str | None = None,
                     project_dir: str | None = None) -> Accelerator:
    """An Accelerator on CUDA when there is one, else on CPU with a real gloo process group.

    On a machine without CUDA, a plain `Accelerator()` under `accelerate launch --multi_gpu` or torchrun
    gives every process world size 1: N independent trainings writing the same output_dir, silently.
    `cpu=True` makes it a real multi-CPU run; and whatever happens, a world size that disagrees with
    the launcher's WORLD_SIZE stops the run before any work.
    """
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(), mixed_precision=mixed_precision, log_with=log_with,
        project_dir=project_dir,
    )
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != accelerator.num_processes:
        raise LaunchError(
            f"the launcher started {launched} processes but Accelerate sees {accelerator.num_processes} "
            f"({accelerator.distributed_type}); refusing to run independent copies of the training"
        )
    return accelerator


def param_digest(model: nn.Module) -> str:
    """sha256 over the parameters' raw bytes, names sorted: equal digests mean bit-identical weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def replica_digests(accelerator: Accelerator, model: nn.Module) -> list[str]:
    """Every rank's digest, gathered to all ranks (a collective: all ranks must call it)."""
    return list(gather_object([param_digest(accelerator.unwrap_model(model))]))


def first_drift(accelerator: Accelerator, model: nn.Module) -> str | None:
    """Name of the first parameter (sorted) whose bytes differ from rank 0's, or None."""
    state = accelerator.unwrap_model(model).state_dict()
    for name in sorted(state):
        local = hashlib.sha256(state[name].detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()
        if len(set(gather_object([local]))) > 1:
            return name
    return None


def check_lr_sync(accelerator: Accelerator, lrs: dict[str, float], resync: bool, optimizer: Any) -> None:
    """Compare every rank's lrs with rank 0's in one small all-gather; resync from rank 0 or raise.

    By construction all ranks compute the same lr; this catches what construction cannot (a
    forker's strategy reading a rank-local value). Every rank sees the whole table, so all ranks
    take the same decision and none is left waiting in a collective.
    """
    if accelerator.num_processes == 1:
        return
    local = torch.tensor([list(lrs.values())], dtype=torch.float64, device=accelerator.device)
    table = accelerator.gather(local).cpu().tolist()
    reference = table[0]
    for rank, row in enumerate(table):
        if row == reference:
            continue
        if resync:
            for group, lr in zip(optimizer.param_groups, reference, strict=True):
                group["lr"] = lr
            return
        name, mine, theirs = next((n, a, b) for n, a, b in zip(lrs, row, reference, strict=True) if a != b)
        raise RuntimeError(f"lr out of sync: group '{name}' is {mine!r} on rank {rank} but {theirs!r} on rank 0")
