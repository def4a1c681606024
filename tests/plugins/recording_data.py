"""`data.name: recording`: map-style regression data that writes down every training sample it serves.

`data.kwargs.log: PATH` names a file; each micro-batch the trainer's loader fetches appends one line
`<rank> <index> <index> ...` to it, so a test can read back which samples a run trained on, in order,
across kills, resumes and changes of batch size. x holds the sample's index in its first feature (the rest
is the synthetic regression input), y a smooth function of x: the default MLP and `simple_mse` train on it.

A `Dataset` subclass, not a `TensorDataset`: the trainer's fast path (`template.data.TensorBatches`) gathers a
TensorDataset's tensors directly and would never call `__getitems__`. With `data.num_workers=0` the loader
fetches a micro-batch only when the trainer asks for it, so the file holds exactly the micro-batches trained on.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch.utils.data import Dataset

from template.data import DATASETS


class RecordingDataset(Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor, log: Path) -> None:
        self.x, self.y, self.log = x, y, log

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        rank = os.environ.get("RANK", "0")
        with self.log.open("a") as f:
            f.write(" ".join([rank, *map(str, indices)]) + "\n")
        return [(self.x[i], self.y[i]) for i in indices]


@DATASETS.register("recording")
def recording(seed: int, log: str, size: int = 96, in_features: int = 8) -> tuple[Dataset, None]:
    g = torch.Generator().manual_seed(seed + 7)
    x = torch.randn(size, in_features, generator=g)
    x[:, 0] = torch.arange(size, dtype=x.dtype)  # the index: readable from any batch
    y = torch.tanh(x[:, 1:]).sum(dim=1, keepdim=True) / in_features
    return RecordingDataset(x, y, Path(log)), None


def served(log: Path) -> list[list[int]]:
    """The micro-batches of rank 0 (the only rank of a 1-process run), in the order they were served."""
    batches = [line.split() for line in log.read_text().splitlines() if line]
    return [[int(i) for i in b[1:]] for b in batches if b[0] == "0"]
