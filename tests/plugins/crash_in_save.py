"""SIGKILL this process in the middle of writing a checkpoint: `$FT_CRASH=<stage>:<update>`.

- `save_state:<u>`: while checkpoint `u` is being written, after Accelerate wrote its files into the
  hidden `.tmp-step_*` directory, leave it half-written (model.safetensors cut in half, optimizer.bin
  missing, no trainer.pt) and die, as a kill or a power cut in the middle of the write would;
- `save_sharded:<u>`: the same for a sharded run (`distributed.shard: fsdp2`): after every rank wrote its
  shards of checkpoint `u` (torch.distributed.checkpoint), the first shard file is cut in half and the
  process dies;
- `rename:<u>`: everything of checkpoint `u` is written, trainer.pt included, and the process dies just
  before the `.tmp-step_*` directory is renamed into place.

- `ENOSPC:<u>`, `EROFS:<u>`, `EACCES:<u>`: the disk fills up (becomes read-only, refuses permission)
  while checkpoint `u` is being written: Accelerate's files are half there, then the write raises that
  OSError, as the file system would. The process lives on to handle it.

Only the main process writes trainer.pt and renames, so use it on 1-process runs (or expect rank 0 to
be the one that dies). `$FT_CRASH_RANK=<r>` makes only rank r fail an ENOSPC/EROFS/EACCES write (its own
files; rank 0 writes the model). Without FT_CRASH the module does nothing.
"""

from __future__ import annotations

import errno
import os
import pathlib
import signal
from pathlib import Path

from accelerate import Accelerator

from template.runtime import sharding

_save_state = Accelerator.save_state
_save_sharded = sharding.save_sharded
_rename = pathlib.Path.rename
STAGE, _, STEP = (os.environ.get("FT_CRASH") or "").partition(":")
TARGET = f".tmp-step_{int(STEP):08d}" if STEP else None


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _half_written(output_dir: str | None) -> Path | None:
    """After Accelerate wrote checkpoint TARGET's files: cut its model file in half, return the directory."""
    if output_dir is None or Path(output_dir).name != TARGET:
        return None
    model = Path(output_dir) / "model.safetensors"
    with model.open("r+b") as f:
        f.truncate(model.stat().st_size // 2)
    return Path(output_dir)


def _crashing_save_state(self: Accelerator, output_dir: str | None = None, *args, **kwargs):  # type: ignore[no-untyped-def]
    result = _save_state(self, output_dir, *args, **kwargs)
    if (written := _half_written(output_dir)) is not None:
        (written / "optimizer.bin").unlink()
        _die()
    return result


def _failing_save_state(self: Accelerator, output_dir: str | None = None, *args, **kwargs):  # type: ignore[no-untyped-def]
    result = _save_state(self, output_dir, *args, **kwargs)
    only = os.environ.get("FT_CRASH_RANK")
    if only is not None:
        if self.process_index == int(only) and output_dir is not None and Path(output_dir).name == TARGET:
            code = getattr(errno, STAGE)
            raise OSError(code, os.strerror(code), str(Path(output_dir) / f"random_states_{only}.pkl"))
        return result
    if (written := _half_written(output_dir)) is not None:
        code = getattr(errno, STAGE)
        raise OSError(code, os.strerror(code), str(written / "optimizer.bin"))
    return result


def _crashing_save_sharded(directory: Path, *args, **kwargs):  # type: ignore[no-untyped-def]
    _save_sharded(directory, *args, **kwargs)
    if directory.name == TARGET:
        first = sorted((directory / sharding.SHARDED_DIR).glob("*.distcp"))[0]
        with first.open("r+b") as f:
            f.truncate(first.stat().st_size // 2)
        _die()


def _crashing_rename(self: pathlib.Path, target):  # type: ignore[no-untyped-def]
    if self.name == TARGET:
        _die()
    return _rename(self, target)


if STAGE == "save_state" and Accelerator.save_state is _save_state:
    Accelerator.save_state = _crashing_save_state  # type: ignore[method-assign]
elif STAGE == "save_sharded" and sharding.save_sharded is _save_sharded:
    sharding.save_sharded = _crashing_save_sharded
elif STAGE == "rename" and pathlib.Path.rename is _rename:
    pathlib.Path.rename = _crashing_rename  # type: ignore[method-assign]
elif STAGE in ("ENOSPC", "EROFS", "EACCES") and Accelerator.save_state is _save_state:
    Accelerator.save_state = _failing_save_state  # type: ignore[method-assign]
elif STAGE:
    raise ValueError("FT_CRASH must be save_state|save_sharded|rename|ENOSPC|EROFS|EACCES:<update>, got "
                     f"{os.environ['FT_CRASH']!r}")
