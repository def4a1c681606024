"""lr strategies: one contract (`LRSchedule`), four interchangeable kinds chosen by `scheduler.strategy`.

Importing this package registers the shipped strategies; add one with a new module that registers
into `STRATEGIES` or into the per-kind registries below, and list it under `imports:` in the config.
"""

from template.schedules.base import STRATEGIES, LRSchedule, build_schedule, needs_metric
from template.schedules.builtin import build_torch_scheduler
from template.schedules.lambdas import LAMBDAS
from template.schedules.manual import MANUAL_STRATEGIES, ManualHalvingLR, ManualLR, ManualPlateauLR
from template.schedules.subclass import SUBCLASS_SCHEDULERS, HalvingLR, WarmupCosineLR

__all__ = [
    "LAMBDAS", "MANUAL_STRATEGIES", "STRATEGIES", "SUBCLASS_SCHEDULERS", "HalvingLR", "LRSchedule",
    "ManualHalvingLR", "ManualLR", "ManualPlateauLR", "WarmupCosineLR", "build_schedule", "build_torch_scheduler",
    "needs_metric",
]
