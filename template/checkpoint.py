"""Checkpoints: atomic directories under output_dir/checkpoints, newest complete one found on resume.

Accelerate's `save_state` writes the model (safetensors), optimizer, grad scaler and every rank's RNG
state; next to it `trainer.pt` holds what Accelerate does not know: the update counter, the lr
strategy's state and the tracker's run id. Everything is written into a hidden temporary directory
and renamed into place only once complete, so a kill mid-write leaves at most a `.tmp-*` to ignore.
All files load with `weights_only=True`.
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import load as accelerate_load
from safetensors import safe_open
from torch import nn

from template.config import ConfigError, describe
from template.distributed import any_rank, plain_model

TRAINER_STATE = "trainer.pt"
STEP_DIR = re.compile(r"^step_(\d{8})$")


class _TiedWeightsNote(logging.Filter):
    """Drop Accelerate's per-save warning that it stored one name of a tied tensor (the GPT's head is its
    token embedding): safetensors cannot hold two names on one storage, loading restores the tie, and
    `check_compatible` accepts it, so the warning would only alarm at every checkpoint."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Removed shared tensor" not in str(record.msg)


logging.getLogger("accelerate.utils.other").addFilter(_TiedWeightsNote())


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


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (disk full, read-only, no permission); the older ones are intact."""


def _write_phase(accelerator: Accelerator, tmp: Path, write: Callable[[], object]) -> None:
    """Run one phase of a checkpoint write on this rank, then agree with every rank that it worked (this
    all-reduce is also the phase's barrier). A failure anywhere stops every rank alike, and the partial
    `.tmp-*` directory goes (it frees what it held on a full disk; `complete_checkpoints` ignores it anyway).
    """
    error: Exception | None = None
    try:
        write()
    except Exception as exc:  # OSError, or a library's own error type wrapping one (safetensors)
        error = exc
    if not any_rank(accelerator, error is not None):
        return
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    newest = complete_checkpoints(tmp.parent.parent)
    intact = f"the newest complete checkpoint, {newest[-1]}, is intact" if newest else "there is no older checkpoint"
    cause = describe(error) if error is not None else "it failed on another rank"
    raise CheckpointWriteError(f"cannot write checkpoint {tmp}: {cause}; {intact}: free space or fix the "
                               "permissions, then rerun the same command to resume")


def save_checkpoint(accelerator: Accelerator, output_dir: str | Path, step: int, trainer_state: dict[str, Any],
                    keep: int) -> Path:
    """Write checkpoint `step` atomically on all ranks (collective), then keep only the newest `keep`.

    Raises CheckpointWriteError on every rank if any rank cannot write its part; nothing older is touched
    until the new checkpoint is complete, so the newest complete one stays loadable.
    """
    root = checkpoint_root(output_dir)
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp-step_{step:08d}"

    def make_tmp() -> None:
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)

    def complete() -> None:
        if accelerator.is_main_process:
            torch.save(trainer_state, tmp / TRAINER_STATE)
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)

    _write_phase(accelerator, tmp, make_tmp)
    _write_phase(accelerator, tmp, lambda: accelerator.save_state(str(tmp), safe_serialization=True))
    _write_phase(accelerator, tmp, complete)
    if accelerator.is_main_process:
        # Only checkpoints older than this one make way for it: a newer one (an unreadable checkpoint this
        # run resumed past) must not push out the checkpoint just written, or a kill would lose everything.
        older = [p for p in complete_checkpoints(output_dir) if p.name < final.name]
        for old in older[: max(0, len(older) - (keep - 1))]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def untied(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU copies safetensors can write: a tied tensor (the GPT's head and token embedding) is saved under
    each of its names, since safetensors refuses two names on one storage."""
    seen: set[int] = set()
    result = {}
    for name, tensor in state.items():
        tensor = tensor.detach().cpu().contiguous()
        ptr = tensor.untyped_storage().data_ptr()
        result[name] = tensor.clone() if ptr in seen else tensor
        seen.add(ptr)
    return result


def resume_candidates(output_dir: str | Path, resume: str) -> list[Path]:
    """Where to resume from, best first: `none` -> []; `auto` -> complete checkpoints, newest first;
    a path -> that checkpoint only (it must be complete)."""
    if resume == "none":
        return []
    if resume == "auto":
        return complete_checkpoints(output_dir)[::-1]
    path = Path(resume)
    if not (path / TRAINER_STATE).is_file():
        raise ConfigError("train.resume", f"{path} is not a complete checkpoint (no {TRAINER_STATE})")
    return [path]


def check_compatible(path: Path, model: nn.Module) -> None:
    """Compare the checkpoint's tensor names and shapes with the model's, reading only the header."""
    weights = path / "model.safetensors"
    if not weights.is_file():
        return  # not a safetensors checkpoint (e.g. sharded FSDP state): Accelerate checks on load
    state = model.state_dict()
    expected = {k: tuple(v.shape) for k, v in state.items()}
    with safe_open(str(weights), framework="pt") as f:
        saved = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 (not a dict)
    # safetensors keeps one name of a tied tensor (the GPT's head is its token embedding): the others are
    # not missing as long as a name on the same storage was saved
    storage = {k: v.untyped_storage().data_ptr() for k, v in state.items()}
    saved_storage = {storage[k] for k in saved.keys() & storage.keys()}
    missing = sorted(k for k in expected.keys() - saved.keys() if storage[k] not in saved_storage)
    extra = sorted(saved.keys() - expected.keys())
    if missing or extra:
        raise ConfigError("train.resume", f"checkpoint {path} is from a different model: "
                          f"missing {missing[:3]}, unexpected {extra[:3]}")
    for name, shape in expected.items():
        if name in saved and saved[name] != shape:
            raise ConfigError("train.resume", f"checkpoint {path} is from a different model: '{name}' has shape "
                              f"{list(saved[name])} there but {list(shape)} in this config")


def _on_every_rank(accelerator: Accelerator, ok: bool) -> bool:
    """True on every rank if `ok` is true on every rank (a collective when there are several ranks)."""
    return not any_rank(accelerator, not ok)


def _check_rng_file(path: Path, rank: int) -> None:
    """Read this rank's RNG file: Accelerate's `load_state` only logs when it cannot (and resumes with the
    wrong RNG state). A missing one is allowed: the checkpoint was written by fewer processes."""
    rng = path / f"random_states_{rank}.pkl"
    if rng.exists():
        accelerate_load(rng)


def load_checkpoint(accelerator: Accelerator, model: nn.Module, candidates: list[Path]) -> Resumed | None:
    """Restore from the first candidate that loads; a corrupt one is reported and skipped, never a crash loop.

    A shape mismatch is not corruption: it means the config changed, and it stops the run (ConfigError).
    The ranks agree on every candidate (a rank's own RNG file, a flaky read), so all resume at the same
    update. A candidate that failed inside `load_state` may have left part of itself in the model or the
    optimizer: if no other one loads, the run stops (ConfigError) rather than "start from scratch" there.
    """
    partly_loaded: Path | None = None
    for path in candidates:
        error: Exception | None = None
        state: dict[str, Any] = {}
        try:
            check_compatible(path, plain_model(accelerator, model))
            state = torch.load(path / TRAINER_STATE, map_location="cpu", weights_only=True)
        except ConfigError:
            raise
        except Exception as exc:  # truncated/corrupt files raise many types; all mean "try the previous one"
            error = exc
        if _on_every_rank(accelerator, error is None):
            try:
                accelerator.load_state(str(path))
                _check_rng_file(path, accelerator.process_index)
            except Exception as exc:
                error = exc
            if _on_every_rank(accelerator, error is None):
                return Resumed(path=path, step=int(state["step"]), state=state)
            partly_loaded = path
        if error is not None:
            rank = f" on rank {accelerator.process_index}" if accelerator.num_processes > 1 else ""
            print(f"warning: checkpoint {path} is unreadable{rank} ({type(error).__name__}: {error}); skipping it",
                  flush=True)
        elif accelerator.is_main_process:
            print(f"warning: checkpoint {path} is unreadable on another rank; skipping it", flush=True)
    if partly_loaded is not None:
        raise ConfigError("train.resume", f"no checkpoint could be loaded, and {partly_loaded} failed part-way "
                          "through loading (the model or optimizer may hold part of it): move the unreadable "
                          "checkpoints out of the way, or set train.resume=none to start over")
    if candidates:
        accelerator.print("warning: no readable checkpoint; starting from scratch")
    return None
