"""The MLP's code changed under its config: `hidden` is doubled inside the model (a fork edited the class).
The config equals the checkpoint's, so only the weights' shapes can tell the checkpoint does not fit."""

from __future__ import annotations

from template.models import MLP

_init = MLP.__init__


def _wider(self: MLP, in_features: int = 8, hidden: int = 64, depth: int = 2, out_features: int = 1) -> None:
    _init(self, in_features, hidden * 2, depth, out_features)


MLP.__init__ = _wider  # type: ignore[method-assign]
