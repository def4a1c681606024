"""Where a run is: updates attempted and applied, samples consumed, and the lr clock's position.

The lr strategies count "steps". With `scheduler.clock: updates` (the default) a step is one applied
update, as in every torch scheduler. With `scheduler.clock: samples` a step is `reference_batch` samples
of applied updates, so the lr is a function of the data seen: a job moved from 8 GPUs to 4 that halves
`train.batch_size` (and so doubles its updates) steps the strategy every other update, and warm-up ends,
and the cosine reaches its floor, after the same number of samples as before. Every step count in the
scheduler's config, and `train.max_steps`, are then counted in reference batches.

A skipped update (non-finite gradients, fp16 overflow) consumes its samples but does not move the lr
clock under either setting.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from template.config import Config, ConfigError


@dataclass
class Clock:
    batch: int  # this process's global batch (samples an update consumes)
    reference: int  # samples per lr step (= batch with the updates clock)
    by_samples: bool = False
    step: int = 0  # updates attempted, the row number of metrics.jsonl
    skipped: int = 0
    samples: int = 0  # consumed by every attempted update
    applied_samples: int = 0  # consumed by applied updates: what the samples clock counts

    @property
    def lr_steps(self) -> int:
        """The strategy's position: applied updates, or applied samples in reference batches."""
        return self.applied_samples // self.reference if self.by_samples else self.step - self.skipped

    def advance(self, applied: bool) -> range:
        """Count one update; return the lr steps it completes (none, one, or with a batch larger than
        the reference, several), each to be passed to the strategy in order."""
        before = self.lr_steps
        self.step += 1
        self.samples += self.batch
        if applied:
            self.applied_samples += self.batch
        else:
            self.skipped += 1
        return range(before + 1, self.lr_steps + 1)

    def last_step(self, total_samples: int | None, max_steps: int) -> int:
        """The update number at which the run ends: `max_steps` lr steps' worth of samples (or
        `total_samples`) consumed, whatever batch earlier processes of this run used."""
        if total_samples is None and not self.by_samples:
            return max_steps
        total = total_samples if total_samples is not None else max_steps * self.reference
        return self.step + max(0, math.ceil((total - self.samples) / self.batch))

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped, "samples": self.samples, "applied_samples": self.applied_samples,
                "reference_batch": self.reference, "batch": self.batch}


def make_clock(cfg: Config, resumed_state: dict[str, Any] | None, step: int) -> Clock:
    """This process's clock, continued from a checkpoint's state (or from `step` updates of this batch
    for a checkpoint written before samples were counted)."""
    t, s = cfg.train, cfg.scheduler
    state = resumed_state or {}
    skipped = int(state.get("skipped", 0))
    old_batch = int(state.get("batch", t.batch_size))
    samples = int(state.get("samples", step * old_batch))
    applied = int(state.get("applied_samples", (step - skipped) * old_batch))
    reference = s.reference_batch or int(state.get("reference_batch", 0)) or t.batch_size
    by_samples = s.clock == "samples"
    if by_samples and t.max_samples is not None and s.reference_batch is None and reference != t.batch_size:
        # preflight turned max_samples into max_steps with this run's batch; the checkpoint's reference differs
        raise ConfigError("scheduler.reference_batch", f"the checkpoint's lr clock counts batches of {reference} "
                          f"samples; set scheduler.reference_batch={reference} to resume with train.max_samples")
    return Clock(t.batch_size, reference if by_samples else t.batch_size, by_samples, step, skipped, samples,
                 applied)

