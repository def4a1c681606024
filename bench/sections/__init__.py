"""The benchmark's sections, by name, in the order they run: adding one is a module here and a line below.

A section module (bench/sections/NAME.py) has `run(ctx) -> dict`, the JSON it adds under its name, and
may have `report(results)` (its part of the printed report), `targets(results)` (its PASS / FAIL /
UNDECIDED checks, bench/stats.py's `target`) and `ratios(results)` (its headline ratios, flattened into
the JSON's `ratios`). Each gets the whole results dict, so a section may use an earlier one's numbers
(wandb sets its cost per row against the throughput section's update times).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from importlib import import_module
from pathlib import Path
from types import ModuleType
from typing import Any

import torch


@dataclass(frozen=True)
class Section:
    name: str
    quick: bool  # part of a --quick run

    def module(self) -> ModuleType:
        """Imported on use: a run imports only the sections it runs (gpu_sync and gpt import more of torch)."""
        return import_module(f"bench.sections.{self.name}")


SECTIONS = (
    Section("throughput", quick=True),
    Section("optimizer", quick=True),
    Section("overhead", quick=True),
    Section("gpu_sync", quick=False),
    Section("sync", quick=False),
    Section("wandb", quick=False),
    Section("startup", quick=True),
    Section("gpt", quick=True),
    Section("malloc", quick=False),
    Section("data", quick=False),  # needs the data extra (datasets)
)
NAMES = tuple(s.name for s in SECTIONS)
QUICK_NAMES = tuple(s.name for s in SECTIONS if s.quick)


@dataclass
class Context:
    """What a section's `run` gets: the command line, the device, a scratch directory, earlier results."""

    args: argparse.Namespace
    device: torch.device
    workdir: Path
    results: dict[str, Any] = field(default_factory=dict)


def hook(name: str, attr: str) -> Any:
    """A section's optional `report` / `targets` / `ratios` function, or None."""
    return getattr(next(s for s in SECTIONS if s.name == name).module(), attr, None)
