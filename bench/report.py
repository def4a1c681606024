"""The printed report, the targets table and the JSON's flat `ratios`, gathered from the sections' hooks.

Targets: trainer >= 0.95x raw (small) and >= 0.98x raw (mid), faster than plain Accelerate and
Lightning on both; trainer >= 0.98x the nanoGPT loop's tokens/s with compile off and on;
RandomScaledSGD.step <= 1.0x SGD(foreach=True); lr sync check and W&B logging each <= 2% of the update
time at the default cadence.
"""

from __future__ import annotations

from typing import Any

from bench.sections import NAMES, hook
from bench.stats import interval


def ran(results: dict[str, Any]) -> list[str]:
    """The sections in `results`, in the registry's order."""
    return [name for name in NAMES if name in results]


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    return [t for name in ran(results) if (fn := hook(name, "targets")) for t in fn(results)]


def ratios(results: dict[str, Any]) -> dict[str, float]:
    return {k: v for name in ran(results) if (fn := hook(name, "ratios")) for k, v in fn(results).items()}


def print_report(results: dict[str, Any]) -> None:
    meta = results["meta"]
    print(f"\n== benchmark, {meta['date']}: {meta['device']} ({meta['cpu_model']}, {meta['cpu_count']} cores), "
          f"torch {meta['torch']}, "
          f"{meta['threads']} thread(s), at least {meta['repeats']} repeat(s) (up to {meta['budget_s']:g} s more per "
          f"section while undecided), {meta['worker_processes']} worker processes; load average "
          f"{meta['loadavg_start'][0]:.1f} at start, {meta['loadavg_end'][0]:.1f} at end, "
          "{min:.1f}-{max:.1f} (median {median:.1f}) as the workers started".format(**meta["loadavg_during"]))
    for name in ran(results):
        if fn := hook(name, "report"):
            fn(results)
    print(f"\n-- targets, on {meta['clock']} time (95% intervals; PASS: all of the interval meets the target, "
          "FAIL: none of it does, UNDECIDED: it straddles the target, or too few repeats for an interval)")
    for t in results["targets"]:
        n = f"n={t['samples']}" if t["samples"] is not None else "exact"
        print(f"{t['verdict']:9s}  {t['target']:48s} {t['value']:8.4f} {interval(t['ci']):>16s}  {n:6s} "
              f"(target {t['bound']}; {t['cross_check_is']}: {t['cross_check']:.4f})")
