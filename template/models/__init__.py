"""Models selectable by `model.name`: the tutorial's y = theta*x + b, a small MLP and a GPT (`gpt.py`)."""

from __future__ import annotations

import torch
from torch import nn

from template.models.gpt import GPT
from template.registry import Registry

MODELS: Registry = Registry("model", "model.name")


@MODELS.register("linear")
class LinearModel(nn.Module):
    """The tutorial's y = theta * x + b, with real `nn.Parameter`s.

    The tutorial keeps theta and b in `Variable`s, so `model.parameters()` is empty and neither an
    optimizer nor DDP would ever see them; registering them as parameters is the whole fix.
    """

    def __init__(self, theta: float = 100.0, b: float = 50.0) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.tensor([float(theta)]))
        self.b = nn.Parameter(torch.tensor([float(b)]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.theta * x + self.b


@MODELS.register("mlp")
class MLP(nn.Module):
    """A plain ReLU MLP; `depth` hidden layers of width `hidden`."""

    def __init__(self, in_features: int = 8, hidden: int = 64, depth: int = 2, out_features: int = 1) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        layers.append(nn.Linear(width, out_features))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


MODELS.add("gpt", GPT)
