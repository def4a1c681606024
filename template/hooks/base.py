"""Hooks: behaviour a fork adds at the loop's events without editing the trainer (`hooks:` in the config).

A hook is a class registered by name in `HOOKS`, built with its `kwargs`, that overrides the events it
needs. The loop stays readable top to bottom; hooks are the one extension point beside it:

Events (every rank runs every event, so all ranks must call the same collectives in it):

- `check(cfg, model)`: once, before any work (no process group yet, the model on the CPU): raise a
  `ConfigError` for a config or model the hook cannot serve, so it is one `error:` line and exit 2 rather
  than a failure mid-run. No collectives.
- `after_update(ctx)`: after each applied optimizer update and its lr step. Collectives allowed.
- `after_evaluate(ctx, metrics)`: after an evaluation; may add `eval/...` values to `metrics`, e.g. from
  `ctx.evaluate()` (a collective: `eval/loss` and every `eval.metrics` value). Collectives allowed. A hook
  that adds keys names them in `eval_keys`, so a monitor may read them (preflight refuses unknown ones).
- `on_log(ctx, row)`: before a training row is written; values it adds reach metrics.jsonl and W&B.
- `stop_reason(ctx)`: after each update, a reason to end the run now, or None; it must answer the same on
  every rank (decide from values that are equal everywhere, or agree through a collective).
- `state_dict()` / `load_state_dict(state)`: with each checkpoint / on resume. No collectives.
- `on_end(ctx, summary)`: after training, before summary.json; may add to `summary` and write files
  (only where `ctx.is_main_process`). Collectives allowed.

Every rank runs every event, so a hook that keeps weights (EMA) keeps equal replicas. A hook's state is
saved with each checkpoint (plain data and tensors: it loads with `weights_only=True`), so exact resume
holds with hooks on. An exception in a hook stops the run with one line naming the hook and the event.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from torch import nn

from template.config import Config, HookConfig
from template.errors import ConfigError, HookError, describe
from template.registry import Registry


@dataclass
class HookContext:
    """What the loop hands every event. `step` is the update just finished (1-based)."""

    accelerator: Accelerator
    model: nn.Module  # the prepared model (DDP wrapper included); `plain` is the user's module
    plain: nn.Module
    optimizer: Any
    output_dir: Path
    # eval/loss and the eval.metrics values of the current weights (a collective), if the run evaluates
    evaluate: Callable[[], dict[str, float]] | None
    step: int = 0

    @property
    def is_main_process(self) -> bool:
        return self.accelerator.is_main_process


class Hook:
    """Override the events you need; every default does nothing."""

    def check(self, cfg: Config, model: nn.Module) -> None: ...

    def after_update(self, ctx: HookContext) -> None: ...

    def after_evaluate(self, ctx: HookContext, metrics: dict[str, float]) -> None: ...

    def eval_keys(self, produced: list[str]) -> list[str]:
        """The `eval/...` keys `after_evaluate` adds, given those the trainer's evaluation `produced`."""
        return []

    def on_log(self, ctx: HookContext, row: dict[str, Any]) -> None: ...

    def stop_reason(self, ctx: HookContext) -> str | None:
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def on_end(self, ctx: HookContext, summary: dict[str, Any]) -> None: ...


HOOKS: Registry[type[Hook]] = Registry("hook", "hooks.name")


def _of_entry(exc: ConfigError, i: int) -> ConfigError:
    """Name the list entry: hooks.0.kwargs, not hooks.kwargs."""
    key = exc.key.replace("hooks.", f"hooks.{i}.", 1) if exc.key.startswith("hooks.") else exc.key
    return ConfigError(key, exc.problem)


class Hooks:
    """The configured hooks, called in config order; names each failure."""

    def __init__(self, configs: list[HookConfig]) -> None:
        self.named: list[tuple[str, Hook]] = []
        for i, spec in enumerate(configs):
            try:
                self.named.append((spec.name, HOOKS.build(spec.name, **spec.kwargs)))
            except ConfigError as exc:
                raise _of_entry(exc, i) from None

    def __bool__(self) -> bool:
        return bool(self.named)

    def _call(self, event: str, *args: Any) -> list[Any]:
        results = []
        for name, hook in self.named:
            try:
                results.append(getattr(hook, event)(*args))
            except Exception as exc:
                raise HookError(f"hook '{name}' failed in {event}: {describe(exc)}") from exc
        return results

    def check(self, cfg: Config, model: nn.Module) -> None:
        for i, (name, hook) in enumerate(self.named):
            try:
                hook.check(cfg, model)
            except ConfigError as exc:
                raise _of_entry(exc, i) from None
            except Exception as exc:
                raise HookError(f"hook '{name}' failed in check: {describe(exc)}") from exc

    def after_update(self, ctx: HookContext) -> None:
        self._call("after_update", ctx)

    def after_evaluate(self, ctx: HookContext, metrics: dict[str, float]) -> None:
        self._call("after_evaluate", ctx, metrics)

    def on_log(self, ctx: HookContext, row: dict[str, Any]) -> None:
        self._call("on_log", ctx, row)

    def eval_keys(self, produced: list[str]) -> list[str]:
        return [key for _, hook in self.named for key in hook.eval_keys(produced)]

    def monitors(self) -> list[tuple[int, str, str | None]]:
        """(list index, monitored key, mode) of every hook that monitors a value (a `monitor` attribute)."""
        found = [(i, getattr(hook, "monitor", None), getattr(hook, "mode", None))
                 for i, (_, hook) in enumerate(self.named)]
        return [(i, monitor, mode) for i, monitor, mode in found if isinstance(monitor, str)]

    def stop_reason(self, ctx: HookContext) -> str | None:
        return next((reason for reason in self._call("stop_reason", ctx) if reason), None)

    def state_dict(self) -> dict[str, Any]:
        return {f"{i}:{name}": state for i, ((name, _), state) in enumerate(zip(self.named, self._call("state_dict"),
                                                                                strict=True))}

    def load_state_dict(self, states: dict[str, Any]) -> None:
        for i, (name, hook) in enumerate(self.named):
            state = states.get(f"{i}:{name}")
            if state is not None:
                try:
                    hook.load_state_dict(state)
                except Exception as exc:
                    raise HookError(f"hook '{name}' failed in load_state_dict: {describe(exc)}") from exc

    def on_end(self, ctx: HookContext, summary: dict[str, Any]) -> None:
        self._call("on_end", ctx, summary)
