"""The reference loops, by name: each module is one way to train the same model, readable on its own.

Every loop takes the run's config and device, trains `cfg.train.max_steps` updates, and returns what it
knows about the run (the final parameters' digest where it is the trainer's training); the harness
(bench/harness.py) times it from the outside with the optimizer step hook.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from bench.loops.lightning_loop import lightning_available, run_lightning
from bench.loops.nanogpt import run_nanogpt, run_nanogpt_tuned
from bench.loops.plain_accelerate import run_accelerate
from bench.loops.raw import run_raw, run_raw_tuned
from bench.loops.trainer import run_trainer
from template.config import Config

Loop = Callable[[Config, torch.device], dict[str, Any]]

LOOPS: dict[str, Loop] = {
    "raw": run_raw, "raw_tuned": run_raw_tuned, "trainer": run_trainer, "accelerate": run_accelerate,
    "lightning": run_lightning, "nanogpt": run_nanogpt, "nanogpt_tuned": run_nanogpt_tuned,
}
GPT_LOOPS = ("nanogpt", "nanogpt_tuned", "trainer")

__all__ = ["GPT_LOOPS", "LOOPS", "Loop", "lightning_available"]
