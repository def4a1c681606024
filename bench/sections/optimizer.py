"""One optimizer step: RandomScaledSGD against SGD(foreach=True) and the tutorial's per-parameter loop.

100 tensors x 100k params, one step of each in turn; the ratio is the median of the per-round ratios.
The same with 1-element tensors gives each optimizer's fixed (Python) cost.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from bench.sections import Context
from bench.stats import UNDECIDED, Repeats, interval, ratio_ci, target, verdict

BOUND = 1.0  # RandomScaledSGD's step time / SGD(foreach=True)'s


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


def run(ctx: Context) -> dict[str, Any]:
    """One `step()` of each optimizer, 100 tensors x 100k params (and x 1 param: the fixed Python cost).

    The three in-place optimizers share one set of parameters and gradients (no memory-placement
    difference between them; lr 1e-3 keeps the values tame); the tutorial's, which replaces every
    `param.data`, gets its own copy. Steps are taken one at a time in a random order per round, so a
    slow spell of the machine hits every optimizer alike; the median and the best step are reported.
    """
    args, device = ctx.args, ctx.device
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
    rounds = (5 if args.quick else 40) * args.repeats
    samples = measure(n_tensors, numel, rounds)
    extra = Repeats(0, args.budget_s)  # more rounds while the target is undecided, within --budget-s
    while extra.more(lambda: verdict(ratio_ci(samples["random_scaled_sgd"], samples["sgd_foreach"]), "<=",
                                     BOUND) == UNDECIDED):
        for name, values in measure(n_tensors, numel, rounds).items():
            samples[name].extend(values)
    fixed = measure(n_tensors, 1, (20 if args.quick else 200) * args.repeats)
    ms = {name: statistics.median(v) for name, v in samples.items()}
    best = {name: min(v) for name, v in samples.items()}
    fixed_us = {name: statistics.median(v) * 1e3 for name, v in fixed.items()}

    def paired(a: str, b: str) -> float:  # median over rounds of a/b, the two steps of one round side by side
        return statistics.median(x / y for x, y in zip(samples[a], samples[b], strict=True))

    return {
        "tensors": n_tensors, "numel_per_tensor": numel, "steps_per_optimizer": len(samples["sgd_foreach"]),
        "step_ms": ms, "best_step_ms": best, "fixed_cost_us_1_param_tensors": fixed_us,
        "ratio_ci": {"random_scaled_sgd_vs_sgd_foreach": ratio_ci(samples["random_scaled_sgd"],
                                                                  samples["sgd_foreach"])},
        "ratios": {"random_scaled_sgd_vs_sgd_foreach": paired("random_scaled_sgd", "sgd_foreach"),
                   "tutorial_per_param_vs_random_scaled_sgd": paired("tutorial_per_param", "random_scaled_sgd")},
        "ratio_of_medians": {"random_scaled_sgd_vs_sgd_foreach": ms["random_scaled_sgd"] / ms["sgd_foreach"]},
        "best_ratios": {"random_scaled_sgd_vs_sgd_foreach": best["random_scaled_sgd"] / best["sgd_foreach"]},
    }


def report(results: dict[str, Any]) -> None:
    o = results["optimizer"]
    print(f"\n-- optimizer step, {o['tensors']} tensors x {o['numel_per_tensor']} params")
    base, best_base = o["step_ms"]["sgd_foreach"], o["best_step_ms"]["sgd_foreach"]
    print(f"{'optimizer':22s} {'median':>9s} {'vs SGD foreach':>14s} {'best':>9s} {'vs':>7s} "
          f"{'fixed cost (100 x 1 param)':>27s}")
    for name, ms in o["step_ms"].items():
        best = o["best_step_ms"][name]
        print(f"{name:22s} {ms:6.3f} ms {ms / base:13.3f}x {best:6.3f} ms {best / best_base:6.3f}x "
              f"{o['fixed_cost_us_1_param_tensors'][name]:24.1f} us")
    key = "random_scaled_sgd_vs_sgd_foreach"
    print(f"RandomScaledSGD / SGD(foreach), median of per-round ratios: {o['ratios'][key]:.4f} "
          f"{interval(o['ratio_ci'][key])} ({o['steps_per_optimizer']} rounds, one process)")


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    o = results["optimizer"]
    key = "random_scaled_sgd_vs_sgd_foreach"
    return [target("RandomScaledSGD.step / SGD(foreach) step time", o["ratios"][key], "<=", BOUND,
                   o["best_ratios"][key], "best of steps", o["ratio_ci"][key], o["steps_per_optimizer"])]


def ratios(results: dict[str, Any]) -> dict[str, float]:
    return {f"optimizer.{k}": v for k, v in results["optimizer"]["ratios"].items()}
