"""Confidence intervals for the benchmark's ratios, and PASS / FAIL / UNDECIDED verdicts against a target.

Each fresh process runs at its own speed: processes of the same loop spread by ~13% in updates/s on a
quiet 2-core machine (coefficient of variation; CPU time tracks wall time; neither pinning to a core nor
a fixed address layout reduces it) and by 40-50% while other jobs load it (README, Benchmark). A ratio of
one repeat is therefore one draw, and a median of a few draws cannot tell 0.9x from 1.1x. So every ratio
comes with an interval, and a target is decided only when the interval is on one side of it.

The interval: a percentile bootstrap of the median of the per-repeat paired ratios (trainer's rate /
reference's rate in the same repeat). Why paired ratios: the two runs of a pair ran back to back (A/B
alternating), so a slow spell of the machine that hits both cancels in their ratio, which the median of
each side's rates would not cancel; why the median: it is the benchmark's headline ratio already (the
point estimate is inside its own interval), and one process landing in a slow spell moves it little.
The resampling uses a fixed seed, so the same measurements always give the same interval. Below
MIN_SAMPLES pairs there is no interval: the bootstrap interval of a median of 3 or 4 values is their
range, which holds the true median only 75-88% of the time, not 95%.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

CONFIDENCE = 0.95
RESAMPLES = 10_000
SEED = 0
MIN_SAMPLES = 5  # the range of 5 values holds their median with 94% probability; the percentile CI matches it

PASS, FAIL, UNDECIDED = "PASS", "FAIL", "UNDECIDED"


def median_ci(values: Sequence[float], confidence: float = CONFIDENCE, resamples: int = RESAMPLES,
              seed: int = SEED) -> tuple[float, float] | None:
    """Percentile-bootstrap interval of the median of `values`; None when there are too few to tell."""
    if len(values) < MIN_SAMPLES:
        return None
    x = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    medians = np.median(x[rng.integers(0, len(x), size=(resamples, len(x)))], axis=1)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(medians, [alpha, 1 - alpha])
    return float(lo), float(hi)


def paired_ratios(a: Sequence[float], b: Sequence[float]) -> list[float]:
    """a[i] / b[i]: the two sides of each pair ran back to back."""
    return [x / y for x, y in zip(a, b, strict=True)]


def ratio_ci(a: Sequence[float], b: Sequence[float]) -> tuple[float, float] | None:
    """Interval of the median of the paired ratios a[i] / b[i] (see the module's docstring for why)."""
    return median_ci(paired_ratios(a, b))


def verdict(ci: tuple[float, float] | Sequence[float] | None, op: str, bound: float) -> str:
    """PASS when the whole interval meets the target, FAIL when none of it does, UNDECIDED otherwise."""
    if ci is None:
        return UNDECIDED
    lo, hi = ci
    if op == ">=":
        return PASS if lo >= bound else FAIL if hi < bound else UNDECIDED
    if op == "<=":
        return PASS if hi <= bound else FAIL if lo > bound else UNDECIDED
    raise ValueError(f"unknown comparison {op!r}")


def target(name: str, value: float, op: str, bound: float, cross_check: float, cross_check_is: str,
           ci: tuple[float, float] | None = None, samples: int | None = None) -> dict[str, Any]:
    """One row of the targets table (and of the JSON's `targets`).

    With `samples` (the pairs behind `value`), the verdict comes from the interval `ci` (None: too few
    pairs, UNDECIDED). Without, `value` is exact (a count, not a draw) and decides alone.
    """
    decided = verdict(ci, op, bound) if samples is not None else verdict((value, value), op, bound)
    return {"target": name, "value": value, "bound": f"{op} {bound:g}", "pass": decided == PASS, "verdict": decided,
            "ci": list(ci) if ci else None, "samples": samples, "cross_check": cross_check,
            "cross_check_is": cross_check_is}


class Repeats:
    """`minimum` repeats, then more while the answer is still undecided and the extra ones fit `budget_s`.

    `while repeats.more(undecided): ...` runs one repeat per pass; `repeats.count` is the repeats begun.
    An extra repeat starts only if the time spent on extra repeats so far plus the mean repeat's time
    stays within the budget, so a section overruns `--budget-s` by at most one repeat's estimate.
    """

    def __init__(self, minimum: int, budget_s: float) -> None:
        self.minimum, self.budget_s = minimum, budget_s
        self.count = 0
        self._durations: list[float] = []
        self._last = self._extra_start = 0.0

    def more(self, undecided: Callable[[], bool] = lambda: False) -> bool:
        now = time.perf_counter()
        if self.count:
            self._durations.append(now - self._last)
        self._last = now
        if self.count < self.minimum:
            self.count += 1
            return True
        if self.count == self.minimum:
            self._extra_start = now
        estimate = statistics.mean(self._durations) if self._durations else 0.0
        if self.budget_s > 0 and undecided() and now - self._extra_start + estimate <= self.budget_s:
            self.count += 1
            return True
        return False

    def label(self) -> str:
        """`3/5` while within the minimum, `6 (extra)` after."""
        return f"{self.count}/{self.minimum}" if self.count <= self.minimum else f"{self.count} (extra)"


def interval(ci: Sequence[float] | None) -> str:
    """`[0.93, 1.08]`, or `[n/a]` when there were too few repeats for one."""
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "[n/a]"


def spread(values: Sequence[float]) -> float:
    """Coefficient of variation (sample standard deviation / mean): how far one process is from the next."""
    return statistics.stdev(values) / statistics.mean(values) if len(values) > 1 else 0.0
