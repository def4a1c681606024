"""Optimizers selectable by `optimizer.name`, including the tutorial's custom one, and param groups."""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from template.config import OptimizerConfig
from template.errors import ConfigError
from template.optim.muon import build_muon
from template.registry import Registry

OPTIMIZERS: Registry = Registry("optimizer", "optimizer.name")


@OPTIMIZERS.register("random_scaled_sgd")
class RandomScaledSGD(torch.optim.Optimizer):
    """The tutorial's custom optimizer: SGD whose lr is multiplied each step by a random factor in [0, 1).

    Unlike the tutorial's version, the factor is a function of (seed, number of factors drawn so far), the
    way timm seeds its lr noise with seed + t: every rank draws the same factor (replicas cannot drift), and
    the count and the seed are plain optimizer state, kept on the first parameter (`state_dict()` carries
    them through any checkpoint, FSDP2's sharded optimizer state included, and a resume continues the same
    sequence). Keeping state also means torch's FSDP2 state-dict helpers see an initialised optimizer and do
    not run their lr-0 `step()` to create one. `factor` pins it (the tutorial's 0.4) for tests.
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
        self._seed = int(seed)
        self._generator = torch.Generator()
        self.last_factor: float | None = None
        self._linked: torch.Tensor | None = None
        self._link()  # state from the start: FSDP2's helpers then never run their lr-0 initialising step()

    def _link(self) -> dict[str, Any]:
        """Make every parameter's state the one dict holding `step` (factors drawn so far) and `seed`.

        Every parameter has state, as torch's strict FSDP2 optimizer loader requires, and it is one count.
        Relinking also follows parameters swapped for sharded ones (Accelerate's FSDP2 prepare moves no state).
        """
        params = [p for group in self.param_groups for p in group["params"]]
        draws = next((s for s in self.state.values() if "seed" in s), None) or {"step": 0, "seed": self._seed}
        self.state.clear()
        for p in params:
            self.state[p] = draws
        self._linked = params[0]
        return draws

    def draw_factor(self) -> float:
        """The next factor: uniform in [0, 1) from a generator seeded with (seed, draws so far)."""
        first: torch.Tensor = self.param_groups[0]["params"][0]
        draws = self.state[first] if first is self._linked else self._link()
        count = draws["step"]
        draws["step"] = count + 1
        self._generator.manual_seed(draws["seed"] * 1_000_003 + count)
        drawn = torch.rand((), generator=self._generator).item()
        return drawn if self.factor is None else self.factor

    @property
    def draws(self) -> int:
        """How many factors this optimizer has drawn (its steps, and any direct `draw_factor` calls)."""
        return int(self._link()["step"])

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)  # one copy per parameter: link them into one again
        self._link()

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


def _torch_optimizer(cls: Any) -> Callable[..., torch.optim.Optimizer]:
    def build(params: Iterable[Any], lr: float, weight_decay: float = 0.0, seed: int = 0, **kwargs: Any):
        return cls(params, lr=lr, weight_decay=weight_decay, **kwargs)

    build.__name__ = cls.__name__
    return build


OPTIMIZERS.add("sgd", _torch_optimizer(torch.optim.SGD))
OPTIMIZERS.add("adam", _torch_optimizer(torch.optim.Adam))
OPTIMIZERS.add("adamw", _torch_optimizer(torch.optim.AdamW))
OPTIMIZERS.add("muon", build_muon)  # torch's Muon for hidden matrices + AdamW for the rest (template/optim/muon.py)


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


def _takes_model(factory: Any) -> bool:
    try:
        return "model" in inspect.signature(factory).parameters
    except (TypeError, ValueError):  # no signature to read (a builtin): an optimizer of the usual kind
        return False


def build_optimizer(model: nn.Module, cfg: OptimizerConfig, seed: int) -> torch.optim.Optimizer:
    """`seed` (the run's) seeds optimizer randomness unless `optimizer.kwargs.seed` pins its own. A factory
    that declares a `model` argument gets the model too: splitting parameters by name or layer (as `muon`
    does) needs more than the param groups."""
    kwargs = {"seed": seed, **cfg.kwargs}
    if _takes_model(OPTIMIZERS.get(cfg.name)):
        kwargs["model"] = model
    return OPTIMIZERS.build(cfg.name, param_groups(model, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay, **kwargs)
