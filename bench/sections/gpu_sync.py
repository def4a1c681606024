"""Host-device synchronisations per update (--device cuda only); the target is none on updates that do not log."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from bench.configs import LOG_EVERY, SPECS, bench_config
from bench.sections import Context
from bench.stats import target


def run(ctx: Context) -> dict[str, Any]:
    """On CUDA: host-device synchronisations per update, from `torch.cuda.set_sync_debug_mode("warn")`.

    The trainer runs in-process with the mode on from its first update on; each warning is charged to
    the update after which it came (counted by the optimizer step post-hook). Those after log updates
    (the loss is read there) and after the last one are expected; the target is none after the others.
    On a CPU machine the same property is a test (tests/test_host_reads.py).
    """
    args, device, workdir = ctx.args, ctx.device, ctx.workdir
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


def report(results: dict[str, Any]) -> None:
    g = results["gpu_sync"]
    if "skipped" in g:
        print(f"\n-- host-device syncs per update: skipped ({g['skipped']})")
    else:
        print(f"\n-- host-device syncs (set_sync_debug_mode), {g['updates']} updates: "
              f"{g['syncs_after_log_updates']} after log updates, {g['syncs_after_other_updates']} after the "
              f"others {g['updates_with_syncs'] or ''}")
        for line in g["examples"]:
            print(f"  {line}")


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    g = results["gpu_sync"]
    if "syncs_after_other_updates" not in g:
        return []
    return [target("host-device syncs on updates that do not log", g["syncs_after_other_updates"], "<=", 0,
                   g["updates"], "updates")]
