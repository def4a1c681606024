"""Checkpoints: atomic directories under output_dir/checkpoints, newest complete one found on resume.

Accelerate's `save_state` writes the model (safetensors), optimizer, grad scaler and every rank's RNG
state; next to it `trainer.pt` holds what Accelerate does not know: the update counter, the lr
strategy's state and the tracker's run id. Everything is written into a hidden temporary directory
and renamed into place only once complete, so a kill mid-write leaves at most a `.tmp-*` to ignore.
All files load with `weights_only=True`.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

TRAINER_STATE = "trainer.pt"
STEP_DIR = re.compile(r"^step_(\d{8})$")


@dataclass
class Resumed:
    path: Path
    step: int
    state: dict[str, Any]


def checkpoint_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def complete_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first (incomplete ones have no trainer.pt: it is written last)."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and STEP_DIR.match(p.name) and (p / TRAINER_STATE).is_file()]
    return sorted(found, key=lambda p: p.name)


def save_checkpoint(accelerator: Accelerator, output_dir: str | Path, step: int, trainer_state: dict[str, Any],
                    keep: int) -> Path:
    """Write checkpoint `step` atomically on all ranks (collective), then keep only the newest `keep`."""
    root = checkpoint_root(output_dir)
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp-step_{step:08d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        torch.save(trainer_state, tmp / TRAINER_STATE)
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        for old in complete_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_trainer_state(path: Path) -> dict[str, Any]:
    return torch.load(path / TRAINER_STATE, map_location="cpu", weights_only=True)


def find_resume_point(output_dir: str | Path, resume: str) -> Path | None:
    """`none` -> None; `auto` -> newest complete checkpoint or None; else the given path, which must be complete."""
    if resume == "none":
        return None
    if resume == "auto":
        found = complete_checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / TRAINER_STATE).is_file():
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no {TRAINER_STATE})")
    return path


def load_checkpoint(accelerator: Accelerator, path: Path) -> Resumed:
    """Restore model, optimizer and RNG states through Accelerate, and return the trainer's own state."""
    state = load_trainer_state(path)
    accelerator.load_state(str(path))
    return Resumed(path=path, step=int(state["step"]), state=state)
