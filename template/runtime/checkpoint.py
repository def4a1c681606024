"""Checkpoints: one mapping of named entries, saved and loaded in one place, into atomic step directories.

What a checkpoint carries is the `Checkpointer`'s mapping, built by the trainer: the model and optimizer
(and fp16's GradScaler) through Accelerate's `save_state`, which knows how to gather or shard them; then
every other entry by name (lr strategy, clock, data position, hooks, tracker run id) in `trainer.pt`, written
by rank 0 beside `config.json` (the run's resolved config, which a resume compares with its own); and the
per-rank entries (every RNG) in `rank_<r>.pt`, one file per rank. Save and load walk the same mapping, so
they cannot drift apart: adding state to a run is adding one entry. Each entry only needs `state_dict()` and
`load_state_dict()` returning and taking plain data and tensors.

Everything is written into a hidden temporary directory and renamed into place only once complete, so a kill
mid-write leaves at most a `.tmp-*` to ignore. All files load with `weights_only=True`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from safetensors import safe_open
from torch import nn

from template.errors import CheckpointWriteError, ConfigError, describe
from template.runtime import nonfinite, sharding
from template.runtime.distributed import any_rank, plain_model

TRAINER_STATE = "trainer.pt"  # the shared entries, written last: a directory without it is incomplete
RANK_STATE = "rank_{}.pt"  # the per-rank entries of rank {}
RUN_CONFIG = "config.json"  # the resolved config the weights were trained with: what a resume compares against
CHECKSUMS = "checksums.json"  # sha256 of every other file, written with trainer.pt: a damaged file is found
CHUNK = 8 << 20
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
    state: dict[str, Any]  # the shared entries (trainer.pt)
    local: dict[str, Any]  # this rank's entries (rank_<r>.pt; empty if the writing run had fewer ranks)


def checkpoint_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def write_checksums(directory: Path) -> None:
    """Record the sha256 of every file of a checkpoint (the last thing written before it is renamed into place)."""
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.name != CHECKSUMS)
    sums = {str(p.relative_to(directory)): sha256_file(p) for p in files}
    (directory / CHECKSUMS).write_text(json.dumps(sums, indent=0) + "\n")


def damaged_file(directory: Path, share: int = 0, shares: int = 1) -> str | None:
    """The first file of this rank's share of a checkpoint whose bytes differ from its recorded checksum (or
    is missing), as a phrase naming it; None if the share is intact. The ranks split the hashing."""
    try:
        sums: dict[str, str] = json.loads((directory / CHECKSUMS).read_text())
    except (OSError, ValueError) as exc:
        return f"{CHECKSUMS} is unreadable ({type(exc).__name__})"
    for i, (name, expected) in enumerate(sorted(sums.items())):
        if i % shares != share:
            continue
        path = directory / name
        if not path.is_file():
            return f"{name} is missing"
        if sha256_file(path) != expected:
            return f"{name} does not match its checksum (changed or truncated since it was written)"
    return None


def complete_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first (incomplete ones have no trainer.pt: it is written last)."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and STEP_DIR.match(p.name) and (p / TRAINER_STATE).is_file()]
    return sorted(found, key=lambda p: p.name)


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
    cause = describe(error) if error is not None else ""
    if accelerator.num_processes > 1:  # every rank says the same: the first failing rank's cause, named
        causes = gather_object([describe(error) if error is not None else None])
        rank = next(r for r, c in enumerate(causes) if c is not None)
        cause = f"rank {rank}: {causes[rank]}"
    raise CheckpointWriteError(f"cannot write checkpoint {tmp}: {cause}; {intact}: free space or fix the "
                               "permissions, then rerun the same command to resume")


def save_checkpoint(accelerator: Accelerator, output_dir: str | Path, step: int, trainer_state: dict[str, Any],
                    keep: int, rank_state: dict[str, Any] | None = None, config: dict[str, Any] | None = None,
                    write_weights: Callable[[Path], None] | None = None) -> Path:
    """Write checkpoint `step` atomically on all ranks (collective), then keep only the newest `keep`.
    `write_weights(dir)` writes the model and optimizer (default: Accelerate's `save_state`).

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
            if config is not None:  # a small file of its own: preflight reads it without loading the state
                (tmp / RUN_CONFIG).write_text(json.dumps(config, indent=1) + "\n")
            torch.save(trainer_state, tmp / TRAINER_STATE)
            write_checksums(tmp)
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)

    _write_phase(accelerator, tmp, make_tmp)

    def write_state() -> None:
        if write_weights is None:
            accelerator.save_state(str(tmp), safe_serialization=True)
        else:
            write_weights(tmp)
        if rank_state is not None:
            torch.save(rank_state, tmp / RANK_STATE.format(accelerator.process_index))

    _write_phase(accelerator, tmp, write_state)
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


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def _on_every_rank(accelerator: Accelerator, ok: bool) -> bool:
    """True on every rank if `ok` is true on every rank (a collective when there are several ranks)."""
    return not any_rank(accelerator, not ok)


class Checkpointer:
    """Saves and restores a run: the prepared model and optimizer, `shared` entries (equal on every rank) and
    `per_rank` entries (each rank's own), by name. `load` restores the entries in mapping order, per-rank
    ones last: put there what setup must not disturb after the restore (the RNG). A shared entry with
    `optional = True` may be missing from a checkpoint (one written before it existed): it is then not loaded."""

    def __init__(self, accelerator: Accelerator, output_dir: Path, keep: int, model: nn.Module, config: dict[str, Any],
                 shared: Mapping[str, Stateful], per_rank: Mapping[str, Stateful],
                 sharded_optimizer: torch.optim.Optimizer | None = None) -> None:
        self.accelerator, self.output_dir, self.keep, self.model = accelerator, output_dir, keep, model
        self.config = config  # the resolved config the weights are trained with (resume_changes reads it back)
        self.shared, self.per_rank = dict(shared), dict(per_rank)
        self.sharded_optimizer = sharded_optimizer  # set: the model is sharded, and so is what gets written

    def save(self, step: int) -> Path:
        """Write checkpoint `step` on every rank (a collective); see `save_checkpoint`."""
        nonfinite.assert_finite(self.model)
        state = {"step": step, **{name: entry.state_dict() for name, entry in self.shared.items()}}
        local = {name: entry.state_dict() for name, entry in self.per_rank.items()}
        write = None
        if self.sharded_optimizer is not None:  # an entry's shards (EMA weights) go with the model's, by path
            state, shards = sharding.split_shards(state)
            optimizer = self.sharded_optimizer
            write = lambda tmp: sharding.save_sharded(tmp, self.model, optimizer, shards)  # noqa: E731
        return save_checkpoint(self.accelerator, self.output_dir, step, state, self.keep, local, self.config, write)

    def load(self, candidates: list[Path]) -> int:
        """Restore the first candidate that loads (none: a fresh run) and return its update, 0 if fresh."""
        read = None
        if self.sharded_optimizer is not None:
            optimizer = self.sharded_optimizer
            read = lambda path, state: sharding.load_sharded(path, self.model, optimizer, state)  # noqa: E731
        resumed = load_checkpoint(self.accelerator, self.model, candidates, read)
        if resumed is None:
            return 0
        for entries, state in ((self.shared, resumed.state), (self.per_rank, resumed.local)):
            for name, entry in entries.items():
                if name in state:
                    entry.load_state_dict(state[name])
                elif entries is self.shared and not getattr(entry, "optional", False):
                    raise ConfigError("train.resume", f"checkpoint {resumed.path} has no '{name}' entry: it was "
                                      "written by another version of this template; set train.resume=none")
                else:  # this rank did not exist in the run that wrote it
                    print(f"note: rank {self.accelerator.process_index} has no '{name}' state in {resumed.path} "
                          "(written by fewer processes); it keeps its own", flush=True)
        self.accelerator.print(f"resumed from {resumed.path} at update {resumed.step}")
        return resumed.step


def load_checkpoint(accelerator: Accelerator, model: nn.Module, candidates: list[Path],
                    read_weights: Callable[[Path, dict[str, Any]], None] | None = None) -> Resumed | None:
    """Restore model and optimizer from the first candidate that is intact and loads, and return its entries'
    states; a damaged candidate is reported in one line and skipped, never a crash loop. None: no candidates.

    Every file's bytes are checked against the checksums recorded when it was written (the ranks share the
    reading) before anything is loaded, so a flipped byte never loads as a wrong weight. A shape mismatch is
    not damage: it means the config changed, and it stops the run (ConfigError). The ranks agree on every
    candidate (a rank's own file, a flaky read), so all resume at the same update. If candidates exist but
    none loads, the run stops (ConfigError): starting over is the user's decision (train.resume=none).
    `read_weights(dir, shared state)` loads the model and optimizer (default: Accelerate's `load_state`).
    """
    rank, world = accelerator.process_index, accelerator.num_processes
    where = f" on rank {rank}" if world > 1 else ""
    partly_loaded: Path | None = None
    for path in candidates:
        damage = damaged_file(path, rank, world)
        if not _on_every_rank(accelerator, damage is None):
            if damage is not None:
                print(f"warning: checkpoint {path} is damaged: {damage}; skipping it", flush=True)
            continue
        error: Exception | None = None
        state: dict[str, Any] = {}
        local: dict[str, Any] = {}
        try:
            if read_weights is None:  # sharded weights: torch's loader checks names and shapes
                check_compatible(path, plain_model(accelerator, model))
            state = torch.load(path / TRAINER_STATE, map_location="cpu", weights_only=True)
            own = path / RANK_STATE.format(rank)
            if own.exists():  # missing: the checkpoint was written by fewer processes
                local = torch.load(own, map_location="cpu", weights_only=True)
        except ConfigError:
            raise
        except Exception as exc:  # intact bytes that do not load (another torch, a full disk at write time)
            error = exc
        if _on_every_rank(accelerator, error is None):
            try:
                if read_weights is None:
                    accelerator.load_state(str(path))
                else:
                    read_weights(path, state)
            except Exception as exc:
                error = exc
            if _on_every_rank(accelerator, error is None):
                return Resumed(path=path, step=int(state["step"]), state=state, local=local)
            partly_loaded = path  # the next candidate that loads overwrites all of it
        if error is not None:
            print(f"warning: checkpoint {path} is unreadable{where} ({type(error).__name__}: {error}); skipping it",
                  flush=True)
        elif accelerator.is_main_process:
            print(f"warning: checkpoint {path} is unreadable on another rank; skipping it", flush=True)
    if partly_loaded is not None:
        raise ConfigError("train.resume", f"no checkpoint could be loaded, and {partly_loaded} failed part-way "
                          "through loading (the model or optimizer may hold part of it): move the unreadable "
                          "checkpoints out of the way, or set train.resume=none to start over")
    if candidates:
        names = ", ".join(p.name for p in candidates)
        raise ConfigError("train.resume", f"no intact checkpoint in {candidates[0].parent} ({names}: see the "
                          "warnings above); set train.resume=none to start over")
    return None


# ------------------------------------------------------------------------------------------------
# What a resume may change
# ------------------------------------------------------------------------------------------------

# Keys a resume may change (exact keys, or prefixes ending in "."): how long and how the run goes on, what it
# reports, where it runs. Everything else defines the weights, the optimizer's or the lr strategy's state or the
# data order a checkpoint holds, and a change is refused before anything is loaded.
RESUME_MAY_CHANGE = (
    "output_dir", "imports", "hooks", "eval.", "tracking.", "distributed.", "data.num_workers", "train.max_steps",
    "train.max_samples", "train.log_every", "train.eval_every", "train.eval_batches", "train.checkpoint_every",
    "train.keep_checkpoints", "train.resume", "train.progress", "train.plots", "train.keep_freed_memory",
    "train.compile", "train.deterministic", "train.peak_flops", "train.nonfinite", "train.mixed_precision",
    "train.clip_grad_norm", "train.grad_accum_steps", "train.micro_batch_size", "train.profile",
)


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out or {prefix[:-1]: {}}
    return {prefix[:-1]: tree}


def _get(tree: Any, key: str) -> Any:
    for part in key.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return "<unset>"
        tree = tree[part]
    return tree


def _may_change(key: str) -> bool:
    return any(key == k or (k.endswith(".") and key.startswith(k)) or key.startswith(k + ".")
               for k in RESUME_MAY_CHANGE)


def resume_changes(config: dict[str, Any], candidates: list[Path]) -> list[str]:
    """Compare this run's resolved config with the one the newest readable checkpoint was written with.

    Returns the allowed changes as phrases ("train.max_steps 300 -> 600") for the one-line note at resume;
    raises ConfigError naming the first refused key with both values. Read before anything is loaded.
    """
    saved: dict[str, Any] | None = None
    for path in candidates:
        try:
            saved = json.loads((path / RUN_CONFIG).read_text())
            break
        except (OSError, ValueError):  # damaged or unreadable: load_checkpoint reports it; compare with the next
            continue
    if saved is None:
        return []
    old, new = _flat(saved), _flat(config)
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k, "<unset>") != new.get(k, "<unset>"))
    same_clock = old.get("scheduler.clock") == new.get("scheduler.clock") == "samples"
    reference = old.get("scheduler.reference_batch") or old.get("train.batch_size")  # what the lr clock counted
    notes = []
    for key in changed:
        if any(key.startswith(other + ".") for other in changed):  # a section that was null on one side
            continue
        before, after = _get(saved, key), _get(config, key)
        if key in ("output_dir", "train.resume"):  # where the run is and how it was found: not news
            continue
        same_reference = key == "scheduler.reference_batch" and after in (None, reference)
        if _may_change(key) or (key == "train.batch_size" and same_clock) or same_reference:
            notes.append(f"{key} {before!r} -> {after!r}")
            continue
        why = "the checkpoint's weights, optimizer, lr strategy and data order were made with the old value"
        if key == "train.batch_size":
            why = "with scheduler.clock=updates the lr strategy counts updates of the old batch (the samples " \
                  "clock lets the batch change: scheduler.clock=samples from the start)"
        elif key.startswith("scheduler.") and old.get("train.max_steps") != new.get("train.max_steps"):
            why = "the lr strategy's horizon is part of its state in the checkpoint; to run longer, keep this " \
                  f"key at {before!r} (the lr then stays at its final value past it)"
        raise ConfigError(key, f"changed since the checkpoint in {candidates[0].parent} ({before!r} -> {after!r}): "
                          f"{why}; resume with {before!r}, or start a new run (train.resume=none or another "
                          "output_dir)")
    return notes
