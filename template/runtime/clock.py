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

from template.config import Config
from template.errors import ConfigError


@dataclass
class Clock:
    batch: int  # this process's global batch (samples an update consumes)
    reference: int  # samples per lr step (= batch with the updates clock)
    by_samples: bool = False
    step: int = 0  # updates attempted, the row number of metrics.jsonl
    skipped: int = 0
    samples: int = 0  # consumed by every attempted update
    applied_samples: int = 0  # consumed by applied updates: what the samples clock counts
    reference_set: bool = False  # scheduler.reference_batch was given (else a checkpoint's reference wins)
    max_samples_set: bool = False  # train.max_samples was given (preflight turned it into max_steps)

    @classmethod
    def from_config(cls, config: Config) -> Clock:
        t, s = config.train, config.scheduler
        by_samples = s.clock == "samples"
        reference = (s.reference_batch or t.batch_size) if by_samples else t.batch_size
        return cls(t.batch_size, reference, by_samples, reference_set=s.reference_batch is not None,
                   max_samples_set=t.max_samples is not None)

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
        return {"step": self.step, "skipped": self.skipped, "samples": self.samples,
                "applied_samples": self.applied_samples, "reference_batch": self.reference}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint's clock; the batch may differ (the samples clock counts samples)."""
        self.step, self.skipped = int(state["step"]), int(state["skipped"])
        self.samples, self.applied_samples = int(state["samples"]), int(state["applied_samples"])
        if not self.by_samples or self.reference_set:
            return
        reference = int(state["reference_batch"])
        if self.max_samples_set and reference != self.batch:
            # preflight turned max_samples into max_steps with this run's batch; the checkpoint's reference differs
            raise ConfigError("scheduler.reference_batch", f"the checkpoint's lr clock counts batches of {reference} "
                              f"samples; set scheduler.reference_batch={reference} to resume with train.max_samples")
        self.reference = reference
