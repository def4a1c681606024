"""Losses selectable by `loss.name`: the tutorial's custom loss beside torch's own."""

from __future__ import annotations

import torch
from torch import nn

from template.registry import Registry

LOSSES: Registry = Registry("loss", "loss.name")


@LOSSES.register("simple_mse")
class SimpleMSELoss(nn.Module):
    """The tutorial's custom loss, (y - y_hat) ** 2, as a module with torch's `reduction` contract.

    A loss is just one more forward step; being an `nn.Module` lets it hold parameters or buffers and
    move with `.to(device)` like the model. `mean` (the default) is what makes a global batch split
    over N ranks average to the same gradient as on one process.
    """

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got '{reduction}'")
        self.reduction = reduction

    def forward(self, y: torch.Tensor, y_hat: torch.Tensor) -> torch.Tensor:
        loss = (y - y_hat) ** 2
        if self.reduction == "mean":
            return loss.mean()
        if self.reduction == "sum":
            return loss.sum()
        return loss


@LOSSES.register("next_token")
class NextTokenLoss(nn.Module):
    """Cross entropy of (batch, time, vocab) logits against (batch, time) next-token ids, mean over tokens.

    `nn.CrossEntropyLoss` wants the class dimension second; a language model's logits have it last.
    Targets equal to `ignore_index` (padding) count for nothing.
    """

    def __init__(self, ignore_index: int = -1) -> None:
        super().__init__()
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                                           ignore_index=self.ignore_index)


LOSSES.add("mse", nn.MSELoss)
LOSSES.add("l1", nn.L1Loss)
LOSSES.add("smooth_l1", nn.SmoothL1Loss)
LOSSES.add("huber", nn.HuberLoss)
LOSSES.add("cross_entropy", nn.CrossEntropyLoss)
LOSSES.add("bce_with_logits", nn.BCEWithLogitsLoss)
