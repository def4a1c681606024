"""The timing harness: how every loop is clocked, run in a fresh process, and compared.

Every timed run is a fresh worker process (`scripts/benchmark.py --worker-loop ...` or `--worker-out ...`),
so no loop inherits another's allocator settings (the trainer fixes glibc's malloc thresholds process-wide,
template/runtime/host_memory.py), imports or caches. Inside it, torch's global optimizer step post-hook stamps
the clocks after every update (StepClock); the rate excludes setup and warm-up.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from bench.configs import (
    GPT_SPECS,
    GPT_VOCAB_SPECS,
    LOG_EVERY,
    ROOT,
    SPECS,
    GPTSpec,
    ModelSpec,
    bench_config,
    gpt_config,
    trainer_overrides,
)
from bench.loops import LOOPS
from bench.stats import Repeats, median_ci, ratio_ci, spread
from template.config import DEFAULT_CONFIG, Config, load_config

WORKER_SCRIPT = ROOT / "scripts" / "benchmark.py"  # every worker process runs the benchmark's own command
WINDOWS = 5  # measurement windows per timed run (StepClock.rates)
PROCESSES = [0]  # worker processes (or launches) started by this run, for the report
LOADS: list[float] = []  # the 1-minute load average as each worker started: how busy the machine was throughout


class StepClock:
    """Wall and CPU clocks after every optimizer update, from torch's global optimizer step post-hook.

    The hook sees the innermost optimizer (RandomScaledSGD), whoever wraps it (AcceleratedOptimizer,
    LightningOptimizer), so every loop is timed at the same point of its update. Wall time
    (perf_counter) is what the targets use; this process's CPU time (process_time, all its threads) is
    kept beside it because, on a machine shared with other jobs, it is what interference disturbs least.
    """

    def __init__(self, warmup: int, total: int, cuda: bool = False) -> None:
        self.warmup, self.total, self.cuda = warmup, total, cuda
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self.faults: list[int] = []  # minor page faults at the timed window's ends (the glibc setting's effect)
        self._handle: Any = None

    def _hook(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if len(self.wall) in (self.warmup - 1, self.total - 1):  # the timed window's two ends
            if self.cuda:
                torch.cuda.synchronize()
            self.faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)
        self.wall.append(time.perf_counter())
        self.cpu.append(time.process_time())

    def __enter__(self) -> StepClock:
        self._handle = register_optimizer_step_post_hook(self._hook)
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.remove()

    def rates(self) -> dict[str, Any]:
        """Updates per second of wall time and per CPU-second, over updates warmup+1..total; and one over the
        median update's wall time (`wall_median`: a cross-check that a burst of other work barely moves)."""
        if len(self.wall) != self.total:
            raise RuntimeError(f"expected {self.total} optimizer updates, the hook saw {len(self.wall)}")
        n = self.total - self.warmup
        timed = self.wall[self.warmup - 1:]
        return {"wall": n / (self.wall[-1] - self.wall[self.warmup - 1]),
                "cpu": n / max(self.cpu[-1] - self.cpu[self.warmup - 1], 1e-9),
                "wall_median": 1 / max(statistics.median(b - a for a, b in itertools.pairwise(timed)), 1e-12),
                "wall_windows": window_rates(timed), "minflt_per_update": (self.faults[-1] - self.faults[0]) / n}


def window_rates(stamps: list[float], windows: int = WINDOWS) -> list[float]:
    """Updates/s over `windows` equal consecutive windows of the timed updates (each a multiple of LOG_EVERY
    updates, so each holds the same log rows; fewer windows when the run is too short for that)."""
    n = len(stamps) - 1
    while windows > 1 and (n % windows or (n // windows) % LOG_EVERY):
        windows -= 1
    size = n // windows
    return [size / (stamps[(i + 1) * size] - stamps[i * size]) for i in range(windows)]


def best_per_call_us(trainer_way: Callable[[], object], raw_way: Callable[[], object], calls: int,
                     repeats: int) -> tuple[float, float]:
    """Best (min) over interleaved repeats of the mean time per call of each way, in microseconds."""
    trainer_way(), raw_way()
    best = [float("inf"), float("inf")]
    for _ in range(repeats):
        for i, fn in enumerate((trainer_way, raw_way)):
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            best[i] = min(best[i], (time.perf_counter() - start) / calls * 1e6)
    return best[0], best[1]


def summarize(values: list[float]) -> dict[str, Any]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": values}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(threads: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "ACCELERATE_"))}
    env.update(OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1", WANDB_SILENT="true", WANDB_MODE="offline",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    env.update(extra)
    return env


def run_worker_process(cmd: list[str], env: dict[str, str], result: Path) -> dict[str, Any]:
    """Run a worker command (this script in a worker mode, maybe under a launcher); return the JSON it wrote."""
    PROCESSES[0] += 1
    LOADS.append(os.getloadavg()[0])
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    return json.loads(result.read_text())


def timed_run(loop: str, spec: ModelSpec | GPTSpec, cfg: Config, device: torch.device,
              threads: int) -> tuple[dict[str, float], dict[str, Any]]:
    torch.set_num_threads(threads)
    gc.collect()
    with StepClock(spec.warmup, cfg.train.max_steps, cuda=device.type == "cuda") as clock:
        info = LOOPS[loop](cfg, device)
    if torch.get_num_threads() != threads:
        info["threads_changed_to"] = torch.get_num_threads()
    return clock.rates(), info


def compare(runs: dict[str, list[dict[str, float]]], base: str) -> dict[str, Any]:
    """Medians per variant and clock, and `base`'s ratio to each other variant.

    `ratios` (what the targets use) is the median over repeats of the per-repeat ratio: the variants of
    one repeat ran back to back, so a slow spell on a shared machine hits both sides of a ratio.
    `ratio_ci` is its 95% interval (bench/stats.py; None below 5 repeats), `spread` each variant's
    coefficient of variation from one process to the next.
    """
    out: dict[str, Any] = {"updates_per_s": {}, "cpu_updates_per_s": {}, "ratios": {}, "cpu_ratios": {},
                           "ratio_of_medians": {}, "paired_ratios": {}, "ratio_ci": {}, "cpu_ratio_ci": {}}
    for label, rs in runs.items():
        out["updates_per_s"][label] = summarize([r["wall"] for r in rs])
        out["cpu_updates_per_s"][label] = summarize([r["cpu"] for r in rs])
    for label, rs in runs.items():
        if label == base:
            continue
        key = f"{base}_vs_{label}"
        out["ratios"][key] = statistics.median(b["wall"] / r["wall"] for b, r in zip(runs[base], rs, strict=True))
        out["cpu_ratios"][key] = statistics.median(b["cpu"] / r["cpu"] for b, r in zip(runs[base], rs, strict=True))
        out["ratio_of_medians"][key] = (out["updates_per_s"][base]["median"] / out["updates_per_s"][label]["median"])
        out["paired_ratios"][key] = [b["wall"] / r["wall"] for b, r in zip(runs[base], rs, strict=True)]
        out["ratio_ci"][key] = median_ci(out["paired_ratios"][key])
        out["cpu_ratio_ci"][key] = ratio_ci([b["cpu"] for b in runs[base]], [r["cpu"] for r in rs])
    out["repeats"] = len(runs[base])
    out["spread"] = {label: spread([r["wall"] for r in rs]) for label, rs in runs.items()}
    out["update_time_us"] = {label: 1e6 / v["median"] for label, v in out["updates_per_s"].items()}
    out["cpu_time_us"] = {label: 1e6 / v["median"] for label, v in out["cpu_updates_per_s"].items()}
    return out


def loop_in_worker(args: argparse.Namespace, loop: str, spec: ModelSpec | GPTSpec, out_dir: Path,
                   device: torch.device, extra: list[str] | None = None,
                   **env: str) -> tuple[dict[str, float], dict[str, Any]]:
    """One timed run of `loop` in a fresh interpreter (`--worker-loop`): the trainer sets process-wide malloc
    thresholds (template/runtime/host_memory.py), and no loop should inherit another's allocator or import state."""
    result = out_dir.with_suffix(".json")
    cmd = [sys.executable, str(WORKER_SCRIPT), "--worker-loop", loop, "--worker-model", spec.name,
           "--worker-out", str(result), "--threads", str(args.threads), "--device", device.type,
           f"--worker-measured={spec.measured}", f"--worker-warmup={spec.warmup}",
           *(extra or [])]
    env = child_env(args.threads, **({"CUDA_VISIBLE_DEVICES": ""} if device.type == "cpu" else {}), **env)
    data = run_worker_process(cmd, env, result)
    return data["rates"], data["info"]


def run_loop_worker(args: argparse.Namespace) -> None:
    """`--worker-loop LOOP --worker-model M --worker-out FILE`: one timed run, written as JSON."""
    gpt = args.worker_model in ("gpt", "gpt_vocab")
    spec: ModelSpec | GPTSpec = ((GPT_SPECS if args.worker_model == "gpt" else GPT_VOCAB_SPECS)[args.device] if gpt
                                 else SPECS[args.worker_model])
    if args.worker_measured:
        spec = replace(spec, warmup=args.worker_warmup, measured=args.worker_measured)
    out = Path(args.worker_out)
    device = torch.device(args.device)
    if isinstance(spec, GPTSpec):
        cfg = gpt_config(spec, out.with_suffix(""), args.worker_data, args.worker_compile, device)
    else:
        cfg = bench_config(spec, spec.steps, out.with_suffix(""))
    warnings.filterwarnings("ignore")
    rates, info = timed_run(args.worker_loop, spec, cfg, device, args.threads)
    if gpt and args.worker_loop == "trainer":
        info["logged"] = logged_rates(Path(cfg.output_dir), spec.warmup)
    out.write_text(json.dumps({"rates": rates, "info": info}))


def run_worker(args: argparse.Namespace) -> None:
    """`--worker-out FILE`: run the trainer with the step clock (under a launcher or not); rank 0 writes FILE."""
    from template.trainer import train

    torch.set_num_threads(args.threads)
    cfg = load_config(DEFAULT_CONFIG, args.override)
    clock = StepClock(args.worker_warmup, cfg.train.max_steps, cuda=torch.cuda.is_available())
    with clock:
        summary = train(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        Path(args.worker_out).write_text(json.dumps({
            "rates": clock.rates(), "world_size": summary["world_size"],
            "threads": torch.get_num_threads(),
        }))


def worker_run(args: argparse.Namespace, spec: ModelSpec, out_dir: Path, extra: list[str], nproc: int,
               env: dict[str, str]) -> dict[str, Any]:
    result = out_dir.with_suffix(".json")
    worker = [str(WORKER_SCRIPT), "--worker-out", str(result), "--worker-warmup", str(spec.warmup),
              "--threads", str(args.threads),
              *[f"--override={o}" for o in (*trainer_overrides(spec, spec.steps, out_dir), *extra)]]
    if nproc == 1:
        cmd = [sys.executable, *worker]
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--num_processes", str(nproc),
               "--main_process_port", str(free_port()), *worker]
    return run_worker_process(cmd, env, result)


def ab_runs(args: argparse.Namespace, spec: ModelSpec, workdir: Path, name: str, variants: dict[str, list[str]],
            nproc: int, env: dict[str, str],
            undecided: Callable[[dict[str, list[dict[str, float]]]], bool] | None = None,
            ) -> dict[str, list[dict[str, float]]]:
    """A/B/B/A...: each repeat runs every variant once in a fresh process, the order flipping each repeat,
    so drift of the machine hits both sides alike; extra repeats while `undecided(runs)` (--budget-s)."""
    runs: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    repeats = Repeats(args.repeats, args.budget_s)
    while repeats.more(lambda: undecided is not None and undecided(runs)):
        r = repeats.count - 1
        for label, extra in (list(variants.items()) if r % 2 == 0 else list(variants.items())[::-1]):
            info = worker_run(args, spec, workdir / f"{name}-{label}-{r}", extra, nproc, env)
            if info["world_size"] != nproc:
                raise RuntimeError(f"{name}: expected world size {nproc}, got {info['world_size']}")
            runs[label].append(info["rates"])
            print(f"  {name:5s} repeat {repeats.label()} {label:12s} {info['rates']['wall']:10.1f} updates/s "
                  f"({info['rates']['cpu']:.1f} per CPU-s)", flush=True)
    return runs


def extra_cost(runs: dict[str, list[dict[str, float]]], on: str, off: str) -> dict[str, Any]:
    """Per-update cost of `on` over `off`: median over repeats of the paired difference of update times."""
    result = compare(runs, on)
    for clock, key in (("wall", "cost_us_per_update"), ("cpu", "cpu_cost_us_per_update")):
        result[key] = statistics.median(1e6 / a[clock] - 1e6 / b[clock] for a, b in zip(runs[on], runs[off],
                                                                                          strict=True))
    result["base_update_time_us"] = result["update_time_us"][off]
    # (t_on - t_off) / t_off per pair, and the same pairs' cost in microseconds: the fractions' intervals
    pairs = list(zip(runs[on], runs[off], strict=True))
    result["cost_fraction_ci"] = median_ci([b["wall"] / a["wall"] - 1 for a, b in pairs])
    result["cost_us_ci"] = median_ci([1e6 / a["wall"] - 1e6 / b["wall"] for a, b in pairs])
    return result


def logged_rates(output_dir: Path, warmup: int) -> dict[str, float]:
    """Medians of the rates in the trainer's own metrics.jsonl rows after the warm-up (tokens/s, MFU)."""
    rows = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines() if line]
    rows = [r for r in rows if r.get("step", 0) > warmup and "tokens_per_s" in r]
    return {k: statistics.median(r[k] for r in rows) for k in ("tokens_per_s", "mfu") if rows and k in rows[0]}

