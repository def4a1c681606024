"""Record, on EVERY rank, the lr each update used and the metric the lr strategy was fed.

Rank 0 alone writes metrics.jsonl, so it cannot show that the other ranks agree; this probe wraps
`LRSchedule.after_update` (called once per applied update on every rank) and appends one JSON row per
update to `$LR_PROBE_DIR/rank<r>.jsonl`: {"step", "lrs" (what the update used), "metric"}. Observation
only: the training itself is unchanged. Without LR_PROBE_DIR the module does nothing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from template.schedules.base import LRSchedule

_original = LRSchedule.after_update


def _rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def _probed(self: LRSchedule, update: int, metrics=None) -> None:
    metric = None
    if self.needs_metric and metrics is not None and self.monitor in metrics:
        metric = float(metrics[self.monitor])
    row = {"step": update, "lrs": self.lrs(), "metric": metric}
    with (Path(os.environ["LR_PROBE_DIR"]) / f"rank{_rank()}.jsonl").open("a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
    _original(self, update, metrics)


if os.environ.get("LR_PROBE_DIR") and LRSchedule.after_update is _original:
    LRSchedule.after_update = _probed  # type: ignore[method-assign]
