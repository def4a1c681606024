#!/usr/bin/env python
"""Benchmark the template's trainer against hand-written loops, and its side costs: `--help`, bench/cli.py.

A thin entry point: the benchmark is the `bench` package at the repository root. It is also the command
every timed worker process runs (`--worker-loop`, `--worker-out`), so workers find the same code.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def _requested_device(argv: list[str]) -> str:
    for i, arg in enumerate(argv):
        if arg == "--device" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--device="):
            return arg.split("=", 1)[1]
    return "cpu"


# The trainer takes CUDA whenever torch sees it, so a CPU benchmark must hide the GPUs before torch loads.
if _requested_device(sys.argv[1:]) == "cpu" and "--worker-out" not in sys.argv:
    os.environ["CUDA_VISIBLE_DEVICES"] = ""

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from bench.cli import main  # noqa: E402

if __name__ == "__main__":
    main()
