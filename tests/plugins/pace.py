"""Slow every optimizer update down by `$FT_PACE_S` seconds, so that a test can signal or kill a run mid-way.

Timing only: the update itself is unchanged (same ops, same results), so a paced run and an unpaced
run of the same config write the same weights and metrics. Without FT_PACE_S the module does nothing.
"""

from __future__ import annotations

import os
import time

from template.trainer import UpdateStep

_original = UpdateStep.__call__
PACE_S = float(os.environ.get("FT_PACE_S") or 0)


def _paced(self: UpdateStep, batches, want_norm: bool):  # type: ignore[no-untyped-def]
    time.sleep(PACE_S)
    return _original(self, batches, want_norm)


if PACE_S > 0 and UpdateStep.__call__ is _original:
    UpdateStep.__call__ = _paced  # type: ignore[method-assign]
