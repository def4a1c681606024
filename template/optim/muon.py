"""`optimizer.name: muon`: torch's `Muon` for the hidden layers' weight matrices, `AdamW` for everything else.

Muon orthogonalises the momentum of a 2-D weight (Newton-Schulz iterations) before applying it, which suits
the matrices of hidden layers only: embeddings, the output head (tied to the token embedding in our GPT),
norms and biases are left to AdamW, the split of Keller Jordan's `MuonWithAuxAdam`, modded-nanogpt and
torchtitan. The trainer still sees ONE optimizer: `MuonWithAdamW`'s `param_groups` are the two inner
optimizers' group dicts themselves, so every lr strategy (which writes `group["lr"]` and reads base lrs from
the groups) schedules both parts and the logs show `lr/<group>`; its `state_dict` is torch's usual one, a
single checkpoint entry that Accelerate prepares and moves like any other optimizer's.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from template.errors import ConfigError

MUON_PARAMS_KEY = "optimizer.kwargs.muon_params"


class MuonWithAdamW(torch.optim.Optimizer):
    """One optimizer made of a `torch.optim.Muon` and an optional `torch.optim.AdamW` on disjoint parameters.

    Its groups (AdamW's first, so group 0, the `lr` column, is `optimizer.lr`'s) and its state are shared with
    the inner optimizers, which do the updates; torch's own `state_dict` / `load_state_dict` then save and
    restore both parts, and the sharing is re-established after a load (torch replaces the group dicts).
    """

    def __init__(self, muon: torch.optim.Muon, adamw: torch.optim.AdamW | None = None) -> None:
        self.muon, self.adamw = muon, adamw
        super().__init__([*(adamw.param_groups if adamw else []), *muon.param_groups], {})
        self._share()

    def _share(self) -> None:
        split = len(self.adamw.param_groups) if self.adamw else 0
        self.muon.param_groups = self.param_groups[split:]
        self.muon.state = self.state  # one state, keyed by parameter: the parts' parameters are disjoint
        if self.adamw:
            self.adamw.param_groups = self.param_groups[:split]
            self.adamw.state = self.state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._share()

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.muon.step()
        if self.adamw:
            self.adamw.step()
        return loss


def hidden_matrices(model: nn.Module) -> list[torch.Tensor]:
    """The default Muon parameters: the weights of the model's hidden `nn.Linear` layers.

    Left out: the input layer (the first `nn.Linear` when it comes before any `nn.Embedding`, i.e. a layer
    reading raw features), the output layer (the last `nn.Linear`), and any weight shared with an embedding
    (a tied head), in the order the modules are registered.
    """
    layers = [m for m in model.modules() if isinstance(m, nn.Linear | nn.Embedding)]
    linears = [m for m in layers if isinstance(m, nn.Linear)]
    embedded = {id(m.weight) for m in layers if isinstance(m, nn.Embedding)}
    edges = {id(linears[-1])} if linears else set()
    if layers and isinstance(layers[0], nn.Linear):
        edges.add(id(layers[0]))
    return [m.weight for m in linears if id(m) not in edges and id(m.weight) not in embedded
            and m.weight.requires_grad]


def muon_parameters(model: nn.Module, patterns: Sequence[str] | None) -> list[torch.Tensor]:
    """The 2-D parameters Muon updates: those named by `patterns` (fnmatch globs), else `hidden_matrices`.

    A glob matching no 2-D parameter, or a model with no hidden matrix, is a ConfigError: a Muon part
    with nothing to do is a mistake (a typo, or a model Muon does not fit), not a run to start.
    """
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    matrices = [(name, p) for name, p in named if p.ndim == 2]
    if patterns is None:
        chosen = {id(p) for p in hidden_matrices(model)}
        if not chosen:
            raise ConfigError(MUON_PARAMS_KEY, "unset, and the model has no hidden nn.Linear weight for Muon (its "
                              "first and last Linear layers and weights tied to an embedding are AdamW's); "
                              f"name 2-D parameters by glob{_listing(matrices)}, or use optimizer.name=adamw")
        return [p for _, p in named if id(p) in chosen]
    if isinstance(patterns, str) or not patterns:
        raise ConfigError(MUON_PARAMS_KEY, f"must be a non-empty list of name globs, got {patterns!r}")
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(name, pattern) for name, _ in matrices):
            raise ConfigError(MUON_PARAMS_KEY, f"'{pattern}' matches no 2-D parameter (Muon updates matrices "
                              f"only){_listing(matrices)}")
    return [p for name, p in matrices if any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)]


def _listing(matrices: Sequence[tuple[str, torch.Tensor]], most: int = 6) -> str:
    if not matrices:
        return "; the model has no 2-D parameter"
    names = [name for name, _ in matrices]
    more = f", ... ({len(names)} in all)" if len(names) > most else ""
    return f"; its 2-D parameters: {', '.join(names[:most])}{more}"


def _positive(value: float, key: str, low: float = 0.0, inclusive: bool = False) -> None:
    if not (value >= low if inclusive else value > low):
        raise ConfigError(f"optimizer.kwargs.{key}", f"must be {'>=' if inclusive else '>'} {low:g}, got {value}")


def build_muon(
    params: Iterable[dict[str, Any]], lr: float, weight_decay: float = 0.0, seed: int = 0, *, model: nn.Module,
    muon_lr: float = 0.02, muon_weight_decay: float = 0.01, momentum: float = 0.95, nesterov: bool = True,
    ns_steps: int = 5, adjust_lr_fn: str | None = None, muon_params: Sequence[str] | None = None,
    betas: Sequence[float] = (0.9, 0.95), eps: float = 1e-10, fused: bool | None = None,
) -> MuonWithAdamW:
    """`optimizer.name: muon`. `params` are the run's param groups (`optimizer.groups` and `default`, with
    `optimizer.lr` / `optimizer.weight_decay`): the Muon parameters are taken out of them into one group
    `muon` (`muon_lr`, `muon_weight_decay`, `momentum`, `nesterov`, `ns_steps`, `adjust_lr_fn`), and what
    remains is AdamW's (`betas`, `eps`, `fused`), its `default` group renamed `adamw`. Defaults: Keller Jordan's
    `MuonWithAuxAdam` (Muon lr 0.02, weight decay 0.01, momentum 0.95, Nesterov, 5 Newton-Schulz steps;
    AdamW betas (0.9, 0.95), eps 1e-10). `seed` is unused: neither part draws random numbers.
    """
    _positive(muon_lr, "muon_lr")
    _positive(muon_weight_decay, "muon_weight_decay", inclusive=True)
    if not 0.0 <= momentum < 1.0:
        raise ConfigError("optimizer.kwargs.momentum", f"must be in [0, 1), got {momentum}")
    if not 1 <= ns_steps < 100:  # torch's Muon refuses 100 or more, but only at its first step
        raise ConfigError("optimizer.kwargs.ns_steps", f"must be in [1, 99], got {ns_steps}")
    params = list(params)
    for group in params:
        if group["name"] in ("muon", "adamw"):
            raise ConfigError("optimizer.groups", f"'{group['name']}' names a part of the muon optimizer: "
                              "give the group another name")
    muon_set = muon_parameters(model, muon_params)
    taken = {id(p) for p in muon_set}
    adamw_groups = []
    for group in params:
        kept = [p for p in group["params"] if id(p) not in taken]
        if kept:
            adamw_groups.append({**group, "params": kept, "name": "adamw" if group["name"] == "default"
                                 else group["name"]})
        elif group["name"] != "default":
            raise ConfigError("optimizer.groups", f"group '{group['name']}' holds only parameters that Muon "
                              f"updates ({MUON_PARAMS_KEY} takes them first): drop the group or narrow it")
    muon = torch.optim.Muon([{"name": "muon", "params": muon_set}], lr=muon_lr, weight_decay=muon_weight_decay,
                            momentum=momentum, nesterov=nesterov, ns_steps=ns_steps, adjust_lr_fn=adjust_lr_fn)
    adamw = torch.optim.AdamW(adamw_groups, lr=lr, weight_decay=weight_decay, betas=(betas[0], betas[1]), eps=eps,
                              fused=fused) if adamw_groups else None
    return MuonWithAdamW(muon, adamw)
