"""The lr sync check's cost, 2 processes (gloo on CPU, NCCL with 2 GPUs).

The trainer under `accelerate launch --multi_gpu --num_processes 2` with distributed.sync_check_every=1
against 0; the difference is the cost of one `check_lr_sync`, reported as a fraction of the update time
at the default cadence (every 100 updates).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from bench.configs import SPECS
from bench.harness import ab_runs, child_env, extra_cost
from bench.sections import Context
from bench.stats import UNDECIDED, interval, median_ci, target, verdict

BOUND = 0.02  # of the update time, at the default cadence
CADENCE = 100  # distributed.sync_check_every's default


def run(ctx: Context) -> dict[str, Any]:
    args, device, workdir = ctx.args, ctx.device, ctx.workdir
    spec = replace(SPECS["small"], warmup=50, measured=2000) if not args.quick else args.specs[0]
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    backend = "nccl" if gpus >= 2 else "gloo"
    env = child_env(args.threads, **({} if gpus >= 2 else {"CUDA_VISIBLE_DEVICES": ""}))
    runs = ab_runs(args, spec, workdir, "sync", {"every_1": ["distributed.sync_check_every=1"],
                                                 "every_0": ["distributed.sync_check_every=0"]}, 2, env,
                   undecided=lambda runs: verdict(fraction_ci(runs, args.clock), "<=", BOUND) == UNDECIDED)
    cost = extra_cost(runs, "every_1", "every_0")
    per_check, base = cost["cost_us_per_update"], cost["base_update_time_us"]
    return {"model": spec.name, "processes": 2, "backend": backend, **cost, "check_cost_us": per_check,
            "fraction_at_every_100": per_check / 100 / base, "fraction_at_every_1": per_check / base,
            "fraction_at_every_100_ci": fraction_ci(runs),
            "cpu_fraction_ci": fraction_ci(runs, "cpu")}


def fraction_ci(runs: dict[str, list[dict[str, float]]], clock: str = "wall") -> tuple[float, float] | None:
    """Interval of the check's cost at every 100 updates, as a fraction of the update time (paired repeats)."""
    ci = median_ci([off[clock] / on[clock] - 1 for on, off in zip(runs["every_1"], runs["every_0"], strict=True)])
    return (ci[0] / CADENCE, ci[1] / CADENCE) if ci else None


def report(results: dict[str, Any]) -> None:
    s = results["sync"]
    print(f"\n-- lr sync check, {s['processes']} processes ({s['backend']}), {s['model']} MLP")
    print(f"updates/s every=1 {s['updates_per_s']['every_1']['median']:.1f}, every=0 "
          f"{s['updates_per_s']['every_0']['median']:.1f}; one check {s['check_cost_us']:.1f} us "
          f"(CPU {s['cpu_cost_us_per_update']:.1f} us) = {100 * s['fraction_at_every_1']:.2f}% of an update "
          f"({s['base_update_time_us']:.1f} us); at every=100: {100 * s['fraction_at_every_100']:.3f}% "
          f"{interval([100 * x for x in s['fraction_at_every_100_ci']] if s['fraction_at_every_100_ci'] else None)} "
          f"({s['repeats']} repeats)")


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    s = results["sync"]
    cpu = s["cpu_cost_us_per_update"] / CADENCE / s["cpu_time_us"]["every_0"]
    if results["meta"].get("clock") == "cpu":
        return [target("lr sync check / update time (every 100)", cpu, "<=", BOUND, s["fraction_at_every_100"],
                       "wall", s["cpu_fraction_ci"], s["repeats"])]
    return [target("lr sync check / update time (every 100)", s["fraction_at_every_100"], "<=", BOUND, cpu,
                   "CPU time", s["fraction_at_every_100_ci"], s["repeats"])]


def ratios(results: dict[str, Any]) -> dict[str, float]:
    return {"sync.check_fraction_at_every_100": results["sync"]["fraction_at_every_100"]}
