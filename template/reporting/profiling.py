"""`train.profile: {start: 20, steps: 5}`: those updates recorded with torch.profiler: where the time goes.

CPU activity, and CUDA activity when there is a GPU, with tensor shapes and memory. Each rank writes its own
trace into `output_dir/profile/` (`rank<r>.<time>.pt.trace.json`: Perfetto and chrome://tracing open it, and
TensorBoard's profiler plugin reads the folder), rank 0 prints the operations with the most self time once, and
the trainer attaches the traces to the W&B run. The profiler only observes: the training is bit-identical to
a run without it. Off by default, and nothing is imported or measured then.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from template.config import ProfileConfig

TOP_OPS = 12


class UpdateProfiler:
    """`begin(step)` at the top of an update, `end(step)` at its bottom; records the configured window."""

    def __init__(self, window: ProfileConfig | None, output_dir: Path, rank: int, is_main: bool) -> None:
        self.first = window.start if window else 0
        self.last = window.start + window.steps - 1 if window else -1
        self.dir, self.rank, self.is_main = output_dir / "profile", rank, is_main
        self._profiler: Any = None
        self.traces: list[Path] = []

    def begin(self, step: int) -> None:
        if step != self.first:
            return
        from torch.profiler import ProfilerActivity, profile, tensorboard_trace_handler

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
        self.dir.mkdir(parents=True, exist_ok=True)
        handler = tensorboard_trace_handler(str(self.dir), worker_name=f"rank{self.rank}")
        self._profiler = profile(activities=activities, record_shapes=True, profile_memory=True,
                                 on_trace_ready=handler)
        self._profiler.start()

    def end(self, step: int) -> list[Path]:
        """After the window's last update: stop, write the trace, print the top operations; the traces written."""
        if step != self.last or self._profiler is None:
            return []
        self._profiler.stop()  # on_trace_ready writes the trace
        if self.is_main:
            sort = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
            table = self._profiler.key_averages().table(sort_by=sort, row_limit=TOP_OPS)
            print(f"profile of updates {self.first}..{self.last} (rank 0; traces in {self.dir}):\n{table}", flush=True)
        self._profiler = None
        self.traces = sorted(self.dir.glob(f"rank{self.rank}.*.pt.trace.json"))
        return self.traces
