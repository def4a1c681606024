"""Name -> factory registries: how a config selects a model, dataset, loss, optimizer or lr strategy.

A forker adds a component by decorating it with `@MODELS.register("name")` (or any other registry)
in a module listed under `imports:` in the config (or imported by the package); the trainer never changes.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from template.errors import ConfigError, describe, suggest

T = TypeVar("T")


class Registry(Generic[T]):
    """A named table of factories; lookups of unknown names fail as config errors with a suggestion."""

    def __init__(self, kind: str, config_key: str) -> None:
        self.kind = kind
        self.config_key = config_key
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(item: T) -> T:
            if name in self._items and self._items[name] is not item:
                raise ValueError(f"{self.kind} '{name}' is already registered")
            self._items[name] = item
            return item

        return add

    def add(self, name: str, item: T) -> None:
        self.register(name)(item)

    def get(self, name: str) -> T:
        if name not in self._items:
            raise ConfigError(
                self.config_key,
                f"unknown {self.kind} '{name}'{suggest(name, list(self._items))}; "
                f"registered: {', '.join(sorted(self._items))} (a {self.kind} of your own registers when its module "
                "is imported: list the module under `imports:` in the config)",
            )
        return self._items[name]

    def build(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Look up `name` and call it; arguments its signature rejects are reported as a config error."""
        factory: Any = self.get(name)
        section = self.config_key.rsplit(".", 1)[0]
        try:
            inspect.signature(factory).bind(*args, **kwargs)
        except TypeError as exc:
            raise ConfigError(f"{section}.kwargs", f"bad arguments for {self.kind} '{name}': {exc}") from None
        except ValueError:  # builtins without a signature: let the call itself decide
            pass
        try:
            return factory(*args, **kwargs)
        except ConfigError:
            raise
        except Exception as exc:  # whatever a constructor raises, it was given these arguments by the config
            raise ConfigError(f"{section}.kwargs", f"{self.kind} '{name}': {describe(exc)}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))
