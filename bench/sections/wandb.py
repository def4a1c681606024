"""W&B logging's cost: the trainer with tracking.wandb=true (WANDB_MODE=offline) against false, small MLP."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from bench.configs import LOG_EVERY, SPECS
from bench.harness import ab_runs, child_env, extra_cost
from bench.sections import Context
from bench.stats import UNDECIDED, median_ci, target, verdict

BOUND = 0.02  # of the update time, at the default log_every


def run(ctx: Context) -> dict[str, Any]:
    """W&B on against off at the default cadence (a row every LOG_EVERY updates), small MLP.

    Measured at the cadence itself, not scaled from logging every update: a row's cost depends on how
    often rows come (measured here: wandb's client and the cache misses it leaves behind cost more per
    row when rows are rarer). The fraction for a longer update (the mid MLP's, from the throughput
    section when it ran) assumes the same cost per row, which does not depend on the model.
    """
    args, device, workdir = ctx.args, ctx.device, ctx.workdir
    spec = replace(SPECS["small"], warmup=50, measured=3000) if not args.quick else args.specs[0]
    env = child_env(args.threads, WANDB_MODE="offline",
                    **({"CUDA_VISIBLE_DEVICES": ""} if device.type == "cpu" else {}))
    runs = ab_runs(args, spec, workdir, "wandb", {"wandb_true": ["tracking.wandb=true"],
                                                  "wandb_false": ["tracking.wandb=false"]}, 1, env,
                   undecided=lambda runs: verdict(fraction_ci(runs, args.clock), "<=", BOUND) == UNDECIDED)
    cost = extra_cost(runs, "wandb_true", "wandb_false")
    per_update, base = cost["cost_us_per_update"], cost["base_update_time_us"]
    result = {"model": spec.name, "log_every": LOG_EVERY, **cost, "cost_us_per_logged_row": per_update * LOG_EVERY,
              "fraction_at_log_every_10": per_update / base, "fraction_at_log_every_10_ci": fraction_ci(runs),
              "cpu_fraction_ci": fraction_ci(runs, "cpu")}
    # the same cost per row against the other models' update times, from the throughput section when it ran
    others = {name: model["update_time_us"]["trainer"]
              for name, model in ctx.results.get("throughput", {}).get("models", {}).items() if name != spec.name}
    result["fraction_for_model"] = {name: per_update / us for name, us in others.items()}
    cost_ci = cost["cost_us_ci"]
    result["fraction_for_model_ci"] = {name: [cost_ci[0] / us, cost_ci[1] / us] if cost_ci else None
                                       for name, us in others.items()}
    return result


def fraction_ci(runs: dict[str, list[dict[str, float]]], clock: str = "wall") -> tuple[float, float] | None:
    """Interval of W&B's cost as a fraction of the update time (paired repeats)."""
    return median_ci([off[clock] / on[clock] - 1 for on, off in zip(runs["wandb_true"], runs["wandb_false"],
                                                                      strict=True)])


def report(results: dict[str, Any]) -> None:
    w = results["wandb"]
    print(f"\n-- W&B offline logging, {w['model']} MLP, a row every {w['log_every']} updates")
    print(f"updates/s wandb=true {w['updates_per_s']['wandb_true']['median']:.1f}, false "
          f"{w['updates_per_s']['wandb_false']['median']:.1f}; {w['cost_us_per_logged_row']:.1f} us per logged "
          f"row (CPU {w['cpu_cost_us_per_update'] * w['log_every']:.1f} us, this process) = "
          f"{100 * w['fraction_at_log_every_10']:.2f}% of a {w['base_update_time_us']:.1f} us update")
    for name, frac in w.get("fraction_for_model", {}).items():
        print(f"  the same cost per row on the {name} MLP's update: {100 * frac:.3f}%")


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    w = results["wandb"]
    cpu = w["cpu_cost_us_per_update"] / w["cpu_time_us"]["wandb_false"]
    name = f"W&B logging / update time ({w['model']}, log_every 10)"
    if results["meta"].get("clock") == "cpu":
        checks = [target(name, cpu, "<=", BOUND, w["fraction_at_log_every_10"], "wall", w["cpu_fraction_ci"],
                         w["repeats"])]
    else:
        checks = [target(name, w["fraction_at_log_every_10"], "<=", BOUND, cpu, "CPU time, this process only",
                         w["fraction_at_log_every_10_ci"], w["repeats"])]
    for name, frac in w.get("fraction_for_model", {}).items():
        checks.append(target(f"W&B logging / update time ({name}, log_every 10)", frac, "<=", BOUND, frac, "same",
                             w["fraction_for_model_ci"][name], w["repeats"]))
    return checks


def ratios(results: dict[str, Any]) -> dict[str, float]:
    return {"wandb.fraction_at_log_every_10": results["wandb"]["fraction_at_log_every_10"]}
