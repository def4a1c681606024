"""Classifier metrics: `accuracy`, `top_k_accuracy`, `f1`, and the confusion matrix (`eval.confusion_matrix`).

Each is a torchmetrics multiclass metric whose kwargs pass through to torchmetrics (`num_classes`, when not
given, is the size of the model's class dimension). Class scores may be (N, C) or, as token models give
them, (N, ..., C): the classes last, as this template's losses take them; torchmetrics wants them second,
so `update` moves them there.
"""

from __future__ import annotations

from typing import Any

import torch
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix, MulticlassF1Score

from template.metrics.base import METRICS


def classes_second(scores: torch.Tensor) -> torch.Tensor:
    """(N, ..., C) scores as torchmetrics' (N, C, ...)."""
    return scores.movedim(-1, 1) if scores.ndim > 2 else scores


@METRICS.register("accuracy")
class Accuracy(MulticlassAccuracy):
    """The fraction of samples whose top-scoring class is the target (`average: micro`, unlike torchmetrics'
    default macro: the number people mean by accuracy)."""

    def __init__(self, num_classes: int, average: Any = "micro", **kwargs: Any) -> None:
        super().__init__(num_classes, average=average, **kwargs)

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        super().update(classes_second(preds), target)


@METRICS.register("top_k_accuracy")
class TopKAccuracy(Accuracy):
    """The fraction of samples whose target is among the `top_k` (default 5) highest-scoring classes."""

    def __init__(self, num_classes: int, top_k: int = 5, **kwargs: Any) -> None:
        super().__init__(num_classes, top_k=top_k, **kwargs)


@METRICS.register("f1")
class F1(MulticlassF1Score):
    """F1 per class, averaged over the classes (`average: macro`): a rare class counts as much as a common one."""

    def __init__(self, num_classes: int, average: Any = "macro", **kwargs: Any) -> None:
        super().__init__(num_classes, average=average, **kwargs)

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        super().update(classes_second(preds), target)


class ConfusionMatrix(MulticlassConfusionMatrix):
    """Counts of (target, predicted class) over the evaluation: row = target, column = prediction."""

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        super().update(classes_second(preds), target)
