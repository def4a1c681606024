"""Peak memory per log window, for every training row: the number to watch before an out-of-memory error.

On CUDA: the caching allocator's peak allocated and reserved bytes since the last row (its peak counters are
reset after each row). On CPU: the process's peak resident set size since the last row, from Linux's VmHWM,
which writing 5 to /proc/self/clear_refs resets; where that is not available (not Linux), the peak over the
whole process so far (`getrusage`). The trainer takes the maximum over ranks: the rank nearest its limit.
"""

from __future__ import annotations

import resource
import sys
from collections.abc import Callable
from pathlib import Path

import torch

GB = 1 << 30
STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")


def _vm_hwm_bytes() -> int | None:
    try:
        for line in STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    except OSError:
        return None
    return None


class PeakMemory:
    """`window()` -> {key: GiB} of the peaks since the previous call, then resets them."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.device = device
        self.resettable = not self.cuda and CLEAR_REFS.exists() and _vm_hwm_bytes() is not None
        self.run_peak: dict[str, float] = {}  # this rank's own peaks over the run's windows
        self.reset()

    def reset(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.resettable:
            try:
                CLEAR_REFS.write_text("5")
            except OSError:  # a container that forbids it: fall back to the process's peak
                self.resettable = False

    def window(self, reduce_max: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, float]:
        """The peaks since the last call (the max over ranks through `reduce_max`, a collective, if given)."""
        if self.cuda:
            peaks = {"memory/max_allocated_gb": torch.cuda.max_memory_allocated(self.device) / GB,
                     "memory/max_reserved_gb": torch.cuda.max_memory_reserved(self.device) / GB}
        else:
            hwm = _vm_hwm_bytes() if self.resettable else None
            if hwm is None:  # ru_maxrss: kB on Linux, bytes on macOS
                hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
            peaks = {"memory/max_rss_gb": hwm / GB}
        for key, value in peaks.items():
            self.run_peak[key] = max(self.run_peak.get(key, 0.0), value)
        self.reset()
        if reduce_max is not None:
            values = reduce_max(torch.tensor(list(peaks.values()), dtype=torch.float64, device=self.device)).tolist()
            peaks = dict(zip(peaks, values, strict=True))
        return peaks


def per_rank(memory: PeakMemory, state_bytes: int) -> dict[str, list[float]]:
    """Each rank's run peak and the bytes it holds of parameters and optimizer state (its shards when
    sharded: about 1/N of the whole), in rank order: a collective, every rank gets the same lists."""
    from accelerate.utils import gather_object

    rows = gather_object([{**memory.run_peak, "memory/state_bytes": state_bytes}])
    return {f"{key}_per_rank": [row.get(key, 0) for row in rows] for key in rows[0]}
