"""lr strategies: one contract (`LRSchedule`), four interchangeable kinds chosen by `scheduler.strategy`.

Importing this package registers the shipped strategies; add one with a new module that registers
into `STRATEGIES` or into the per-kind registries below, and list it under `imports:` in the config.
Hugging Face's named schedules (`linear`, `cosine`, ...) are formulas in `named.py`, usable from both the
`lambda` and `subclass` strategies; `check_schedule` is what the trainer asks before update 1.
"""

from template.schedules.base import STRATEGIES, LRSchedule, build_schedule, needs_metric
from template.schedules.builtin import build_torch_scheduler
from template.schedules.checks import check_schedule
from template.schedules.lambdas import LAMBDAS
from template.schedules.manual import MANUAL_STRATEGIES, ManualHalvingLR, ManualLR, ManualPlateauLR
from template.schedules.named import NAMED_SCHEDULES, Formula, named_schedule
from template.schedules.subclass import SUBCLASS_SCHEDULERS, HalvingLR, NamedLR, WarmupCosineLR

__all__ = [
    "LAMBDAS", "MANUAL_STRATEGIES", "NAMED_SCHEDULES", "STRATEGIES", "SUBCLASS_SCHEDULERS", "Formula", "HalvingLR",
    "LRSchedule", "ManualHalvingLR", "ManualLR", "ManualPlateauLR", "NamedLR", "WarmupCosineLR", "build_schedule",
    "build_torch_scheduler", "check_schedule", "named_schedule", "needs_metric",
]
