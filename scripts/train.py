#!/usr/bin/env python
"""Train: `python scripts/train.py [--config PATH] [key=value ...]`, also under accelerate launch / torchrun."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from template.cli import run
from template.trainer import train

if __name__ == "__main__":
    run(lambda cfg, args: train(cfg), "Train a model with the template's Accelerate trainer.")
