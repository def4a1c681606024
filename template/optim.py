"""Optimizers selectable by `optimizer.name`, including the tutorial's custom one, and param groups."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from template.config import ConfigError, OptimizerConfig
from template.registry import Registry

OPTIMIZERS: Registry = Registry("optimizer", "optimizer.name")


@OPTIMIZERS.register("random_scaled_sgd")
class RandomScaledSGD(torch.optim.Optimizer):
    """The tutorial's custom optimizer: SGD whose lr is multiplied each step by a random factor in [0, 1).

    Unlike the tutorial's version, the factor comes from the optimizer's own seeded generator, whose
    state travels in `state_dict()`: every rank draws the same factor (replicas cannot drift) and a
    resumed run continues the same sequence. `factor` pins it (the tutorial's 0.4) for tests.
    Parameters are updated in place with multi-tensor `_foreach` kernels: no new tensor per parameter.
    """

    def __init__(
        self, params: Iterable[Any], lr: float = 0.1, weight_decay: float = 0.0, seed: int = 0,
        factor: float | None = None,
    ) -> None:
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if factor is not None and not 0.0 <= factor < 1.0:
            raise ValueError(f"factor must be in [0, 1), got {factor}")
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay})
        self.factor = factor
        self.generator = torch.Generator().manual_seed(seed)
        self.last_factor: float | None = None

    def draw_factor(self) -> float:
        drawn = torch.rand((), generator=self.generator).item()
        return drawn if self.factor is None else self.factor

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        factor = self.last_factor = self.draw_factor()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            if any(p.grad.is_sparse for p in params):
                raise RuntimeError("RandomScaledSGD does not support sparse gradients")
            step = group["lr"] * factor
            if group["weight_decay"]:
                torch._foreach_mul_(params, 1.0 - step * group["weight_decay"])
            torch._foreach_add_(params, [p.grad for p in params], alpha=-step)
        return loss

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["generator"] = self.generator.get_state()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        generator_state = state_dict.pop("generator", None)
        super().load_state_dict(state_dict)
        if generator_state is not None:
            self.generator.set_state(generator_state.cpu() if hasattr(generator_state, "cpu") else generator_state)


def _torch_optimizer(cls: Any) -> Callable[..., torch.optim.Optimizer]:
    def build(params: Iterable[Any], lr: float, weight_decay: float = 0.0, seed: int = 0, **kwargs: Any):
        return cls(params, lr=lr, weight_decay=weight_decay, **kwargs)

    build.__name__ = cls.__name__
    return build


OPTIMIZERS.add("sgd", _torch_optimizer(torch.optim.SGD))
OPTIMIZERS.add("adam", _torch_optimizer(torch.optim.Adam))
OPTIMIZERS.add("adamw", _torch_optimizer(torch.optim.AdamW))


def param_groups(model: nn.Module, cfg: OptimizerConfig) -> list[dict[str, Any]]:
    """Split parameters into named groups by glob on their names (first match wins), then 'default'.

    Each group keeps its own base lr and weight decay, and its `name` names its lr in the logs.
    """
    groups: list[dict[str, Any]] = [{"name": g.name, "params": [], "patterns": g.params} for g in cfg.groups]
    default: dict[str, Any] = {"name": "default", "params": []}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        target = next((g for g in groups if any(fnmatch.fnmatchcase(name, p) for p in g["patterns"])), default)
        target["params"].append(param)
    result = []
    for spec, group in zip(cfg.groups, groups, strict=True):
        if not group["params"]:
            raise ConfigError("optimizer.groups", f"group '{spec.name}' matches no parameter ({spec.params})")
        del group["patterns"]
        group["lr"] = spec.lr if spec.lr is not None else cfg.lr
        group["weight_decay"] = spec.weight_decay if spec.weight_decay is not None else cfg.weight_decay
        result.append(group)
    if default["params"]:
        result.insert(0, {**default, "lr": cfg.lr, "weight_decay": cfg.weight_decay})
    return result


def build_optimizer(model: nn.Module, cfg: OptimizerConfig, seed: int) -> torch.optim.Optimizer:
    """`seed` (the run's) seeds optimizer randomness unless `optimizer.kwargs.seed` pins its own."""
    kwargs = {"seed": seed, **cfg.kwargs}
    return OPTIMIZERS.build(cfg.name, param_groups(model, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay, **kwargs)
