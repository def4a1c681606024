"""Hooks at the loop's events (`hooks: [{name, kwargs}]` in the config); see `base.py` for the events.

Importing this package registers the shipped hooks, `ema`, `early_stopping` and `sample_text`; a fork
registers its own into `HOOKS` in a module listed under `imports:`.
"""

from template.errors import HookError
from template.hooks.base import HOOKS, Hook, HookContext, Hooks
from template.hooks.early_stopping import EarlyStopping
from template.hooks.ema import EMA
from template.hooks.sample_text import SampleText

__all__ = ["EMA", "HOOKS", "EarlyStopping", "Hook", "HookContext", "HookError", "Hooks", "SampleText"]
