"""Where the trainer's per-update time beyond the raw loop goes, one component at a time (small MLP, in-process).

Each component is timed alone, the trainer's way minus the raw loop's way, in microseconds per update;
the `detail` rows are what Accelerate's wrappers would add where the trainer calls the wrapped object
directly.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from bench.configs import LOG_EVERY, bench_config
from bench.harness import best_per_call_us
from bench.sections import Context


def run(ctx: Context) -> dict[str, Any]:
    """Each row: one part of an update done the trainer's way minus the raw loop's way (µs per update).

    The parts are the trainer's own objects (its Accelerator, prepared model and optimizer, batches,
    UpdateStep, LRSchedule, Tracker), each timed alone in a tight loop; best of several repeats (timeit's
    convention: interference from other processes only ever adds time). The `detail` rows are what
    Accelerate's wrappers would add where the trainer calls the wrapped object directly
    (template/update.py); they are not part of the sum.
    """
    args, device, workdir = ctx.args, ctx.device, ctx.workdir
    from tqdm.auto import tqdm

    from template.data import GlobalBatchSampler, make_loader
    from template.parts import build_parts
    from template.reporting.tracking import Tracker, training_row
    from template.runtime.distributed import make_accelerator
    from template.schedules.subclass import WarmupCosineLR
    from template.trainer import UpdateStep

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
    tracker.start(0)
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


def report(results: dict[str, Any]) -> None:
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
