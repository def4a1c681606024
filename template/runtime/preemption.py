"""Graceful stop on SIGTERM / SIGUSR1 (what schedulers such as SLURM send before they kill a job).

The handler only sets a flag; the trainer finishes the update in flight, checkpoints and exits. Under
DDP the ranks must agree on the update at which they stop (a rank that stops alone leaves the others
waiting in a collective forever), so the flag is max-reduced over ranks at a fixed cadence.
"""

from __future__ import annotations

import contextlib
import signal
from types import FrameType

from accelerate import Accelerator

from template.runtime.distributed import any_rank

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopRequest:
    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, object] = {}
        for sig in SIGNALS:
            with contextlib.suppress(ValueError):  # not the main thread: no handler, no graceful stop
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signal = signum

    def agreed(self, accelerator: Accelerator) -> bool:
        """True on every rank if any rank was signalled (a collective when there are several ranks)."""
        return any_rank(accelerator, self.signal is not None)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
