"""bench/stats.py: a ratio's interval and its verdict, on samples whose answer is known."""

from __future__ import annotations

import random

import pytest

from bench.stats import FAIL, MIN_SAMPLES, PASS, UNDECIDED, Repeats, median_ci, ratio_ci, target, verdict


def noisy(center: float, spread: float, n: int, seed: int) -> list[float]:
    """`n` rates around `center`, each off by up to ±spread (fresh processes run at their own speed)."""
    rng = random.Random(seed)
    return [center * (1 + rng.uniform(-spread, spread)) for _ in range(n)]


def test_a_clear_pass():
    raw = noisy(1000, 0.05, 10, seed=1)
    trainer = noisy(1200, 0.05, 10, seed=2)
    ci = ratio_ci(trainer, raw)
    assert ci is not None and 1.05 < ci[0] <= ci[1] < 1.35
    assert verdict(ci, ">=", 0.95) == PASS


def test_a_clear_fail():
    raw = noisy(1000, 0.05, 10, seed=3)
    trainer = noisy(700, 0.05, 10, seed=4)
    assert verdict(ratio_ci(trainer, raw), ">=", 0.95) == FAIL


def test_an_ambiguous_sample_is_undecided():
    # the case: ±25% from process to process, a true ratio of 0.95 right at the target
    raw = noisy(950, 0.25, 10, seed=5)
    trainer = noisy(900, 0.25, 10, seed=6)
    ci = ratio_ci(trainer, raw)
    assert ci is not None and ci[0] < 0.95 < ci[1]
    assert verdict(ci, ">=", 0.95) == UNDECIDED


def test_the_interval_is_reproducible_and_holds_the_median():
    values = noisy(1.0, 0.2, 9, seed=7)
    ci = median_ci(values)
    assert ci == median_ci(values)  # fixed seed
    assert ci is not None and ci[0] <= sorted(values)[4] <= ci[1]


def test_too_few_repeats_decide_nothing():
    assert median_ci([1.2] * (MIN_SAMPLES - 1)) is None
    assert target("t", 1.2, ">=", 0.95, 1.2, "cpu", ci=None, samples=1)["verdict"] == UNDECIDED


@pytest.mark.parametrize(("ci", "op", "bound", "expected"), [
    ((1.01, 1.10), ">=", 1.0, PASS), ((0.90, 0.99), ">=", 1.0, FAIL), ((0.99, 1.01), ">=", 1.0, UNDECIDED),
    ((0.005, 0.01), "<=", 0.02, PASS), ((0.03, 0.05), "<=", 0.02, FAIL), ((0.01, 0.03), "<=", 0.02, UNDECIDED),
])
def test_verdict_reads_the_interval_against_the_target(ci, op, bound, expected):
    assert verdict(ci, op, bound) == expected


def test_an_exact_count_decides_alone():
    row = target("syncs", 0, "<=", 0, 300, "updates")
    assert row["verdict"] == PASS and row["pass"] is True and row["ci"] is None


def test_extra_repeats_stop_when_decided_or_out_of_budget():
    def count(repeats: Repeats, undecided) -> int:
        n = 0
        while repeats.more(undecided):
            n += 1
        return n

    assert count(Repeats(3, budget_s=0), lambda: True) == 3  # no budget: the minimum only
    assert count(Repeats(2, budget_s=60), lambda: False) == 2  # decided: no extras
    decided_at = iter([True, True, False])
    assert count(Repeats(2, budget_s=60), lambda: next(decided_at)) == 4
