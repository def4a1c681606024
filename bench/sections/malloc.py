"""The glibc setting (`train.keep_freed_memory`) measured on its own: each hand-written loop with and without it.

For the small MLP, the mid MLP and the GPT (CPU: configs/gpt.yaml's model), the loop with the setting
(`raw_tuned`, `nanogpt_tuned`) against the same loop without (`raw`, `nanogpt`), A/B alternating in
fresh processes (the setting is process-wide and cannot be undone), at least 5 pairs each and more
within --budget-s while the interval of the ratio still holds 1.0. Beside the rates: the minor page
faults per update, the mechanism the setting acts on, and the largest activation of one update, the
size that decides whether glibc serves it with a fresh mmap() (template/runtime/host_memory.py).
"""

from __future__ import annotations

from typing import Any

from bench.configs import GPT_SPECS, SPECS, GPTSpec, ModelSpec, token_data
from bench.harness import loop_in_worker
from bench.sections import Context
from bench.sections.throughput import malloc_effect
from bench.stats import MIN_SAMPLES, UNDECIDED, Repeats, interval, ratio_ci, verdict

PAIRS = {"small": ("raw_tuned", "raw"), "mid": ("raw_tuned", "raw"), "gpt": ("nanogpt_tuned", "nanogpt")}


def largest_activation_mb(spec: ModelSpec | GPTSpec) -> float:
    """The largest single activation of one update (float32), in MiB: batch x hidden for the MLPs, the
    attention scores (batch x heads x block x block) or the 4x-wide MLP input for the GPT."""
    if isinstance(spec, GPTSpec):
        biggest = max(spec.n_head * spec.block_size, 4 * spec.n_embd) * spec.batch * spec.block_size
    else:
        biggest = spec.batch * max(spec.hidden, spec.in_features)
    return biggest * 4 / 2**20


def run(ctx: Context) -> dict[str, Any]:
    args, device, workdir = ctx.args, ctx.device, ctx.workdir
    specs: dict[str, ModelSpec | GPTSpec] = (
        {"small": args.specs[0], "gpt": args.gpt_spec} if args.quick
        else {"small": SPECS["small"], "mid": SPECS["mid"], "gpt": GPT_SPECS[device.type]})
    data_dir = token_data(workdir)
    result: dict[str, Any] = {}
    for name, spec in specs.items():
        tuned, plain = PAIRS[name]
        runs: dict[str, list[dict[str, Any]]] = {tuned: [], plain: []}

        def undecided(runs: dict[str, list[dict[str, Any]]] = runs, tuned: str = tuned, plain: str = plain) -> bool:
            ci = ratio_ci([r[args.clock] for r in runs[tuned]], [r[args.clock] for r in runs[plain]])
            return verdict(ci, ">=", 1.0) == UNDECIDED

        repeats = Repeats(args.repeats if args.quick else max(args.repeats, MIN_SAMPLES), args.budget_s)
        extra = [f"--worker-data={data_dir}"] if isinstance(spec, GPTSpec) else []
        while repeats.more(undecided):
            r = repeats.count - 1
            for loop in (tuned, plain) if r % 2 == 0 else (plain, tuned):
                rates, _ = loop_in_worker(args, loop, spec, workdir / f"malloc-{name}-{loop}-{r}", device,
                                          extra)
                runs[loop].append(rates)
                print(f"  {name:5s} repeat {repeats.label()} {loop:14s} {rates['wall']:10.2f} updates/s "
                      f"({rates['cpu']:.2f} per CPU-s, {rates['minflt_per_update']:.0f} page faults an update)",
                      flush=True)
        result[name] = {
            **malloc_effect(runs, tuned, plain), "loops": [tuned, plain],
            "largest_activation_mb": largest_activation_mb(spec),
            "updates_per_s": {loop: [r["wall"] for r in rs] for loop, rs in runs.items()},
            "cpu_updates_per_s": {loop: [r["cpu"] for r in rs] for loop, rs in runs.items()},
            "minflt_per_update": {loop: sorted(r["minflt_per_update"] for r in rs)[len(rs) // 2]
                                  for loop, rs in runs.items()},
        }
    return result


def report(results: dict[str, Any]) -> None:
    print("\n-- glibc setting (train.keep_freed_memory): the loop with it / without it, paired fresh processes")
    print(f"{'model':6s} {'largest act.':>12s} {'wall':>7s} {'95% interval':>16s} {'CPU':>7s} {'95% interval':>16s} "
          f"{'pairs':>5s} {'page faults/update with / without':>34s}")
    for name, m in results["malloc"].items():
        tuned, plain = m["loops"]
        faults = f"{m['minflt_per_update'][tuned]:.0f} / {m['minflt_per_update'][plain]:.0f}"
        print(f"{name:6s} {m['largest_activation_mb']:9.2f} MB {m['ratio']:6.3f}x {interval(m['ci']):>16s} "
              f"{m['cpu_ratio']:6.3f}x {interval(m['cpu_ci']):>16s} {m['repeats']:5d} {faults:>34s}")


def ratios(results: dict[str, Any]) -> dict[str, float]:
    return {f"malloc.{name}.tuned_vs_plain": m["ratio"] for name, m in results["malloc"].items()}
