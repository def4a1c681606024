"""Startup: from starting `python scripts/train.py` to its first metrics row and its exit; import times.

For the shipped default config (W&B offline, eval, checkpoints, plots) and a lean one, max_steps=10;
the import time of `template.trainer` alone (timed in a fresh interpreter, and `python -X importtime`
for its heaviest imports); and the first `torch.optim.Optimizer` of a process, which imports
torch._dynamo (every loop pays it once).
"""

from __future__ import annotations

import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.configs import ROOT
from bench.harness import child_env
from bench.sections import Context


def import_profile(env: dict[str, str]) -> dict[str, Any]:
    """`python -X importtime -c 'import template.trainer'`: its total and its heaviest imports."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", "import template.trainer"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300, check=True)
    entries = []  # (depth, name, cumulative µs), children listed before their parent
    for line in proc.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( +)(\S+)$", line)
        if m:
            entries.append(((len(m.group(3)) - 1) // 2, m.group(4), int(m.group(2))))
    depth, trainer = next((d, c) for d, n, c in entries if n == "template.trainer")
    named = {"torch", "accelerate", "matplotlib.pyplot", "omegaconf", "numpy", "tqdm.auto", "safetensors.torch",
             "wandb", "yaml"}
    heavy = {n: c / 1e6 for d, n, c in entries if n in named or (n.startswith("template.") and d == depth + 1)}
    top = dict(sorted(heavy.items(), key=lambda kv: -kv[1])[:8])
    return {"import_template_trainer_s": trainer / 1e6, "all_imports_s": sum(c for d, _, c in entries if d == 0) / 1e6,
            "heaviest_s": top}


def first_optimizer_s(env: dict[str, str]) -> float:
    """The first torch.optim.Optimizer of a process imports torch._dynamo (any loop pays it once)."""
    code = ("import time, torch; t0 = time.perf_counter(); torch.optim.SGD([torch.zeros(1, requires_grad=True)], "
            "lr=0.1); print(time.perf_counter() - t0)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300, check=True)
    return float(proc.stdout.strip().splitlines()[-1])


def timed_import(env: dict[str, str]) -> dict[str, float]:
    code = ("import time; t0 = time.perf_counter(); import template.trainer; "
            "print(time.perf_counter() - t0)")
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300, check=True)
    wall = time.perf_counter() - started
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], cwd=ROOT, env=env, check=True, timeout=60)
    return {"import_s": float(proc.stdout.strip().splitlines()[-1]), "process_wall_s": wall,
            "bare_python_s": time.perf_counter() - started}


def time_train_command(args: list[str], env: dict[str, str], out: Path) -> dict[str, float]:
    """Wall time from spawning `python scripts/train.py ...` to its first metrics row, and to its exit."""
    metrics = out / "metrics.jsonl"
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "train.py"), f"output_dir={out}", *args],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    first_row = None
    while proc.poll() is None:
        if first_row is None and metrics.is_file() and metrics.stat().st_size > 0:
            first_row = time.perf_counter() - started
        time.sleep(0.002)
    exited = time.perf_counter() - started
    stderr = proc.stderr.read() if proc.stderr else ""
    if proc.returncode != 0:
        raise RuntimeError(f"train.py exited {proc.returncode}: {stderr[-3000:]}")
    return {"first_row_s": first_row if first_row is not None else exited, "exit_s": exited}


def run(ctx: Context) -> dict[str, Any]:
    args, device, workdir = ctx.args, ctx.device, ctx.workdir
    env = child_env(args.threads, **({"CUDA_VISIBLE_DEVICES": ""} if device.type == "cpu" else {}))
    tiny = ["train.max_steps=10", "scheduler.kwargs.warmup_steps=2", "train.resume=none"]
    variants = {"lean": [*tiny, "tracking.wandb=false", "train.plots=false", "train.checkpoint_every=0",
                         "train.eval_every=0", "train.progress=false"]}
    if not args.quick:
        variants["default_config"] = tiny  # as shipped: W&B offline, eval, checkpoint, plots, progress bar
    result: dict[str, Any] = {"max_steps": 10, "commands": {}}
    for label, extra in variants.items():
        runs = [time_train_command(extra, env, workdir / f"startup-{label}-{r}") for r in range(args.repeats)]
        result["commands"][label] = {k: statistics.median(r[k] for r in runs) for k in ("first_row_s", "exit_s")}
        result["commands"][label]["overrides"] = extra
    imports = [timed_import(env) for _ in range(args.repeats)]
    result["import"] = {k: statistics.median(i[k] for i in imports) for k in imports[0]}
    result["import"]["first_torch_optimizer_s"] = statistics.median(first_optimizer_s(env) for _ in range(args.repeats))
    result["import"].update(import_profile(env))
    return result


def report(results: dict[str, Any]) -> None:
    st = results["startup"]
    print(f"\n-- startup: python scripts/train.py, max_steps={st['max_steps']}")
    for label, v in st["commands"].items():
        print(f"{label:16s} first metrics row {v['first_row_s']:6.2f} s, exit {v['exit_s']:6.2f} s")
    imp = st["import"]
    print(f"import template.trainer: {imp['import_s']:.2f} s in-process ({imp['process_wall_s']:.2f} s process, "
          f"bare python {imp['bare_python_s']:.2f} s); -X importtime: {imp['import_template_trainer_s']:.2f} s")
    print("  heaviest (cumulative): " + ", ".join(f"{n} {s:.2f} s" for n, s in imp["heaviest_s"].items()))
    print("first torch.optim.Optimizer in a process (imports torch._dynamo): "
          f"{imp['first_torch_optimizer_s']:.2f} s")
