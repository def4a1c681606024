"""One live training per output_dir: two runs there would interleave checkpoints and metrics rows.

Rank 0 holds an exclusive `flock` on `output_dir/.lock` for the whole run and writes its host and pid
into it. The kernel drops the lock when the process dies (kill -9 included), so a lock left by a dead run
is never in the way: the next run takes it over and says whose it was. A second run while the first is
alive stops at once with a config error naming the holder. Taking the lock is also the check that the
output_dir can be created and written, before any training.
"""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path
from typing import Any, TextIO

from template.errors import ConfigError

LOCK_FILE = ".lock"


class RunLock:
    def __init__(self, output_dir: Path) -> None:
        self.path = Path(output_dir) / LOCK_FILE
        self._file: TextIO | None = None

    def acquire(self) -> str | None:
        """Take the lock; return a note when it takes over from a dead run. Raises ConfigError."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle = self.path.open("a+", encoding="utf-8")
        except OSError as exc:
            raise ConfigError("output_dir", f"cannot create or write {self.path.parent}: "
                                            f"{exc.strerror or exc}") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise ConfigError("output_dir", f"{self.path.parent} is in use by a running training ({holder}); "
                                            "wait for it, stop it, or choose another output_dir") from None
        handle.seek(0)
        previous = handle.read().strip()
        me = f"host {socket.gethostname()} pid {os.getpid()}"
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(me + "\n")
            handle.flush()
        except OSError as exc:
            handle.close()
            raise ConfigError("output_dir", f"cannot write {self.path}: {exc.strerror or exc}") from None
        self._file = handle
        if previous and previous != me:
            return f"note: took over the lock of a run that is no longer running ({previous}) in {self.path.parent}"
        return None

    def release(self) -> None:
        """Empty the file and drop the lock (the file stays: unlinking it could let two runs lock two files)."""
        if self._file is None:
            return
        try:
            self._file.seek(0)
            self._file.truncate()
        except OSError:
            pass  # a full disk must not hide the run's own error; the lock itself goes with the descriptor
        fcntl.flock(self._file, fcntl.LOCK_UN)
        self._file.close()
        self._file = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()
