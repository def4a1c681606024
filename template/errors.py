"""Every error a run reports as one `error:` line, in one place: what the CLI catches and how it exits.

User errors (exit 2, nothing written): a bad config or argument (`ConfigError`, which names the dotted key),
a launch that cannot form the processes it claims (`LaunchError`). Run failures (exit 1, the newest complete
checkpoint intact): everything else below. `suggest` is the "did you mean" that every name lookup uses.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ConfigError(ValueError):
    """A bad configuration or argument: `key` is the dotted key at fault ('' for the command line)."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}" if key else problem)
        self.key = key
        self.problem = problem


class LaunchError(RuntimeError):
    """The launch does not match what the processes see; reported like a config error (exit 2)."""


class NonFiniteError(RuntimeError):
    """The loss or the weights became NaN/inf and `train.nonfinite` is `stop`."""


class DriftError(RuntimeError):
    """Replicas that should be bit-identical are not."""


class LRSyncError(RuntimeError):
    """A param group's lr differs between ranks (`distributed.sync_check_action: error`)."""


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (disk full, read-only, no permission); the older ones are intact."""


class HookError(RuntimeError):
    """A hook raised: the message names the hook and the event."""


class MemoryLimitError(RuntimeError):
    """An `auto` micro-batch ran out of memory and could not be halved and redone (runtime/batch_size.py)."""


USER_ERRORS: tuple[type[Exception], ...] = (ConfigError, LaunchError)  # exit 2
RUN_ERRORS: tuple[type[Exception], ...] = (NonFiniteError, DriftError, LRSyncError, CheckpointWriteError,
                                           HookError, MemoryLimitError)  # exit 1


def suggest(word: str, options: Iterable[str]) -> str:
    """" (did you mean 'x'?)" for the closest of `options` to a mistyped `word`, or ''."""
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def describe(exc: BaseException) -> str:
    """An exception as one line: torch's own errors span several lines and name no type."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if not isinstance(exc, ValueError):  # a ValueError's message speaks for itself; others say what they are
        text = f"{type(exc).__name__}: {text}"
    return text if len(text) <= 300 else text[:297] + "..."
