"""Datasets selectable by `data.name`, and the sampler and loaders that feed them to the trainer.

Every factory takes the run's seed and its `data.kwargs` and returns (train, eval-or-None). Add one by
registering it into `DATASETS` (`@DATASETS.register("name")`) in a module listed under `imports:`.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset, TensorDataset

from template.data.hf.stream import hf_stream
from template.data.hf.table import hf_dataset
from template.data.sampler import (
    GlobalBatchSampler,
    StreamingData,
    TensorBatches,
    TrainData,
    make_eval_loader,
    make_loader,
)
from template.data.tokens import token_files
from template.registry import Registry

__all__ = ["DATASETS", "GlobalBatchSampler", "StreamingData", "TensorBatches", "TrainData", "make_eval_loader",
           "make_loader", "synthetic_linear", "synthetic_regression"]

DATASETS: Registry = Registry("dataset", "data.name")

def synthetic_regression(
    seed: int, size: int = 4096, eval_size: int = 512, in_features: int = 8, noise: float = 0.05
) -> tuple[Dataset, Dataset]:
    """y = a fixed random smooth function of x plus noise; built in memory, no download."""
    g = torch.Generator().manual_seed(seed + 1_000_003)
    w1 = torch.randn(in_features, 16, generator=g) / in_features**0.5
    w2 = torch.randn(16, 1, generator=g) / 4

    def make(n: int) -> TensorDataset:
        x = torch.randn(n, in_features, generator=g)
        y = torch.tanh(x @ w1) @ w2 + noise * torch.randn(n, 1, generator=g)
        return TensorDataset(x, y)

    return make(size), make(eval_size)


def synthetic_linear(
    seed: int, theta: float = 2.0, b: float = 1.0, size: int = 1024, eval_size: int = 128, noise: float = 0.0
) -> tuple[Dataset, Dataset]:
    """Points on y = theta * x + b: what the tutorial's linear model should recover."""
    g = torch.Generator().manual_seed(seed + 1_000_003)

    def make(n: int) -> TensorDataset:
        x = torch.rand(n, 1, generator=g) * 4 - 2
        return TensorDataset(x, theta * x + b + noise * torch.randn(n, 1, generator=g))

    return make(size), make(eval_size)


DATASETS.add("synthetic_regression", synthetic_regression)
DATASETS.add("synthetic_linear", synthetic_linear)
DATASETS.add("tokens", token_files)  # token files larger than memory (tokens.py)
DATASETS.add("hf", hf_dataset)  # Hugging Face datasets: local files or save_to_disk, map-style (hf/table.py)
DATASETS.add("hf_stream", hf_stream)  # the same files streamed, position saved in checkpoints (hf/stream.py)
