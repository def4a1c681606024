"""Make chosen updates overflow in fp16: `$FT_OVERFLOW_AT=3,7` scales those updates' gradients by 1e30.

The loss value is unchanged (`l + (1e30*l - (1e30*l).detach())` is `l`, with 1e30 + 1 times its gradient),
but the fp16 backward overflows, so the GradScaler skips the optimizer step (and lowers its scale), as a
real overflow would; every other update is unchanged. Updates are counted by calls to
UpdateStep, i.e. attempted updates, 1-based. Without FT_OVERFLOW_AT the module does nothing.
"""

from __future__ import annotations

import os

from template.update import UpdateStep

_original = UpdateStep.__call__
AT = {int(u) for u in (os.environ.get("FT_OVERFLOW_AT") or "").split(",") if u.strip()}
_attempt = 0


def _huge_gradient(loss):  # type: ignore[no-untyped-def]
    return loss + (loss * 1e30 - (loss * 1e30).detach())


def _overflowing(self: UpdateStep, batches, want_norm: bool):  # type: ignore[no-untyped-def]
    global _attempt
    _attempt += 1
    if _attempt not in AT:
        return _original(self, batches, want_norm)
    loss_fn = self.loss_fn
    self.loss_fn = lambda y, target: _huge_gradient(loss_fn(y, target))  # type: ignore[method-assign,assignment]
    try:
        return _original(self, batches, want_norm)
    finally:
        self.loss_fn = loss_fn


if AT and UpdateStep.__call__ is _original:
    UpdateStep.__call__ = _overflowing  # type: ignore[method-assign]
