"""Tokens per second of the trainer on configs/gpt.yaml's GPT against a nanoGPT-style loop, compile off and on.

configs/gpt.yaml's GPT (byte tokens memmapped from train.bin, AdamW with the `no_decay` group,
warmup-cosine lr, clip 1.0; overrides as in throughput) against `nanogpt` and `nanogpt_tuned`
(bench/loops/nanogpt.py), each with compile off (`eager`) and on (`compile`: train.compile=true for the
trainer, the same in-place `model.compile()` for the raw loops), timed as in throughput (tokens/s =
updates/s x batch x block). Compile time stays out of the rate (it falls in the warm-up updates) and is
reported apart. The model: on CPU configs/gpt.yaml's as shipped (4 layers, 4 heads, 128 wide, block
128), batch 16; with `--device cuda` GPT-2 small's shape (12 x 12 x 768, block 1024, byte vocabulary),
batch 16, bf16, with MFU where the GPU's peak is known (template/reporting/throughput.py). Token files:
data/stdlib_bytes if scripts/prepare_text.py wrote it, else prepared into the work dir.

Next to it, `vocab`: the same shape with GPT-2's vocabulary padded to 50,304 (configs/gpt2_small.yaml's, on
random tokens), the trainer alone, one fresh run per mode: its tokens/s and MFU. On a GPU its output
projection is about a third of the FLOPs and the most efficient matmul of the update, so it is the figure
for the model people train; on CPU a batch of 4 keeps it to seconds.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict
from typing import Any

import torch

from bench.configs import gpt_config, random_token_data, token_data
from bench.harness import compare, loop_in_worker, summarize
from bench.loops import GPT_LOOPS
from bench.sections import Context
from bench.sections.throughput import malloc_effect
from bench.stats import UNDECIDED, Repeats, interval, ratio_ci, target, verdict

BOUND = 0.98  # trainer / nanoGPT loop tokens/s, compile off and on


def run(ctx: Context) -> dict[str, Any]:
    """Tokens/s of the trainer and of the nanoGPT-style loop on the same GPT, compile off and on, side by side.

    Every run is a fresh worker process timed as in the throughput section; each repeat runs every
    (mode, loop) once. The runs a ratio compares go back to back (a slow spell of a shared machine hits
    them alike): the modes alternate from repeat to repeat and the loop that goes first rotates. With
    compile on, each loop has its own inductor cache (TORCHINDUCTOR_CACHE_DIR), empty at the first repeat:
    the first update compiles (cold at the first repeat, from the cache later), the warm-up updates keep
    that out of the rate and `compile_s` reports it apart. Beside the wall-clock ratios (the targets'):
    `cpu_ratios`, and `median_update_ratios` (one over the median update time: a burst of other work on
    the machine slows a few updates, not the median).
    """
    from template.models.gpt import GPT
    from template.reporting.throughput import device_peak_flops

    args, device, workdir = ctx.args, ctx.device, ctx.workdir

    spec = args.gpt_spec
    data_dir = token_data(workdir)
    modes = ["eager", "compile"] if args.compile and not args.quick else ["eager"]
    variants = [(mode, loop) for mode in modes for loop in GPT_LOOPS]
    runs: dict[tuple[str, str], list[dict[str, float]]] = {v: [] for v in variants}
    first_update: dict[tuple[str, str], list[float]] = {v: [] for v in variants}
    logged: dict[str, list[dict[str, float]]] = {mode: [] for mode in modes}
    same_params: dict[str, list[bool]] = {mode: [] for mode in modes}
    def undecided() -> bool:
        def ci(mode: str) -> tuple[float, float] | None:
            clock = args.clock
            return ratio_ci([x[clock] for x in runs[mode, "trainer"]], [x[clock] for x in runs[mode, "nanogpt"]])

        return any(verdict(ci(mode), ">=", BOUND) == UNDECIDED for mode in modes)

    repeats = Repeats(args.repeats, args.budget_s)
    while repeats.more(undecided):
        r = repeats.count - 1
        digests: dict[tuple[str, str], str] = {}
        shift = r % len(GPT_LOOPS)
        for mode, loop in [(mode, loop) for mode in (modes if r % 2 == 0 else modes[::-1])
                           for loop in GPT_LOOPS[shift:] + GPT_LOOPS[:shift]]:
            name = f"gpt-{mode}-{loop}-{r}"
            env = {"TORCHINDUCTOR_CACHE_DIR": str(workdir / f"gpt-inductor-{loop}")} if mode == "compile" else {}
            rates, info = loop_in_worker(args, loop, spec, workdir / name, device,
                                         [f"--worker-data={data_dir}", *(["--worker-compile"] if mode == "compile"
                                                                         else [])], **env)
            runs[mode, loop].append(rates)
            first_update[mode, loop].append(info["first_update_s"])
            digests[mode, loop] = info["param_digest"]
            if "logged" in info:
                logged[mode].append(info["logged"])
            print(f"  gpt   repeat {repeats.label()} {mode:8s} {loop:14s} "
                  f"{rates['wall'] * spec.tokens_per_update:10.0f} tokens/s ({rates['wall']:.2f} updates/s, "
                  f"{rates['cpu']:.2f} per CPU-s; first update {info['first_update_s']:.2f} s)", flush=True)
        for mode in modes:
            same_params[mode].append(len({digests[mode, loop] for loop in GPT_LOOPS}) == 1)

    with torch.device("meta"):  # the model's FLOPs per token (6N + 12LHQT), without allocating it
        flops_per_token = GPT(**gpt_config(spec, workdir, data_dir, False, device).model.kwargs).flops_per_token()
    peak = device_peak_flops(device)
    result: dict[str, Any] = {"spec": asdict(spec), "tokens_per_update": spec.tokens_per_update, "modes": {},
                              "flops_per_token": flops_per_token, "peak_flops": peak,
                              "mixed_precision": "bf16" if device.type == "cuda" else None}
    for mode in modes:
        cmp = compare({loop: runs[mode, loop] for loop in GPT_LOOPS}, "trainer")
        tokens = {loop: summarize([r["wall"] * spec.tokens_per_update for r in runs[mode, loop]]) for loop in GPT_LOOPS}
        result["modes"][mode] = {
            "tokens_per_s": tokens, **cmp,
            "first_update_s": {loop: statistics.median(first_update[mode, loop]) for loop in GPT_LOOPS},
            "first_update_runs_s": {loop: first_update[mode, loop] for loop in GPT_LOOPS},
            "same_params_as_trainer": all(same_params[mode]),
            "median_update_ratios": {f"trainer_vs_{loop}": statistics.median(
                t["wall_median"] / o["wall_median"] for t, o in zip(runs[mode, "trainer"], runs[mode, loop],
                                                                    strict=True)) for loop in GPT_LOOPS[:-1]},
            "trainer_logged": {k: statistics.median(x[k] for x in logged[mode]) for k in logged[mode][0]}
            if logged[mode] else {},
            "keep_freed_memory": malloc_effect({loop: runs[mode, loop] for loop in GPT_LOOPS}, "nanogpt_tuned",
                                               "nanogpt"),
        }
        if peak:
            result["modes"][mode]["mfu"] = {loop: v["median"] * flops_per_token / peak for loop, v in tokens.items()}
    result["vocab"] = vocab_shape(ctx, modes)
    if "compile" in modes:  # compiled / eager tokens/s, median of the per-repeat ratios (same repeat, same loop)
        result["compile_speedup"] = {
            loop: statistics.median(c["wall"] / e["wall"] for c, e in zip(runs["compile", loop], runs["eager", loop],
                                                                            strict=True))
            for loop in GPT_LOOPS}
        result["compile_s"] = {}  # the first update's time over the eager one's: cold cache, then warm
        for loop in GPT_LOOPS:
            eager, compiled = statistics.median(first_update["eager", loop]), first_update["compile", loop]
            result["compile_s"][loop] = {"cold": compiled[0] - eager,
                                         "warm": statistics.median(compiled[1:]) - eager if len(compiled) > 1
                                         else None}
    else:
        result["notes"] = ["compile off only (--quick / --no-compile)"]
    return result


def vocab_shape(ctx: Context, modes: list[str]) -> dict[str, Any]:
    """The trainer on the GPT-2-vocabulary shape, one fresh run per mode: tokens/s, the trainer's own rows, MFU."""
    from template.models.gpt import GPT
    from template.reporting.throughput import device_peak_flops

    args, device, workdir = ctx.args, ctx.device, ctx.workdir
    spec = args.gpt_vocab_spec
    data_dir = random_token_data(workdir, spec.vocab_size)
    with torch.device("meta"):
        flops_per_token = GPT(**gpt_config(spec, workdir, data_dir, False, device).model.kwargs).flops_per_token()
    peak = device_peak_flops(device)
    out: dict[str, Any] = {"spec": asdict(spec), "tokens_per_update": spec.tokens_per_update,
                           "flops_per_token": flops_per_token, "peak_flops": peak, "modes": {}}
    for mode in modes:
        env = {"TORCHINDUCTOR_CACHE_DIR": str(workdir / "gpt_vocab-inductor")} if mode == "compile" else {}
        rates, info = loop_in_worker(args, "trainer", spec, workdir / f"gpt_vocab-{mode}", device,
                                     [f"--worker-data={data_dir}", *(["--worker-compile"] if mode == "compile"
                                                                     else [])], **env)
        tokens = rates["wall"] * spec.tokens_per_update
        out["modes"][mode] = {"tokens_per_s": tokens, "cpu_tokens_per_s": rates["cpu"] * spec.tokens_per_update,
                              "first_update_s": info["first_update_s"], "trainer_logged": info.get("logged", {}),
                              **({"mfu": tokens * flops_per_token / peak} if peak else {})}
        print(f"  gpt   vocab {spec.vocab_size} {mode:8s} trainer {tokens:10.0f} tokens/s "
              f"(first update {info['first_update_s']:.2f} s)", flush=True)
    return out


def report(results: dict[str, Any]) -> None:
    g = results["gpt"]
    s = g["spec"]
    print(f"\n-- gpt: trainer vs nanoGPT-style loop (n_layer {s['n_layer']}, n_head {s['n_head']}, n_embd "
          f"{s['n_embd']}, block {s['block_size']}, batch {s['batch']} = {g['tokens_per_update']} tokens an update"
          f"{', bf16' if g['mixed_precision'] else ''}; {s['measured']} timed updates after {s['warmup']} warm-up)")
    print(f"{'':61s} {' trainer is ':-^38s}")
    print(f"{'mode':8s} {'loop':14s} {'tokens/s':>9s} {'min':>8s} {'max':>8s} {'ms/update':>9s} "
          f"{'wall':>7s} {'95% interval':>14s} {'CPU':>7s} {'median':>7s} {'1st update':>10s}"
          + (f" {'MFU':>6s}" if g["peak_flops"] else ""))
    for mode, m in g["modes"].items():
        for loop, v in m["tokens_per_s"].items():
            ratio = spread = cpu = median = ""
            if loop != "trainer":
                key = f"trainer_vs_{loop}"
                ratio, cpu = f"{m['ratios'][key]:.3f}x", f"{m['cpu_ratios'][key]:.3f}x"
                median = f"{m['median_update_ratios'][key]:.3f}x"
                spread = interval(m["ratio_ci"][key])
            first = "/".join(f"{x:.1f}" for x in m["first_update_runs_s"][loop][:2]) if mode == "compile" else (
                f"{m['first_update_s'][loop]:.2f}")
            print(f"{mode:8s} {loop:14s} {v['median']:9.0f} {v['min']:8.0f} {v['max']:8.0f} "
                  f"{m['update_time_us'][loop] / 1e3:9.1f} {ratio:>7s} {spread:>14s} {cpu:>7s} {median:>7s} "
                  f"{first:>9s}s" + (f" {m['mfu'][loop]:6.1%}" if "mfu" in m else ""))
        logged = m["trainer_logged"]
        print(f"{mode:8s} trainer's own rows: {logged.get('tokens_per_s', float('nan')):.0f} tokens/s"
              + (f", MFU {logged['mfu']:.1%}" if "mfu" in logged else "")
              + f"; nanoGPT loops end with the trainer's exact parameters: {m['same_params_as_trainer']}")
        print(f"{mode:8s} on CPU time, trainer / " + ", / ".join(
            f"{key.removeprefix('trainer_vs_')} {m['cpu_ratios'][key]:.3f}x {interval(m['cpu_ratio_ci'][key])}"
            for key in m["cpu_ratios"]))
        k = m["keep_freed_memory"]
        print(f"{mode:8s} glibc setting on the nanoGPT loop, nanogpt_tuned / nanogpt: {k['ratio']:.3f}x "
              f"{interval(k['ci'])} wall, {k['cpu_ratio']:.3f}x {interval(k['cpu_ci'])} CPU; {m['repeats']} repeats")
    if "compile_speedup" in g:
        print("compile on / off, tokens/s (and compile seconds: cold cache, warm cache): " + ", ".join(
            f"{loop} {x:.3f}x ({g['compile_s'][loop]['cold']:.1f} s, " + (
                f"{warm:.1f} s)" if (warm := g["compile_s"][loop]["warm"]) is not None else "-)")
            for loop, x in g["compile_speedup"].items()))
        print("(1st update column, compile: the first repeat's / the second's, cold / warm inductor cache)")
    if "vocab" in g:
        v, vs = g["vocab"], g["vocab"]["spec"]
        print(f"vocabulary {vs['vocab_size']:,} (GPT-2's, padded; random tokens), batch {vs['batch']} x "
              f"{vs['block_size']}, {v['flops_per_token'] / 1e6:.1f} MFLOP a token (bytes: "
              f"{g['flops_per_token'] / 1e6:.1f}), the trainer alone, one run per mode: " + ", ".join(
                  f"{mode} {m['tokens_per_s']:.0f} tokens/s" + (f", MFU {m['mfu']:.1%}" if "mfu" in m else "")
                  for mode, m in v["modes"].items()))
    for note in g.get("notes", []):
        print(f"note: {note}")


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    key, cpu = "trainer_vs_nanogpt", results["meta"].get("clock") == "cpu"
    return [target(f"gpt ({mode}): trainer / nanoGPT loop tokens/s", *(
        (m["cpu_ratios"][key], ">=", BOUND, m["ratios"][key], "wall", m["cpu_ratio_ci"][key]) if cpu else
        (m["ratios"][key], ">=", BOUND, m["cpu_ratios"][key], "per CPU-second", m["ratio_ci"][key])), m["repeats"])
        for mode, m in results["gpt"]["modes"].items()]


def ratios(results: dict[str, Any]) -> dict[str, float]:
    g = results["gpt"]
    return {**{f"gpt.{mode}.{k}": v for mode, m in g["modes"].items() for k, v in m["ratios"].items()},
            **{f"gpt.compile_speedup.{k}": v for k, v in g.get("compile_speedup", {}).items()}}
