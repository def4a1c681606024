#!/usr/bin/env python
"""Benchmark the template's trainer against hand-written loops, and its side costs.

    python scripts/benchmark.py [--out bench.json] [--threads 1] [--device cpu|cuda] [--repeats 5]
                                [--sections throughput,optimizer,overhead,gpu_sync,sync,wandb,startup,gpt,data]
                                [--quick] [--no-lightning] [--no-compile]

Sections (all by default; `--quick`: few steps, one repeat, small model only, no Lightning, no
2-process or W&B runs, the GPT with compile off only):

- throughput: optimizer updates per second of `template.trainer.train(cfg)` (called in a worker process on a
  config from `load_config(configs/default.yaml, overrides)`: no W&B, no progress bar, no checkpoints,
  no eval, no plots, log_every=10) against, on the same model, data, optimizer (RandomScaledSGD), lr
  schedule (WarmupCosineLR, stepped after every update), clipping and seed:
    raw        a hand-written PyTorch loop: index the TensorDataset with a fresh permutation per epoch,
               forward, backward, clip, step, zero_grad, scheduler.step(), `loss.item()` every 10 updates.
               It draws its permutations like the trainer's sampler, so it must end with bit-identical
               parameters (`same_params_as_trainer` checks that the comparison is like for like).
    raw_tuned  the raw loop after the trainer's malloc setting (template/host_memory.py: glibc keeps freed
               memory instead of page-faulting each update's activations in again): the trainer's own
               overhead at equal allocator settings.
    accelerate a plain Accelerate loop as the docs show it: Accelerator(cpu=...), prepare(model, optimizer,
               DataLoader(shuffle=True, drop_last=True), scheduler), accelerator.backward/clip_grad_norm_.
    lightning  lightning.Trainer on a LightningModule doing the same (when `lightning` is importable:
               `pip install -e ".[bench]"`; otherwise skipped with a note).
  for a small MLP (the default config's: in 8, hidden 64, depth 2, batch 64) and a mid-size one
  (in 256, hidden 1024, depth 4, batch 256).

  How updates/s is measured, the same way for every loop: torch's global optimizer step post-hook
  (`register_optimizer_step_post_hook`) records `perf_counter()` (and this process's CPU time) after
  each `optimizer.step()`. The rate is (N - W) / (t[N] - t[W]) over updates W+1..N: setup (imports,
  Accelerator, model and data construction, process-group start), the first W warm-up updates and
  everything after the last update (final digests, model.safetensors) are excluded; everything a loop
  does between updates (data, forward, backward, clipping, logging, lr stepping) is included. N - W is a
  multiple of 10, so every window holds the same number of log rows. Every run is a fresh worker process
  (`--worker-loop`), so no loop inherits another's allocator settings, imports or caches. On CUDA the
  two boundary timestamps synchronize the device first. The hook costs well under a microsecond per
  update, paid alike by every loop. Each repeat runs every loop once, in rotated order; a ratio is the
  median over repeats of that repeat's ratio (the loops of one repeat ran back to back, so a slow spell
  of a shared machine hits both sides). Updates per CPU-second are printed beside as a cross-check:
  other processes on the machine disturb CPU time far less than wall time.

- optimizer: `RandomScaledSGD.step()` against `torch.optim.SGD(foreach=True)` and the tutorial's
  per-parameter loop (`param.data = param.data - lr * factor * param.grad`), 100 tensors x 100k params,
  one step of each in turn; the ratio is the median of the per-round ratios. The same with 1-element
  tensors gives each optimizer's fixed (Python) cost.

- overhead: where the trainer's per-update time beyond the raw loop goes, one component at a time
  (each timed alone, the trainer's way minus the raw loop's way, microseconds per update), and what
  Accelerate's wrappers would add where the trainer calls the wrapped object directly.

- gpu_sync (--device cuda only): host-device synchronisations per update under
  `torch.cuda.set_sync_debug_mode("warn")`; the target is none on updates that do not log.
- sync (2 processes): the trainer under `accelerate launch --multi_gpu --num_processes 2` (gloo on CPU)
  with distributed.sync_check_every=1 against 0; the difference is the cost of one `check_lr_sync`,
  reported as a fraction of the update time at the default cadence (every 100 updates).
- wandb: the trainer with tracking.wandb=true (WANDB_MODE=offline) against false at the default
  log_every=10, small MLP; the cost per row is also set against the mid MLP's update time.
  Both run the trainer in subprocesses through this script's `--worker-out` mode, timed as above.
- startup: wall time from starting `python scripts/train.py` (max_steps=10) to its first metrics row
  and to its exit, for the shipped default config (W&B offline, eval, checkpoints, plots) and a lean one;
  the import time of `template.trainer` alone (timed in a fresh interpreter, and `python -X importtime`
  for its heaviest imports); and the first `torch.optim.Optimizer` of a process, which imports
  torch._dynamo (every loop pays it once).

- data: samples/s of the data sources through the trainer's loader code, the in-memory TensorDataset
  against `hf` and `hf_stream` on the same rows, beside the small MLP's own rate (scripts/bench_data.py).

- gpt: tokens per second of the trainer on configs/gpt.yaml (its GPT, byte tokens memmapped from
  train.bin, AdamW with the `no_decay` group, warmup-cosine lr, clip 1.0; overrides as in throughput)
  against, on the same model, data order, optimizer, lr and seed:
    nanogpt    a nanoGPT-style hand-written loop (run_nanogpt, readable on its own): model built after
               torch.manual_seed, batches gathered from the memmap's windows in GlobalBatchSampler's
               order, AdamW on two hand-made param groups, lr set on the param groups before each update by
               the WarmupCosineLR formula, clip_grad_norm_, zero_grad(set_to_none=True), `loss.item()`
               every 10 updates. Same training, so on CPU it must end with the trainer's exact
               parameters (`same_params_as_trainer`, per mode; on CUDA, kernels that accumulate with
               atomics, such as attention's backward, may differ in the last bits from run to run).
    nanogpt_tuned  the same after the trainer's malloc setting (as raw_tuned above): on CPU, glibc's default
               thresholds page-fault much of each update's activations in again (~3x the trainer's minor
               faults on this model), which the trainer avoids; this isolates the trainer's own overhead.
  each with compile off (`eager`) and on (`compile`: train.compile=true for the trainer, the same in-place
  `model.compile()` for the raw loops), the six runs of a repeat in rotated order, timed as above (tokens/s
  = updates/s x batch x block). Compile time stays out of the rate (it falls in the warm-up updates) and
  is reported apart as the first update's time less the eager one's (the trainer's from its summary.json):
  each loop has its own inductor cache (TORCHINDUCTOR_CACHE_DIR), empty at the first repeat (`cold`), warm
  at the later ones (`warm`, what a rerun sees). Compile on/off speedup per loop is the median of
  per-repeat ratios. The model: on CPU configs/gpt.yaml's as
  shipped (4 layers, 4 heads, 128 wide, block 128), batch 16; with `--device cuda` GPT-2 small's shape
  (12 x 12 x 768, block 1024, byte vocabulary), batch 16, bf16 (train.mixed_precision=bf16, torch.autocast
  in the raw loop), with MFU where the GPU's peak is known (template/throughput.py) beside the trainer's
  own logged tokens/s and MFU. Token files: data/stdlib_bytes if scripts/prepare_text.py wrote it, else
  prepared into the work dir. `--no-compile` (and `--quick`): compile off only.

Targets (PASS/FAIL in the table and in the JSON): trainer >= 0.95x raw (small) and >= 0.98x raw (mid),
faster than plain Accelerate and Lightning on both; trainer >= 0.98x the nanoGPT loop's tokens/s with
compile off and on; RandomScaledSGD.step <= 1.0x SGD(foreach=True); lr sync check and W&B logging each
<= 2% of the update time at the default cadence.
"""

from __future__ import annotations

import os
import sys


def _requested_device(argv: list[str]) -> str:
    for i, arg in enumerate(argv):
        if arg == "--device" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--device="):
            return arg.split("=", 1)[1]
    return "cpu"


# The trainer takes CUDA whenever torch sees it, so a CPU benchmark must hide the GPUs before torch loads.
if _requested_device(sys.argv[1:]) == "cpu" and "--worker-out" not in sys.argv:
    os.environ["CUDA_VISIBLE_DEVICES"] = ""

import argparse  # noqa: E402
import fnmatch  # noqa: E402
import gc  # noqa: E402
import importlib.util  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from dataclasses import asdict, dataclass, replace  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

import torch  # noqa: E402
from torch.optim.optimizer import register_optimizer_step_post_hook  # noqa: E402

from template.config import DEFAULT_CONFIG, Config, load_config  # noqa: E402

SECTIONS = ("throughput", "optimizer", "overhead", "gpu_sync", "sync", "wandb", "startup", "gpt", "data")
QUICK_SECTIONS = ("throughput", "optimizer", "overhead", "startup", "gpt")
LOG_EVERY = 10  # the trainer's default cadence; every loop reads the loss this often


@dataclass(frozen=True)
class ModelSpec:
    name: str
    in_features: int
    hidden: int
    depth: int
    batch: int
    warmup: int  # updates excluded from the timing
    measured: int  # timed updates (a multiple of LOG_EVERY)
    data_size: int = 4096

    @property
    def steps(self) -> int:
        return self.warmup + self.measured


SPECS = {
    "small": ModelSpec("small", in_features=8, hidden=64, depth=2, batch=64, warmup=50, measured=1500),
    "mid": ModelSpec("mid", in_features=256, hidden=1024, depth=4, batch=256, warmup=5, measured=100),
}


@dataclass(frozen=True)
class GPTSpec:
    """The gpt section's model (configs/gpt.yaml's GPT, resized) and batch, per device."""

    n_layer: int
    n_head: int
    n_embd: int
    block_size: int
    batch: int
    warmup: int  # updates excluded from the timing: with compile on, the first one compiles
    measured: int  # timed updates (a multiple of LOG_EVERY)
    name: str = "gpt"

    @property
    def steps(self) -> int:
        return self.warmup + self.measured

    @property
    def tokens_per_update(self) -> int:
        return self.batch * self.block_size


GPT_SPECS = {
    # configs/gpt.yaml's model as shipped, batch 16: ~0.14 s an update on one core
    "cpu": GPTSpec(n_layer=4, n_head=4, n_embd=128, block_size=128, batch=16, warmup=10, measured=100),
    # GPT-2 small's shape (with the byte vocabulary, 256), 16 x 1024 tokens an update in bf16
    "cuda": GPTSpec(n_layer=12, n_head=12, n_embd=768, block_size=1024, batch=16, warmup=10, measured=50),
}


# ---------------------------------------------------------------------------------------------------------
# timing helpers


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
        self._handle: Any = None

    def _hook(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self.cuda and len(self.wall) in (self.warmup - 1, self.total - 1):
            torch.cuda.synchronize()
        self.wall.append(time.perf_counter())
        self.cpu.append(time.process_time())

    def __enter__(self) -> StepClock:
        self._handle = register_optimizer_step_post_hook(self._hook)
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.remove()

    def rates(self) -> dict[str, float]:
        """Updates per second of wall time and per CPU-second, over updates warmup+1..total; and one over the
        median update's wall time (`wall_median`: a cross-check that a burst of other work barely moves)."""
        if len(self.wall) != self.total:
            raise RuntimeError(f"expected {self.total} optimizer updates, the hook saw {len(self.wall)}")
        n = self.total - self.warmup
        timed = self.wall[self.warmup - 1:]
        return {"wall": n / (self.wall[-1] - self.wall[self.warmup - 1]),
                "cpu": n / max(self.cpu[-1] - self.cpu[self.warmup - 1], 1e-9),
                "wall_median": 1 / max(statistics.median(b - a for a, b in itertools.pairwise(timed)), 1e-12)}


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
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    return json.loads(result.read_text())


# ---------------------------------------------------------------------------------------------------------
# configs


def trainer_overrides(spec: ModelSpec, steps: int, output_dir: Path | str) -> list[str]:
    """The default config on `spec`'s model and data, stripped of everything but training and logging."""
    return [
        f"output_dir={output_dir}", "train.resume=none", f"train.max_steps={steps}", f"train.batch_size={spec.batch}",
        f"model.kwargs={{in_features: {spec.in_features}, hidden: {spec.hidden}, depth: {spec.depth}}}",
        f"data.kwargs={{size: {spec.data_size}, eval_size: 512, in_features: {spec.in_features}}}",
        "tracking.wandb=false", "train.progress=false", "train.checkpoint_every=0", "train.eval_every=0",
        "train.plots=false", f"train.log_every={LOG_EVERY}",
    ]


def bench_config(spec: ModelSpec, steps: int, output_dir: Path | str, extra: list[str] | None = None) -> Config:
    cfg = load_config(DEFAULT_CONFIG, [*trainer_overrides(spec, steps, output_dir), *(extra or [])])
    s = cfg.scheduler
    if (s.strategy, s.name, cfg.optimizer.name, cfg.loss.name) != (
            "subclass", "warmup_cosine", "random_scaled_sgd", "simple_mse"):
        raise SystemExit(f"error: the hand-written loops assume the default config's parts, got {cfg}")
    return cfg


def build_common(cfg: Config, device: torch.device) -> tuple[Any, ...]:
    """Model, loss, optimizer, scheduler and data the way the trainer builds them, by hand."""
    from template.data import synthetic_regression
    from template.losses import SimpleMSELoss
    from template.models import MLP
    from template.optim import RandomScaledSGD
    from template.schedules.subclass import WarmupCosineLR

    torch.manual_seed(cfg.seed)  # what the trainer's set_seed does for torch, before building the model
    model = MLP(**cfg.model.kwargs).to(device)
    loss_fn = SimpleMSELoss()
    optimizer = RandomScaledSGD(model.parameters(), lr=cfg.optimizer.lr, weight_decay=cfg.optimizer.weight_decay,
                                seed=cfg.seed)
    scheduler = WarmupCosineLR(optimizer, **cfg.scheduler.kwargs)
    train_set, _ = synthetic_regression(cfg.seed, **cfg.data.kwargs)
    return model, loss_fn, optimizer, scheduler, train_set


# ---------------------------------------------------------------------------------------------------------
# 1. the training loops


def run_raw(cfg: Config, device: torch.device) -> dict[str, Any]:
    from template.distributed import param_digest

    model, loss_fn, optimizer, scheduler, train_set = build_common(cfg, device)
    x_all, y_all = train_set.tensors
    batch, steps, clip = cfg.train.batch_size, cfg.train.max_steps, cfg.train.clip_grad_norm
    per_epoch = len(x_all) // batch
    params = list(model.parameters())
    model.train()
    step = 0
    for epoch in itertools.count():
        # The trainer's sampler draws epoch e's order from seed*100_003+e: the same order makes the
        # two runs bit-comparable (same_params_as_trainer).
        order = torch.randperm(len(x_all), generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch))
        for u in range(per_epoch):
            idx = order[u * batch:(u + 1) * batch]
            x, y = x_all[idx].to(device), y_all[idx].to(device)
            loss = loss_fn(model(x), y)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            step += 1
            if step % LOG_EVERY == 0:
                _ = loss.item(), grad_norm.item()
            if step == steps:
                return {"param_digest": param_digest(model)}
    raise AssertionError("unreachable")


def run_raw_tuned(cfg: Config, device: torch.device) -> dict[str, Any]:
    """The raw loop with the trainer's malloc thresholds: the trainer's own overhead at equal allocator settings."""
    from template.host_memory import keep_freed_memory

    keep_freed_memory()
    return run_raw(cfg, device)


def run_trainer(cfg: Config, device: torch.device) -> dict[str, Any]:
    from template.trainer import train

    summary = train(cfg)
    return {"param_digest": summary["param_digest"], "first_update_s": summary["first_update_s"]}


def run_accelerate(cfg: Config, device: torch.device) -> dict[str, Any]:
    from accelerate import Accelerator
    from torch.utils.data import DataLoader

    accelerator = Accelerator(cpu=device.type == "cpu")
    model, loss_fn, optimizer, scheduler, train_set = build_common(cfg, torch.device("cpu"))
    loader = DataLoader(train_set, batch_size=cfg.train.batch_size, shuffle=True, drop_last=True)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    model.train()
    step, steps = 0, cfg.train.max_steps
    while step < steps:
        for x, y in loader:
            loss = loss_fn(model(x), y)
            accelerator.backward(loss)
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.train.clip_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            step += 1
            if step % LOG_EVERY == 0:
                _ = loss.item(), grad_norm.item()
            if step == steps:
                break
    return {}


def lightning_available() -> bool:
    return importlib.util.find_spec("lightning") is not None


def run_lightning(cfg: Config, device: torch.device) -> dict[str, Any]:
    import lightning as L
    from torch.utils.data import DataLoader

    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    model, loss_fn, optimizer, scheduler, train_set = build_common(cfg, torch.device("cpu"))

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model, self.loss_fn = model, loss_fn

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            loss = self.loss_fn(self.model(x), y)
            self.log("train/loss", loss)
            return loss

        def configure_optimizers(self) -> Any:
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    trainer = L.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, max_steps=cfg.train.max_steps,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        gradient_clip_val=cfg.train.clip_grad_norm, log_every_n_steps=LOG_EVERY, num_sanity_val_steps=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(Module(), DataLoader(train_set, batch_size=cfg.train.batch_size, shuffle=True, drop_last=True))
    return {}


LOOPS: dict[str, Callable[[Config, torch.device], dict[str, Any]]] = {
    "raw": run_raw, "raw_tuned": run_raw_tuned, "trainer": run_trainer, "accelerate": run_accelerate,
    "lightning": run_lightning,
}


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
    """
    out: dict[str, Any] = {"updates_per_s": {}, "cpu_updates_per_s": {}, "ratios": {}, "cpu_ratios": {},
                           "ratio_of_medians": {}, "paired_ratios": {}}
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
    out["update_time_us"] = {label: 1e6 / v["median"] for label, v in out["updates_per_s"].items()}
    out["cpu_time_us"] = {label: 1e6 / v["median"] for label, v in out["cpu_updates_per_s"].items()}
    return out


def loop_in_worker(args: argparse.Namespace, loop: str, spec: ModelSpec | GPTSpec, out_dir: Path,
                   device: torch.device, extra: list[str] | None = None,
                   **env: str) -> tuple[dict[str, float], dict[str, Any]]:
    """One timed run of `loop` in a fresh interpreter (`--worker-loop`): the trainer sets process-wide malloc
    thresholds (template/host_memory.py), and no loop should inherit another's allocator or import state."""
    result = out_dir.with_suffix(".json")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker-loop", loop, "--worker-model", spec.name,
           "--worker-out", str(result), "--threads", str(args.threads), "--device", device.type,
           f"--worker-measured={spec.measured}", f"--worker-warmup={spec.warmup}",
           *(extra or [])]
    env = child_env(args.threads, **({"CUDA_VISIBLE_DEVICES": ""} if device.type == "cpu" else {}), **env)
    data = run_worker_process(cmd, env, result)
    return data["rates"], data["info"]


def run_loop_worker(args: argparse.Namespace) -> None:
    """`--worker-loop LOOP --worker-model M --worker-out FILE`: one timed run, written as JSON."""
    gpt = args.worker_model == "gpt"
    spec: ModelSpec | GPTSpec = GPT_SPECS[args.device] if gpt else SPECS[args.worker_model]
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


def section_throughput(args: argparse.Namespace, device: torch.device, workdir: Path) -> dict[str, Any]:
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
        for r in range(args.repeats):
            order = loops[r % len(loops):] + loops[:r % len(loops)]
            digests = {}
            for loop in order:
                rates, info = loop_in_worker(args, loop, spec, workdir / f"{spec.name}-{loop}-{r}", device)
                runs[loop].append(rates)
                digests[loop] = info.get("param_digest")
                if "threads_changed_to" in info:
                    notes.append(f"{loop} changed torch threads to {info['threads_changed_to']}")
                print(f"  {spec.name:5s} repeat {r + 1}/{args.repeats} {loop:10s} {rates['wall']:10.1f} updates/s "
                      f"({rates['cpu']:.1f} per CPU-s)", flush=True)
            same_params.append(digests["raw"] == digests["trainer"] == digests["raw_tuned"])
        result["models"][spec.name] = {"spec": asdict(spec), **compare(runs, "trainer"),
                                       "same_params_as_trainer": all(same_params)}
    return result


# ---------------------------------------------------------------------------------------------------------
# 2. optimizer step


class TutorialRandomSGD(torch.optim.Optimizer):
    """The tutorial's MyOptimizer, with its random factor actually drawn: one new tensor per parameter."""

    def __init__(self, params: Any, lr: float) -> None:
        self.lr = lr
        super().__init__(params, {})

    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        random_num = random.random()
        for param_group in self.param_groups:
            for param in param_group["params"]:
                param.data = param.data - self.lr * random_num * param.grad


def section_optimizer(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """One `step()` of each optimizer, 100 tensors x 100k params (and x 1 param: the fixed Python cost).

    The three in-place optimizers share one set of parameters and gradients (no memory-placement
    difference between them; lr 1e-3 keeps the values tame); the tutorial's, which replaces every
    `param.data`, gets its own copy. Steps are taken one at a time in a random order per round, so a
    slow spell of the machine hits every optimizer alike; the median and the best step are reported.
    """
    from template.optim import RandomScaledSGD

    torch.set_num_threads(args.threads)
    makers: dict[str, Callable[[list[torch.Tensor]], torch.optim.Optimizer]] = {
        "random_scaled_sgd": lambda ps: RandomScaledSGD(ps, lr=1e-3, seed=0),
        "sgd_foreach": lambda ps: torch.optim.SGD(ps, lr=1e-3, foreach=True),
        "sgd_for_loop": lambda ps: torch.optim.SGD(ps, lr=1e-3, foreach=False),
        "tutorial_per_param": lambda ps: TutorialRandomSGD(ps, lr=1e-3),
    }

    def tensors(n: int, numel: int, g: torch.Generator) -> list[torch.Tensor]:
        params = [torch.randn(numel, generator=g).to(device).requires_grad_() for _ in range(n)]
        for p in params:
            p.grad = torch.randn(numel, generator=g).to(device) * 1e-3
        return params

    def timed_step(opt: torch.optim.Optimizer) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - start) * 1e3

    def measure(n: int, numel: int, rounds: int) -> dict[str, list[float]]:
        g = torch.Generator().manual_seed(0)
        shared, own = tensors(n, numel, g), tensors(n, numel, g)
        optimizers = {name: make(own if name == "tutorial_per_param" else shared) for name, make in makers.items()}
        for opt in optimizers.values():  # warm-up
            timed_step(opt)
        samples: dict[str, list[float]] = {name: [] for name in optimizers}
        # The in-place three in a fresh random order each round; the tutorial's (which allocates a new
        # tensor per parameter, and would slow whichever step follows it) in rounds of its own.
        in_place = [name for name in optimizers if name != "tutorial_per_param"]
        order = random.Random(0)
        for _ in range(rounds):
            order.shuffle(in_place)
            for name in in_place:
                samples[name].append(timed_step(optimizers[name]))
        for _ in range(rounds):
            samples["tutorial_per_param"].append(timed_step(optimizers["tutorial_per_param"]))
        return samples

    n_tensors, numel = 100, 100_000
    samples = measure(n_tensors, numel, (5 if args.quick else 40) * args.repeats)
    fixed = measure(n_tensors, 1, (20 if args.quick else 200) * args.repeats)
    ms = {name: statistics.median(v) for name, v in samples.items()}
    best = {name: min(v) for name, v in samples.items()}
    fixed_us = {name: statistics.median(v) * 1e3 for name, v in fixed.items()}

    def paired(a: str, b: str) -> float:  # median over rounds of a/b, the two steps of one round side by side
        return statistics.median(x / y for x, y in zip(samples[a], samples[b], strict=True))

    return {
        "tensors": n_tensors, "numel_per_tensor": numel, "steps_per_optimizer": len(samples["sgd_foreach"]),
        "step_ms": ms, "best_step_ms": best, "fixed_cost_us_1_param_tensors": fixed_us,
        "ratios": {"random_scaled_sgd_vs_sgd_foreach": paired("random_scaled_sgd", "sgd_foreach"),
                   "tutorial_per_param_vs_random_scaled_sgd": paired("tutorial_per_param", "random_scaled_sgd")},
        "ratio_of_medians": {"random_scaled_sgd_vs_sgd_foreach": ms["random_scaled_sgd"] / ms["sgd_foreach"]},
        "best_ratios": {"random_scaled_sgd_vs_sgd_foreach": best["random_scaled_sgd"] / best["sgd_foreach"]},
    }


# ---------------------------------------------------------------------------------------------------------
# 3. where the trainer's overhead goes (small model, in-process, one component at a time)


def section_overhead(args: argparse.Namespace, device: torch.device, workdir: Path) -> dict[str, Any]:
    """Each row: one part of an update done the trainer's way minus the raw loop's way (µs per update).

    The parts are the trainer's own objects (its Accelerator, prepared model and optimizer, batches,
    UpdateStep, LRSchedule, Tracker), each timed alone in a tight loop; best of several repeats (timeit's
    convention: interference from other processes only ever adds time). The `detail` rows are what
    Accelerate's wrappers would add where the trainer calls the wrapped object directly
    (template/update.py); they are not part of the sum.
    """
    from tqdm.auto import tqdm

    from template.data import GlobalBatchSampler, make_loader
    from template.distributed import make_accelerator
    from template.parts import build_parts
    from template.schedules.subclass import WarmupCosineLR
    from template.tracking import Tracker, training_row
    from template.update import UpdateStep

    torch.set_num_threads(args.threads)
    spec = args.specs[0]
    cfg = bench_config(spec, 10**6, workdir / "overhead")
    t = cfg.train
    accelerator = make_accelerator(t.mixed_precision)
    parts = build_parts(cfg, accelerator.num_processes)
    model, optimizer = accelerator.prepare(parts.model, parts.optimizer)
    inner = optimizer.optimizer
    loss_fn = parts.loss_fn.to(device)
    params = list(model.parameters())
    calls, repeats = (100, 3) if args.quick else (1000, 9)

    x_all, y_all = parts.train_set.tensors  # type: ignore[attr-defined]
    sampler = GlobalBatchSampler(len(x_all), t.batch_size, t.grad_accum_steps, 1, 0, cfg.seed)
    batches = iter(make_loader(parts.train_set, sampler, cfg.data.num_workers, False))

    def raw_batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for epoch in itertools.count():
            order = torch.randperm(len(x_all), generator=torch.Generator().manual_seed(epoch))
            for u in range(len(x_all) // t.batch_size):
                idx = order[u * t.batch_size:(u + 1) * t.batch_size]
                yield x_all[idx], y_all[idx]

    raw_iter = raw_batches()
    x, y = (v.to(device) for v in next(batches))
    update = UpdateStep(accelerator, model, optimizer, loss_fn, t.grad_accum_steps, t.clip_grad_norm,
                        skip_nonfinite=False)
    same_batch = itertools.repeat((x, y))

    def raw_update() -> None:
        loss = loss_fn(model(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, t.clip_grad_norm)
        inner.step()
        inner.zero_grad(set_to_none=True)

    def fresh_grads() -> None:
        loss_fn(model(x), y).backward()

    schedule = parts.schedule
    scheduler_raw = WarmupCosineLR(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1),
                                   **cfg.scheduler.kwargs)
    counter = itertools.count(1)
    loss_t, grad_norm = torch.tensor(0.5), torch.tensor(0.3)

    Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
    tracker = Tracker(accelerator, cfg)
    progress = tqdm(total=10, disable=True)

    def log_row() -> None:  # what the trainer does once per log_every updates, W&B off
        loss_value = loss_t.item()
        lrs = schedule.lrs()
        tracker.log(training_row(10, lrs, loss_value, 0.1, {"samples_per_s": 1.0}, grad_norm))
        progress.set_postfix(loss=f"{loss_value:.4g}", lr=f"{next(iter(lrs.values())):.3g}", refresh=False)

    def raw_log() -> None:
        _ = loss_t.item(), grad_norm.item()

    rows: list[dict[str, Any]] = []
    warnings.filterwarnings("ignore", message=r".*lr_scheduler\.step\(\)", category=UserWarning)

    def add(component: str, trainer_way: Callable[[], object], raw_way: Callable[[], object],
            per_update: float = 1.0, detail: bool = False) -> None:
        tr, rw = best_per_call_us(trainer_way, raw_way, calls, repeats)
        rows.append({"component": component, "trainer_us": tr * per_update, "raw_us": rw * per_update,
                     "delta_us_per_update": (tr - rw) * per_update, "detail": detail})

    def nothing() -> None:
        pass

    add("data: next(TensorBatches) vs tensor[perm slice] per batch", lambda: next(batches), lambda: next(raw_iter))
    add("UpdateStep: forward, backward, clip, step, zero_grad vs raw", lambda: update(same_batch, False), raw_update)
    add("schedule.after_update vs scheduler.step", lambda: schedule.after_update(next(counter)), scheduler_raw.step)
    add("tqdm(disable=True).update(1)", lambda: progress.update(1), nothing)
    add(f"log row / {LOG_EVERY} (lrs, item, metrics.jsonl write+flush, postfix)", log_row, raw_log,
        per_update=1 / LOG_EVERY)
    fresh_grads()  # the wrappers below need gradients to clip and step
    add("  bypassed: accelerator.backward vs Tensor.backward",
        lambda: accelerator.backward(loss_fn(model(x), y)), lambda: loss_fn(model(x), y).backward(), detail=True)
    add("  bypassed: accelerator.clip_grad_norm_ vs clip_grad_norm_(list)",
        lambda: accelerator.clip_grad_norm_(model.parameters(), 1e9),
        lambda: torch.nn.utils.clip_grad_norm_(params, 1e9), detail=True)
    add("  bypassed: AcceleratedOptimizer.step vs RandomScaledSGD.step", optimizer.step, inner.step, detail=True)
    add("  bypassed: AcceleratedOptimizer.zero_grad vs .zero_grad", lambda: optimizer.zero_grad(set_to_none=True),
        lambda: inner.zero_grad(set_to_none=True), detail=True)
    tracker.close()
    total = sum(r["delta_us_per_update"] for r in rows if not r["detail"])
    return {"model": spec.name, "rows": rows, "sum_delta_us_per_update": total}


# ---------------------------------------------------------------------------------------------------------
# 4. subprocess runs: 2-process lr sync check, W&B logging, startup


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
    worker = [str(Path(__file__).resolve()), "--worker-out", str(result), "--worker-warmup", str(spec.warmup),
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
            nproc: int, env: dict[str, str]) -> dict[str, list[dict[str, float]]]:
    runs: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    for r in range(args.repeats):
        for label, extra in (list(variants.items()) if r % 2 == 0 else list(variants.items())[::-1]):
            info = worker_run(args, spec, workdir / f"{name}-{label}-{r}", extra, nproc, env)
            if info["world_size"] != nproc:
                raise RuntimeError(f"{name}: expected world size {nproc}, got {info['world_size']}")
            runs[label].append(info["rates"])
            print(f"  {name:5s} repeat {r + 1}/{args.repeats} {label:12s} {info['rates']['wall']:10.1f} updates/s "
                  f"({info['rates']['cpu']:.1f} per CPU-s)", flush=True)
    return runs


def extra_cost(runs: dict[str, list[dict[str, float]]], on: str, off: str) -> dict[str, Any]:
    """Per-update cost of `on` over `off`: median over repeats of the paired difference of update times."""
    result = compare(runs, on)
    for clock, key in (("wall", "cost_us_per_update"), ("cpu", "cpu_cost_us_per_update")):
        result[key] = statistics.median(1e6 / a[clock] - 1e6 / b[clock] for a, b in zip(runs[on], runs[off],
                                                                                          strict=True))
    result["base_update_time_us"] = result["update_time_us"][off]
    return result


def section_gpu_sync(args: argparse.Namespace, device: torch.device, workdir: Path) -> dict[str, Any]:
    """On CUDA: host-device synchronisations per update, from `torch.cuda.set_sync_debug_mode("warn")`.

    The trainer runs in-process with the mode on from its first update on; each warning is charged to
    the update after which it came (counted by the optimizer step post-hook). Those after log updates
    (the loss is read there) and after the last one are expected; the target is none after the others.
    On a CPU machine the same property is a test (tests/test_host_reads.py).
    """
    if device.type != "cuda":
        return {"skipped": "needs --device cuda"}
    from template.trainer import train

    spec = SPECS["small"]
    steps = 100 if args.quick else 300
    cfg = bench_config(spec, steps, workdir / "gpu-sync")
    boundaries: list[int] = []  # number of warnings seen when each update finished
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")

        def hook(*_: Any) -> None:
            boundaries.append(len(caught))
            if len(boundaries) == 1:
                torch.cuda.set_sync_debug_mode("warn")

        handle = register_optimizer_step_post_hook(hook)
        try:
            train(cfg)
        finally:
            handle.remove()
            torch.cuda.set_sync_debug_mode("default")
    boundaries.append(len(caught))
    per_update = {k: boundaries[k] - boundaries[k - 1] for k in range(1, len(boundaries))}  # after update k
    logged = {k for k in per_update if k % LOG_EVERY == 0 or k >= steps}
    others = {k: n for k, n in per_update.items() if k not in logged and n}
    examples = sorted({str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message)})[:5]
    return {"updates": steps, "log_every": LOG_EVERY,
            "syncs_after_log_updates": sum(n for k, n in per_update.items() if k in logged),
            "syncs_after_other_updates": sum(others.values()), "updates_with_syncs": sorted(others)[:20],
            "examples": examples}


def section_sync(args: argparse.Namespace, device: torch.device, workdir: Path) -> dict[str, Any]:
    spec = replace(SPECS["small"], warmup=50, measured=2000) if not args.quick else args.specs[0]
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    backend = "nccl" if gpus >= 2 else "gloo"
    env = child_env(args.threads, **({} if gpus >= 2 else {"CUDA_VISIBLE_DEVICES": ""}))
    runs = ab_runs(args, spec, workdir, "sync", {"every_1": ["distributed.sync_check_every=1"],
                                                 "every_0": ["distributed.sync_check_every=0"]}, 2, env)
    cost = extra_cost(runs, "every_1", "every_0")
    per_check, base = cost["cost_us_per_update"], cost["base_update_time_us"]
    return {"model": spec.name, "processes": 2, "backend": backend, **cost, "check_cost_us": per_check,
            "fraction_at_every_100": per_check / 100 / base, "fraction_at_every_1": per_check / base}


def section_wandb(args: argparse.Namespace, device: torch.device, workdir: Path) -> dict[str, Any]:
    """W&B on against off at the default cadence (a row every LOG_EVERY updates), small MLP.

    Measured at the cadence itself, not scaled from logging every update: a row's cost depends on how
    often rows come (measured here: wandb's client and the cache misses it leaves behind cost more per
    row when rows are rarer). The fraction for a longer update (the mid MLP's, from the throughput
    section when it ran) assumes the same cost per row, which does not depend on the model.
    """
    spec = replace(SPECS["small"], warmup=50, measured=3000) if not args.quick else args.specs[0]
    env = child_env(args.threads, WANDB_MODE="offline",
                    **({"CUDA_VISIBLE_DEVICES": ""} if device.type == "cpu" else {}))
    runs = ab_runs(args, spec, workdir, "wandb", {"wandb_true": ["tracking.wandb=true"],
                                                  "wandb_false": ["tracking.wandb=false"]}, 1, env)
    cost = extra_cost(runs, "wandb_true", "wandb_false")
    per_update, base = cost["cost_us_per_update"], cost["base_update_time_us"]
    return {"model": spec.name, "log_every": LOG_EVERY, **cost, "cost_us_per_logged_row": per_update * LOG_EVERY,
            "fraction_at_log_every_10": per_update / base}


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


def section_startup(args: argparse.Namespace, device: torch.device, workdir: Path) -> dict[str, Any]:
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


# ---------------------------------------------------------------------------------------------------------
# 5. a GPT: the trainer against a nanoGPT-style loop, torch.compile off and on

GPT_CONFIG = ROOT / "configs" / "gpt.yaml"
# The hand-written loop's parameters without weight decay, the way configs/gpt.yaml's `no_decay` group names them.
NO_DECAY_PATTERNS = ["*.bias", "*ln_*", "transformer.wpe.weight"]


def gpt_config(spec: GPTSpec, output_dir: Path | str, data_dir: Path | str, compile_model: bool,
               device: torch.device) -> Config:
    """configs/gpt.yaml on `spec`'s model and batch, stripped of everything but training and logging."""
    overrides = [
        f"output_dir={output_dir}", "train.resume=none", f"train.max_steps={spec.steps}",
        f"train.batch_size={spec.batch}", f"model.kwargs.n_layer={spec.n_layer}", f"model.kwargs.n_head={spec.n_head}",
        f"model.kwargs.n_embd={spec.n_embd}", f"model.kwargs.block_size={spec.block_size}",
        f"data.kwargs.dir={data_dir}",
        "tracking.wandb=false", "train.progress=false", "train.checkpoint_every=0", "train.eval_every=0",
        "train.plots=false", f"train.log_every={LOG_EVERY}", f"train.compile={str(compile_model).lower()}",
        *(["train.mixed_precision=bf16"] if device.type == "cuda" else []),
    ]
    cfg = load_config(GPT_CONFIG, overrides)
    if cfg.scheduler.kwargs["warmup_steps"] >= spec.steps:  # --quick: fewer updates than the config's lr warm-up
        cfg = load_config(GPT_CONFIG, [*overrides, f"scheduler.kwargs.warmup_steps={spec.steps // 2}"])
    s, o = cfg.scheduler, cfg.optimizer
    groups = [(g.name, g.params, g.lr, g.weight_decay) for g in o.groups]
    if ((s.strategy, s.name, s.interval, o.name, cfg.loss.name, cfg.model.name, cfg.data.name) != (
            "subclass", "warmup_cosine", "step", "adamw", "next_token", "gpt", "tokens")
            or groups != [("no_decay", NO_DECAY_PATTERNS, None, 0.0)] or cfg.model.kwargs["dropout"]
            or cfg.train.grad_accum_steps != 1 or not cfg.train.clip_grad_norm):
        raise SystemExit(f"error: the nanoGPT-style loop assumes configs/gpt.yaml's parts, got {cfg}")
    return cfg


def run_nanogpt(cfg: Config, device: torch.device) -> dict[str, Any]:
    """nanoGPT's training loop (train.py), cut down to what configs/gpt.yaml does; it reads on its own.

    The same training as `template.trainer.train(cfg)`, so that the two end with the same parameters:
    the model is built right after seeding torch with the run's seed; the batches are the same windows
    of `block_size + 1` tokens of the memmapped train.bin in the same order (epoch e is a permutation of
    the window ids seeded with seed * 100_003 + e, as GlobalBatchSampler draws it, where nanoGPT draws
    random offsets); AdamW on two parameter groups (no weight decay on biases, LayerNorms and the
    position embedding); the lr of WarmupCosineLR set by hand before each update (nanoGPT's `get_lr`);
    clipping; the loss read on the host only every LOG_EVERY updates. `train.compile` compiles the model
    in place (as the trainer does: parameter names stay plain); on CUDA the forward runs under bf16 autocast.
    """
    import numpy as np
    import torch.nn.functional as F

    from template.distributed import param_digest
    from template.gpt import GPT

    opt, lr_kw, t = cfg.optimizer, cfg.scheduler.kwargs, cfg.train
    block_size, batch_size = cfg.model.kwargs["block_size"], t.batch_size
    data_dir = Path(cfg.data.kwargs["dir"])
    dtype = np.dtype(json.loads((data_dir / "meta.json").read_text())["dtype"])  # nanoGPT reads meta.pkl
    num_windows = ((data_dir / "train.bin").stat().st_size // dtype.itemsize - 1) // block_size
    cuda = device.type == "cuda"

    torch.manual_seed(cfg.seed)
    model = GPT(**cfg.model.kwargs).to(device)
    if t.compile:
        model.compile()
    decay = [p for n, p in model.named_parameters() if not any(fnmatch.fnmatchcase(n, g) for g in NO_DECAY_PATTERNS)]
    no_decay = [p for n, p in model.named_parameters() if any(fnmatch.fnmatchcase(n, g) for g in NO_DECAY_PATTERNS)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": opt.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=opt.lr, **opt.kwargs)

    def get_lr(it: int) -> float:  # WarmupCosineLR's lr for update `it` (0-based), the same float ops
        warmup, total, min_ratio = lr_kw["warmup_steps"], lr_kw["total_steps"], lr_kw["min_lr_ratio"]
        if it < warmup:
            return opt.lr * ((it + 1) / warmup)
        progress = min(1.0, (it - warmup) / (total - warmup))
        return opt.lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))

    def get_batch(windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        data = np.memmap(data_dir / "train.bin", dtype=dtype, mode="r")  # nanoGPT maps the file anew per batch
        starts = (windows * block_size).tolist()
        x = torch.stack([torch.from_numpy(data[i:i + block_size].astype(np.int64)) for i in starts])
        y = torch.stack([torch.from_numpy(data[i + 1:i + 1 + block_size].astype(np.int64)) for i in starts])
        if cuda:
            return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
        return x, y

    params = list(model.parameters())
    model.train()
    step, started, first_update_s = 0, time.perf_counter(), 0.0
    for epoch in itertools.count():
        order = torch.randperm(num_windows, generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch))
        for u in range(num_windows // batch_size):
            lr = get_lr(step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x, y = get_batch(order[u * batch_size:(u + 1) * batch_size])
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=t.mixed_precision == "bf16"):
                logits = model(x)
                loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1), ignore_index=-1)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, t.clip_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if step == 1:
                first_update_s = time.perf_counter() - started  # with compile on: the compile time
            if step % LOG_EVERY == 0:
                _ = loss.item(), grad_norm.item()
            if step == t.max_steps:
                return {"param_digest": param_digest(model), "first_update_s": first_update_s}
    raise AssertionError("unreachable")


def run_nanogpt_tuned(cfg: Config, device: torch.device) -> dict[str, Any]:
    """The nanoGPT loop with the trainer's malloc thresholds: the trainer's own overhead at equal allocator settings."""
    from template.host_memory import keep_freed_memory

    keep_freed_memory()
    return run_nanogpt(cfg, device)


LOOPS.update(nanogpt=run_nanogpt, nanogpt_tuned=run_nanogpt_tuned)
GPT_LOOPS = ("nanogpt", "nanogpt_tuned", "trainer")


def logged_rates(output_dir: Path, warmup: int) -> dict[str, float]:
    """Medians of the rates in the trainer's own metrics.jsonl rows after the warm-up (tokens/s, MFU)."""
    rows = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines() if line]
    rows = [r for r in rows if r.get("step", 0) > warmup and "tokens_per_s" in r]
    return {k: statistics.median(r[k] for r in rows) for k in ("tokens_per_s", "mfu") if rows and k in rows[0]}


def token_data(workdir: Path) -> Path:
    """Byte-level token files: data/stdlib_bytes when scripts/prepare_text.py wrote it there, else written now."""
    shipped = ROOT / "data" / "stdlib_bytes"
    meta = shipped / "meta.json"
    if (shipped / "train.bin").is_file() and meta.is_file() and json.loads(meta.read_text()).get("dtype") == "uint8":
        return shipped
    out = workdir / "stdlib_bytes"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "prepare_text.py"), "--out", str(out)], cwd=ROOT,
                   check=True, capture_output=True, timeout=300)
    return out


def section_data(args: argparse.Namespace) -> dict[str, Any]:
    """scripts/bench_data.py (needs the data extra: pip install -e ".[data]")."""
    from bench_data import data_section

    return data_section(args)


def section_gpt(args: argparse.Namespace, device: torch.device, workdir: Path) -> dict[str, Any]:
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
    from template.gpt import GPT
    from template.throughput import device_peak_flops

    spec = args.gpt_spec
    data_dir = token_data(workdir)
    modes = ["eager", "compile"] if args.compile and not args.quick else ["eager"]
    variants = [(mode, loop) for mode in modes for loop in GPT_LOOPS]
    runs: dict[tuple[str, str], list[dict[str, float]]] = {v: [] for v in variants}
    first_update: dict[tuple[str, str], list[float]] = {v: [] for v in variants}
    logged: dict[str, list[dict[str, float]]] = {mode: [] for mode in modes}
    same_params: dict[str, list[bool]] = {mode: [] for mode in modes}
    for r in range(args.repeats):
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
            print(f"  gpt   repeat {r + 1}/{args.repeats} {mode:8s} {loop:14s} "
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
        }
        if peak:
            result["modes"][mode]["mfu"] = {loop: v["median"] * flops_per_token / peak for loop, v in tokens.items()}
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


# ---------------------------------------------------------------------------------------------------------
# report


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    checks: list[dict[str, Any]] = []

    def check(name: str, value: float, op: str, bound: float, other: float, other_name: str) -> None:
        ok = value >= bound if op == ">=" else value <= bound
        checks.append({"target": name, "value": value, "bound": f"{op} {bound:g}", "pass": ok,
                       "cross_check": other, "cross_check_is": other_name})

    for name, model in results.get("throughput", {}).get("models", {}).items():
        r, c = model["ratios"], model["cpu_ratios"]
        for loop, bound in (("raw", 0.95 if name == "small" else 0.98), ("accelerate", 1.0), ("lightning", 1.0)):
            key = f"trainer_vs_{loop}"
            if key in r:
                check(f"{name}: trainer / {loop} updates/s", r[key], ">=", bound, c[key], "per CPU-second")
    for mode, m in results.get("gpt", {}).get("modes", {}).items():
        check(f"gpt ({mode}): trainer / nanoGPT loop tokens/s", m["ratios"]["trainer_vs_nanogpt"], ">=", 0.98,
              m["cpu_ratios"]["trainer_vs_nanogpt"], "per CPU-second")
    if "optimizer" in results:
        o = results["optimizer"]
        check("RandomScaledSGD.step / SGD(foreach) step time", o["ratios"]["random_scaled_sgd_vs_sgd_foreach"],
              "<=", 1.0, o["best_ratios"]["random_scaled_sgd_vs_sgd_foreach"], "best of steps")
    if "syncs_after_other_updates" in results.get("gpu_sync", {}):
        n = results["gpu_sync"]["syncs_after_other_updates"]
        check("host-device syncs on updates that do not log", n, "<=", 0, results["gpu_sync"]["updates"], "updates")
    if "sync" in results:
        s = results["sync"]
        check("lr sync check / update time (every 100)", s["fraction_at_every_100"], "<=", 0.02,
              s["cpu_cost_us_per_update"] / 100 / s["cpu_time_us"]["every_0"], "CPU time")
    if "wandb" in results:
        w = results["wandb"]
        check(f"W&B logging / update time ({w['model']}, log_every 10)", w["fraction_at_log_every_10"], "<=", 0.02,
              w["cpu_cost_us_per_update"] / w["cpu_time_us"]["wandb_false"], "CPU time, this process only")
        for name, frac in w.get("fraction_for_model", {}).items():
            check(f"W&B logging / update time ({name}, log_every 10)", frac, "<=", 0.02, frac, "same")
    return checks


def print_report(results: dict[str, Any]) -> None:
    meta = results["meta"]
    print(f"\n== benchmark: {meta['device']} ({meta['cpu']}, {meta['cpu_count']} cores), torch {meta['torch']}, "
          f"{meta['threads']} thread(s), median of {meta['repeats']} repeat(s); load average "
          f"{meta['loadavg_start'][0]:.1f} at start, {meta['loadavg_end'][0]:.1f} at end")
    if "throughput" in results:
        tp = results["throughput"]
        for name, model in tp["models"].items():
            s = model["spec"]
            print(f"\n-- throughput, {name} MLP (in {s['in_features']}, hidden {s['hidden']}, depth {s['depth']}, "
                  f"batch {s['batch']}; {s['measured']} timed updates after {s['warmup']} warm-up)")
            print(f"{'loop':12s} {'updates/s':>10s} {'min':>9s} {'max':>9s} {'us/update':>10s} {'trainer is':>10s}"
                  f" {'(per repeat)':>15s} {'per CPU-s':>10s} {'trainer is':>10s}")
            for loop, v in model["updates_per_s"].items():
                key = f"trainer_vs_{loop}"
                ratio = cpu_ratio = spread = ""
                if loop != "trainer":
                    ratio, cpu_ratio = f"{model['ratios'][key]:.3f}x", f"{model['cpu_ratios'][key]:.3f}x"
                    spread = f"{min(model['paired_ratios'][key]):.2f}-{max(model['paired_ratios'][key]):.2f}"
                print(f"{loop:12s} {v['median']:10.1f} {v['min']:9.1f} {v['max']:9.1f} "
                      f"{model['update_time_us'][loop]:10.1f} {ratio:>10s} {spread:>15s} "
                      f"{model['cpu_updates_per_s'][loop]['median']:10.1f} {cpu_ratio:>10s}")
            print(f"raw loop ends with the trainer's exact parameters: {model['same_params_as_trainer']}")
        for note in tp["notes"]:
            print(f"note: {note}")
    if "optimizer" in results:
        o = results["optimizer"]
        print(f"\n-- optimizer step, {o['tensors']} tensors x {o['numel_per_tensor']} params")
        base, best_base = o["step_ms"]["sgd_foreach"], o["best_step_ms"]["sgd_foreach"]
        print(f"{'optimizer':22s} {'median':>9s} {'vs SGD foreach':>14s} {'best':>9s} {'vs':>7s} "
              f"{'fixed cost (100 x 1 param)':>27s}")
        for name, ms in o["step_ms"].items():
            best = o["best_step_ms"][name]
            print(f"{name:22s} {ms:6.3f} ms {ms / base:13.3f}x {best:6.3f} ms {best / best_base:6.3f}x "
                  f"{o['fixed_cost_us_1_param_tensors'][name]:24.1f} us")
        print(f"RandomScaledSGD / SGD(foreach), median of per-round ratios: "
              f"{o['ratios']['random_scaled_sgd_vs_sgd_foreach']:.4f}")
    if "overhead" in results:
        ov = results["overhead"]
        print(f"\n-- trainer overhead per update vs raw loop, {ov['model']} MLP, components timed alone (us)")
        print(f"{'component':64s} {'trainer':>9s} {'raw':>9s} {'delta':>9s}")
        for row in ov["rows"]:
            print(f"{row['component'][:64]:64s} {row['trainer_us']:9.2f} {row['raw_us']:9.2f} "
                  f"{row['delta_us_per_update']:9.2f}")
        print(f"{'sum of the component deltas (bypassed rows excluded)':64s} {'':9s} {'':9s} "
              f"{ov['sum_delta_us_per_update']:9.2f}")
        small = results.get("throughput", {}).get("models", {}).get(ov["model"])
        if small:
            wall = small["update_time_us"]["trainer"] - small["update_time_us"]["raw"]
            cpu = small["cpu_time_us"]["trainer"] - small["cpu_time_us"]["raw"]
            print(f"{'measured trainer - raw in the throughput section: wall / CPU':64s} {'':9s} {wall:9.2f} "
                  f"{cpu:9.2f}")
    if "gpu_sync" in results:
        g = results["gpu_sync"]
        if "skipped" in g:
            print(f"\n-- host-device syncs per update: skipped ({g['skipped']})")
        else:
            print(f"\n-- host-device syncs (set_sync_debug_mode), {g['updates']} updates: "
                  f"{g['syncs_after_log_updates']} after log updates, {g['syncs_after_other_updates']} after the "
                  f"others {g['updates_with_syncs'] or ''}")
            for line in g["examples"]:
                print(f"  {line}")
    if "sync" in results:
        s = results["sync"]
        print(f"\n-- lr sync check, {s['processes']} processes ({s['backend']}), {s['model']} MLP")
        print(f"updates/s every=1 {s['updates_per_s']['every_1']['median']:.1f}, every=0 "
              f"{s['updates_per_s']['every_0']['median']:.1f}; one check {s['check_cost_us']:.1f} us "
              f"(CPU {s['cpu_cost_us_per_update']:.1f} us) = {100 * s['fraction_at_every_1']:.2f}% of an update "
              f"({s['base_update_time_us']:.1f} us); at every=100: {100 * s['fraction_at_every_100']:.3f}%")
    if "wandb" in results:
        w = results["wandb"]
        print(f"\n-- W&B offline logging, {w['model']} MLP, a row every {w['log_every']} updates")
        print(f"updates/s wandb=true {w['updates_per_s']['wandb_true']['median']:.1f}, false "
              f"{w['updates_per_s']['wandb_false']['median']:.1f}; {w['cost_us_per_logged_row']:.1f} us per logged "
              f"row (CPU {w['cpu_cost_us_per_update'] * w['log_every']:.1f} us, this process) = "
              f"{100 * w['fraction_at_log_every_10']:.2f}% of a {w['base_update_time_us']:.1f} us update")
        for name, frac in w.get("fraction_for_model", {}).items():
            print(f"  the same cost per row on the {name} MLP's update: {100 * frac:.3f}%")
    if "startup" in results:
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
    if "gpt" in results:
        g = results["gpt"]
        s = g["spec"]
        print(f"\n-- gpt: trainer vs nanoGPT-style loop (n_layer {s['n_layer']}, n_head {s['n_head']}, n_embd "
              f"{s['n_embd']}, block {s['block_size']}, batch {s['batch']} = {g['tokens_per_update']} tokens an update"
              f"{', bf16' if g['mixed_precision'] else ''}; {s['measured']} timed updates after {s['warmup']} warm-up)")
        print(f"{'':61s} {' trainer is ':-^37s}")
        print(f"{'mode':8s} {'loop':14s} {'tokens/s':>9s} {'min':>8s} {'max':>8s} {'ms/update':>9s} "
              f"{'wall':>7s} {'(per repeat)':>13s} {'CPU':>7s} {'median':>7s} {'1st update':>10s}"
              + (f" {'MFU':>6s}" if g["peak_flops"] else ""))
        for mode, m in g["modes"].items():
            for loop, v in m["tokens_per_s"].items():
                ratio = spread = cpu = median = ""
                if loop != "trainer":
                    key = f"trainer_vs_{loop}"
                    ratio, cpu = f"{m['ratios'][key]:.3f}x", f"{m['cpu_ratios'][key]:.3f}x"
                    median = f"{m['median_update_ratios'][key]:.3f}x"
                    spread = "-".join(f"{f(m['paired_ratios'][key]):.2f}" for f in (min, max))
                first = "/".join(f"{x:.1f}" for x in m["first_update_runs_s"][loop][:2]) if mode == "compile" else (
                    f"{m['first_update_s'][loop]:.2f}")
                print(f"{mode:8s} {loop:14s} {v['median']:9.0f} {v['min']:8.0f} {v['max']:8.0f} "
                      f"{m['update_time_us'][loop] / 1e3:9.1f} {ratio:>7s} {spread:>13s} {cpu:>7s} {median:>7s} "
                      f"{first:>9s}s" + (f" {m['mfu'][loop]:6.1%}" if "mfu" in m else ""))
            logged = m["trainer_logged"]
            print(f"{mode:8s} trainer's own rows: {logged.get('tokens_per_s', float('nan')):.0f} tokens/s"
                  + (f", MFU {logged['mfu']:.1%}" if "mfu" in logged else "")
                  + f"; nanoGPT loops end with the trainer's exact parameters: {m['same_params_as_trainer']}")
        if "compile_speedup" in g:
            print("compile on / off, tokens/s (and compile seconds: cold cache, warm cache): " + ", ".join(
                f"{loop} {x:.3f}x ({g['compile_s'][loop]['cold']:.1f} s, " + (
                    f"{warm:.1f} s)" if (warm := g["compile_s"][loop]["warm"]) is not None else "-)")
                for loop, x in g["compile_speedup"].items()))
            print("(1st update column, compile: the first repeat's / the second's, cold / warm inductor cache)")
        for note in g.get("notes", []):
            print(f"note: {note}")
    if "data" in results:
        from bench_data import print_data_section

        print_data_section(results["data"])
    print("\n-- targets")
    for t in results["targets"]:
        print(f"{'PASS' if t['pass'] else 'FAIL'}  {t['target']:48s} {t['value']:8.4f}  (target {t['bound']}; "
              f"{t['cross_check_is']}: {t['cross_check']:.4f})")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process (default 1)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--repeats", type=int, default=None, help="repeats per measurement (default 5; --quick: 1)")
    p.add_argument("--sections", default=None,
                   help=f"comma-separated subset of {','.join(SECTIONS)} (default all; --quick: "
                        f"{','.join(QUICK_SECTIONS)})")
    p.add_argument("--models", default=None, help="comma-separated subset of small,mid (default both; --quick: small)")
    p.add_argument("--no-lightning", dest="lightning", action="store_false", help="skip the Lightning loop")
    p.add_argument("--no-compile", dest="compile", action="store_false",
                   help="gpt section: compile off only (as --quick does)")
    p.add_argument("--quick", action="store_true", help="a smoke run: few steps, one repeat, small model only")
    p.add_argument("--worker-out", help=argparse.SUPPRESS)
    p.add_argument("--worker-loop", choices=tuple(LOOPS), help=argparse.SUPPRESS)
    p.add_argument("--worker-model", choices=(*SPECS, "gpt"), default="small", help=argparse.SUPPRESS)
    p.add_argument("--worker-data", help=argparse.SUPPRESS)
    p.add_argument("--worker-compile", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--worker-measured", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--worker-warmup", type=int, default=10, help=argparse.SUPPRESS)
    p.add_argument("--override", action="append", default=[], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker_out:
        return args
    args.repeats = args.repeats or (1 if args.quick else 5)
    sections = args.sections.split(",") if args.sections else list(QUICK_SECTIONS if args.quick else SECTIONS)
    bad = [s for s in sections if s not in SECTIONS]
    if bad:
        p.error(f"unknown section(s) {bad}; choose from {', '.join(SECTIONS)}")
    args.sections = sections
    models = args.models.split(",") if args.models else (["small"] if args.quick else ["small", "mid"])
    if any(m not in SPECS for m in models):
        p.error(f"--models: choose from {', '.join(SPECS)}")
    args.specs = [replace(SPECS[m], warmup=10, measured=50) if args.quick else SPECS[m] for m in models]
    args.gpt_spec = replace(GPT_SPECS[args.device], warmup=2, measured=10) if args.quick else GPT_SPECS[args.device]
    if args.quick:
        args.lightning = False
    if args.threads < 1 or args.repeats < 1:
        p.error("--threads and --repeats must be >= 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch sees no CUDA device")
    return args


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
        "loadavg_start": os.getloadavg(),
    }}
    with tempfile.TemporaryDirectory(prefix="template-bench-") as tmp:
        workdir = Path(tmp)
        steps: dict[str, Callable[[], dict[str, Any]]] = {
            "throughput": lambda: section_throughput(args, device, workdir),
            "optimizer": lambda: section_optimizer(args, device),
            "overhead": lambda: section_overhead(args, device, workdir),
            "gpu_sync": lambda: section_gpu_sync(args, device, workdir),
            "sync": lambda: section_sync(args, device, workdir),
            "wandb": lambda: section_wandb(args, device, workdir),
            "startup": lambda: section_startup(args, device, workdir),
            "gpt": lambda: section_gpt(args, device, workdir),
            "data": lambda: section_data(args),
        }
        for section in args.sections:
            print(f"[{section}]", flush=True)
            results[section] = steps[section]()
    results["meta"]["loadavg_end"] = os.getloadavg()
    if "wandb" in results:  # the per-row cost against the other models' update times
        w = results["wandb"]
        w["fraction_for_model"] = {
            name: w["cost_us_per_logged_row"] / LOG_EVERY / model["update_time_us"]["trainer"]
            for name, model in results.get("throughput", {}).get("models", {}).items() if name != w["model"]}
    results["targets"] = targets(results)
    results["ratios"] = {
        **{f"{m}.{k}": v for m, model in results.get("throughput", {}).get("models", {}).items()
           for k, v in model["ratios"].items()},
        **{f"optimizer.{k}": v for k, v in results.get("optimizer", {}).get("ratios", {}).items()},
        **{f"gpt.{mode}.{k}": v for mode, m in results.get("gpt", {}).get("modes", {}).items()
           for k, v in m["ratios"].items()},
        **{f"gpt.compile_speedup.{k}": v for k, v in results.get("gpt", {}).get("compile_speedup", {}).items()},
        **({"sync.check_fraction_at_every_100": results["sync"]["fraction_at_every_100"]} if "sync" in results else {}),
        **({"wandb.fraction_at_log_every_10": results["wandb"]["fraction_at_log_every_10"]}
           if "wandb" in results else {}),
    }
    print_report(results)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nwrote {args.out}")
    return results


if __name__ == "__main__":
    main()
