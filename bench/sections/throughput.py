"""Optimizer updates per second of the trainer against the reference loops (bench/loops/), on two MLPs.

The trainer is `template.trainer.train(cfg)` on a config from `load_config(configs/default.yaml,
overrides)` (no W&B, no progress bar, no checkpoints, no eval, no plots, log_every=10); against it, on
the same model, data, optimizer (RandomScaledSGD), lr schedule (WarmupCosineLR, stepped after every
update), clipping and seed: `raw`, `raw_tuned`, `accelerate` and `lightning` (when installed). The
models: the default config's small MLP (in 8, hidden 64, depth 2, batch 64) and a mid-size one (in 256,
hidden 1024, depth 4, batch 256).

How updates/s is measured, the same way for every loop (bench/harness.py): torch's global optimizer
step post-hook records `perf_counter()` (and this process's CPU time) after each `optimizer.step()`.
The rate is (N - W) / (t[N] - t[W]) over updates W+1..N: setup (imports, Accelerator, model and data
construction, process-group start), the first W warm-up updates and everything after the last update
(final digests, model.safetensors) are excluded; everything a loop does between updates (data,
forward, backward, clipping, logging, lr stepping) is included. N - W is a multiple of 10, so every
window holds the same number of log rows. Every run is a fresh worker process. On CUDA the two boundary
timestamps synchronize the device first. The hook costs well under a microsecond per update, paid alike
by every loop. Each repeat runs every loop once, in rotated order; a ratio is the median over repeats of
that repeat's ratio (the loops of one repeat ran back to back, so a slow spell of a shared machine hits
both sides). Updates per CPU-second are printed beside as a cross-check.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict
from typing import Any

from bench.harness import compare, loop_in_worker
from bench.loops import lightning_available
from bench.sections import Context
from bench.stats import UNDECIDED, Repeats, interval, median_ci, ratio_ci, target, verdict

# trainer / loop updates/s must reach these (per model); bench/report.py lists every target
BOUNDS = {"raw": {"small": 0.95, "mid": 0.98}, "accelerate": {"small": 1.0, "mid": 1.0},
          "lightning": {"small": 1.0, "mid": 1.0}}


def bound(loop: str, model: str) -> float:
    return BOUNDS[loop].get(model, max(BOUNDS[loop].values()))


def undecided(runs: dict[str, list[dict[str, float]]], model: str, clock: str) -> bool:
    """Whether any of this model's targets is still UNDECIDED on the repeats so far (on `clock`: wall or cpu)."""
    return any(verdict(ratio_ci([r[clock] for r in runs["trainer"]], [r[clock] for r in runs[loop]]), ">=",
                       bound(loop, model)) == UNDECIDED for loop in BOUNDS if loop in runs)


def malloc_effect(runs: dict[str, list[dict[str, float]]], tuned: str, plain: str) -> dict[str, Any]:
    """The glibc setting's effect on a hand-written loop (tuned / plain rate, paired per repeat), with intervals."""
    wall = [t["wall"] / p["wall"] for t, p in zip(runs[tuned], runs[plain], strict=True)]
    cpu = [t["cpu"] / p["cpu"] for t, p in zip(runs[tuned], runs[plain], strict=True)]
    return {"ratio": statistics.median(wall), "ci": median_ci(wall), "cpu_ratio": statistics.median(cpu),
            "cpu_ci": median_ci(cpu), "repeats": len(wall)}


def run(ctx: Context) -> dict[str, Any]:
    args, device, workdir = ctx.args, ctx.device, ctx.workdir
    loops = ["raw", "raw_tuned", "trainer", "accelerate"]
    notes = []
    if args.lightning and lightning_available():
        loops.append("lightning")
    elif args.lightning:
        notes.append("lightning not installed (pip install -e '.[bench]'): Lightning loop skipped")
    else:
        notes.append("Lightning loop skipped (--quick / --no-lightning)")
    result: dict[str, Any] = {"loops": loops, "notes": notes, "models": {}}
    for spec in args.specs:
        runs: dict[str, list[dict[str, float]]] = {loop: [] for loop in loops}
        same_params: list[bool] = []
        repeats = Repeats(args.repeats, args.budget_s)
        while repeats.more(lambda: undecided(runs, spec.name, args.clock)):  # noqa: B023  # called at once, on this spec's runs
            r = repeats.count - 1
            order = loops[r % len(loops):] + loops[:r % len(loops)]
            digests = {}
            for loop in order:
                rates, info = loop_in_worker(args, loop, spec, workdir / f"{spec.name}-{loop}-{r}", device)
                runs[loop].append(rates)
                digests[loop] = info.get("param_digest")
                if "threads_changed_to" in info:
                    notes.append(f"{loop} changed torch threads to {info['threads_changed_to']}")
                print(f"  {spec.name:5s} repeat {repeats.label()} {loop:10s} {rates['wall']:10.1f} updates/s "
                      f"({rates['cpu']:.1f} per CPU-s)", flush=True)
            same_params.append(digests["raw"] == digests["trainer"] == digests["raw_tuned"])
        result["models"][spec.name] = {"spec": asdict(spec), **compare(runs, "trainer"),
                                       "same_params_as_trainer": all(same_params),
                                       "keep_freed_memory": malloc_effect(runs, "raw_tuned", "raw")}
    return result


def report(results: dict[str, Any]) -> None:
    tp = results["throughput"]
    for name, model in tp["models"].items():
        s = model["spec"]
        print(f"\n-- throughput, {name} MLP (in {s['in_features']}, hidden {s['hidden']}, depth {s['depth']}, "
              f"batch {s['batch']}; {s['measured']} timed updates after {s['warmup']} warm-up; "
              f"{model['repeats']} repeats, one process each)")
        print(f"{'loop':12s} {'updates/s':>10s} {'min':>9s} {'max':>9s} {'spread':>7s} {'us/update':>10s} "
              f"{'trainer is':>10s} {'95% interval':>14s} {'per CPU-s':>10s} {'trainer is':>10s} {'95% interval':>14s}")
        for loop, v in model["updates_per_s"].items():
            key = f"trainer_vs_{loop}"
            ratio = cpu_ratio = ci = cpu_ci = ""
            if loop != "trainer":
                ratio, cpu_ratio = f"{model['ratios'][key]:.3f}x", f"{model['cpu_ratios'][key]:.3f}x"
                ci, cpu_ci = interval(model["ratio_ci"][key]), interval(model["cpu_ratio_ci"][key])
            cv = f"{model['spread'][loop]:.1%}" if model["repeats"] > 1 else "-"
            print(f"{loop:12s} {v['median']:10.1f} {v['min']:9.1f} {v['max']:9.1f} {cv:>7s} "
                  f"{model['update_time_us'][loop]:10.1f} {ratio:>10s} {ci:>14s} "
                  f"{model['cpu_updates_per_s'][loop]['median']:10.1f} {cpu_ratio:>10s} {cpu_ci:>14s}")
        m = model["keep_freed_memory"]
        print(f"glibc setting (train.keep_freed_memory) on the raw loop, raw_tuned / raw: {m['ratio']:.3f}x "
              f"{interval(m['ci'])} wall, {m['cpu_ratio']:.3f}x {interval(m['cpu_ci'])} CPU")
        print(f"raw loop ends with the trainer's exact parameters: {model['same_params_as_trainer']}")
    for note in tp["notes"]:
        print(f"note: {note}")


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    checks = []
    cpu = results["meta"].get("clock") == "cpu"
    for name, model in results["throughput"]["models"].items():
        r, c = model["ratios"], model["cpu_ratios"]
        for loop in BOUNDS:
            key = f"trainer_vs_{loop}"
            if key in r:
                wall = (r[key], c[key], "per CPU-second", model["ratio_ci"][key])
                value, other, other_is, ci = (c[key], r[key], "wall", model["cpu_ratio_ci"][key]) if cpu else wall
                checks.append(target(f"{name}: trainer / {loop} updates/s", value, ">=", bound(loop, name), other,
                                     other_is, ci, model["repeats"]))
    return checks


def ratios(results: dict[str, Any]) -> dict[str, float]:
    return {f"{m}.{k}": v for m, model in results["throughput"]["models"].items() for k, v in model["ratios"].items()}
