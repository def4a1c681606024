#!/usr/bin/env python
"""scripts/train.py, but with the CPU trap re-armed: Accelerate is built WITHOUT `cpu=True`.

On a machine without CUDA, `Accelerator()` under `accelerate launch --multi_gpu` or torchrun gives
every process world size 1 (independent copies of the training). The template must notice that the
launcher's WORLD_SIZE disagrees and stop with a LaunchError (`error: ...`, exit 2) before any work.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import template.runtime.distributed as distributed  # noqa: E402
from template.cli import run  # noqa: E402
from template.trainer import train  # noqa: E402

_Accelerator = distributed.Accelerator


def plain_accelerator(**kwargs):
    return _Accelerator(**{**kwargs, "cpu": False})


distributed.Accelerator = plain_accelerator  # type: ignore[assignment,misc]

if __name__ == "__main__":
    run(lambda cfg, args: train(cfg), "train.py with Accelerator(cpu=False), to test the launch check")
