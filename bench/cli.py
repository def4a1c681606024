"""Benchmark the template's trainer against hand-written loops, and its side costs.

    python scripts/benchmark.py [--out bench.json] [--threads 1] [--device cpu|cuda] [--repeats 5]
                                [--sections throughput,optimizer,overhead,gpu_sync,sync,wandb,startup,gpt] [--quick]
                                [--no-lightning] [--no-compile] [--budget-s 300]

Sections (all by default; `--quick`: few steps, one repeat, small model only, no Lightning, no
2-process or W&B runs, the GPT with compile off only): one module each in bench/sections/, which says
what it measures and how; the reference loops they time are in bench/loops/, the timing harness in
bench/harness.py, the targets in bench/report.py.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from bench import harness
from bench.configs import GPT_SPECS, GPT_VOCAB_SPECS, SPECS
from bench.harness import run_loop_worker, run_worker
from bench.loops import LOOPS
from bench.report import print_report, ratios, targets
from bench.sections import NAMES, QUICK_NAMES, SECTIONS, Context


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process (default 1)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--repeats", type=int, default=None, help="repeats per measurement (default 5; --quick: 1)")
    p.add_argument("--sections", default=None,
                   help=f"comma-separated subset of {','.join(NAMES)} (default all; --quick: "
                        f"{','.join(QUICK_NAMES)})")
    p.add_argument("--models", default=None, help="comma-separated subset of small,mid (default both; --quick: small)")
    p.add_argument("--no-lightning", dest="lightning", action="store_false", help="skip the Lightning loop")
    p.add_argument("--no-compile", dest="compile", action="store_false",
                   help="gpt section: compile off only (as --quick does)")
    p.add_argument("--budget-s", type=float, default=None,
                   help="seconds per section for extra repeats while a target is UNDECIDED (default 300; --quick: 0)")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="what the verdicts and extra repeats go by: wall time (default), or this process's CPU time,\n"
                        "3-4x less spread from process to process on a machine loaded by other jobs (README)")
    p.add_argument("--quick", action="store_true", help="a smoke run: few steps, one repeat, small model only")
    p.add_argument("--worker-out", help=argparse.SUPPRESS)
    p.add_argument("--worker-loop", choices=tuple(LOOPS), help=argparse.SUPPRESS)
    p.add_argument("--worker-model", choices=(*SPECS, "gpt", "gpt_vocab"), default="small", help=argparse.SUPPRESS)
    p.add_argument("--worker-data", help=argparse.SUPPRESS)
    p.add_argument("--worker-compile", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--worker-measured", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--worker-warmup", type=int, default=10, help=argparse.SUPPRESS)
    p.add_argument("--override", action="append", default=[], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker_out:
        return args
    args.repeats = args.repeats or (1 if args.quick else 5)
    args.budget_s = args.budget_s if args.budget_s is not None else (0.0 if args.quick else 300.0)
    sections = args.sections.split(",") if args.sections else list(QUICK_NAMES if args.quick else NAMES)
    bad = [s for s in sections if s not in NAMES]
    if bad:
        p.error(f"unknown section(s) {bad}; choose from {', '.join(NAMES)}")
    args.sections = sections
    models = args.models.split(",") if args.models else (["small"] if args.quick else ["small", "mid"])
    if any(m not in SPECS for m in models):
        p.error(f"--models: choose from {', '.join(SPECS)}")
    args.specs = [replace(SPECS[m], warmup=10, measured=50) if args.quick else SPECS[m] for m in models]
    args.gpt_spec = replace(GPT_SPECS[args.device], warmup=1, measured=4) if args.quick else GPT_SPECS[args.device]
    # --quick on CPU: one window of 32 tokens (each token's 50,304 logits make an update ~10 ms a token here)
    small_vocab = {"batch": 1, "block_size": 32} if args.device == "cpu" else {}
    args.gpt_vocab_spec = (replace(GPT_VOCAB_SPECS[args.device], warmup=1, measured=4, **small_vocab) if args.quick
                           else GPT_VOCAB_SPECS[args.device])
    if args.quick:
        args.lightning = False
    if args.threads < 1 or args.repeats < 1 or args.budget_s < 0:
        p.error("--threads and --repeats must be >= 1, --budget-s >= 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch sees no CUDA device")
    return args


def cpu_model() -> str:
    """The CPU's name from /proc/cpuinfo (Linux), else platform's guess: the README's tables name the machine."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.worker_loop:
        run_loop_worker(args)
        return {}
    if args.worker_out:
        run_worker(args)
        return {}
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    os.environ.setdefault("WANDB_MODE", "offline")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    results: dict[str, Any] = {"meta": {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(), "threads": args.threads,
        "torch": torch.__version__, "python": platform.python_version(), "repeats": args.repeats,
        "quick": args.quick, "sections": args.sections, "models": [s.name for s in args.specs],
        "loadavg_start": os.getloadavg(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu_model": cpu_model(),
    }}
    with tempfile.TemporaryDirectory(prefix="template-bench-") as tmp:
        ctx = Context(args, device, Path(tmp), results)
        for name in args.sections:
            print(f"[{name}]", flush=True)
            results[name] = SECTIONS[NAMES.index(name)].module().run(ctx)
    results["meta"]["loadavg_end"] = os.getloadavg()
    results["meta"]["worker_processes"] = harness.PROCESSES[0]
    loads = sorted(harness.LOADS) or [results["meta"]["loadavg_end"][0]]
    results["meta"]["loadavg_during"] = {"min": loads[0], "median": loads[len(loads) // 2], "max": loads[-1]}
    results["meta"]["budget_s"] = args.budget_s
    results["meta"]["clock"] = args.clock
    results["targets"] = targets(results)
    results["ratios"] = ratios(results)
    print_report(results)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nwrote {args.out}")
    return results


if __name__ == "__main__":
    main()
