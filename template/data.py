"""Datasets selectable by `data.name`, and the global-batch sampler that makes N ranks equal 1.

Every factory takes the run's seed and returns (train, eval-or-None). Batches are cut from the
GLOBAL batch by `GlobalBatchSampler`, so which samples an update consumes depends only on the
update's index, never on the world size or on where a previous run stopped.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, TensorDataset

from template.hf_data import hf_dataset, hf_stream
from template.registry import Registry
from template.tokens import token_files

DATASETS: Registry = Registry("dataset", "data.name")


@DATASETS.register("synthetic_regression")
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


@DATASETS.register("synthetic_linear")
def synthetic_linear(
    seed: int, theta: float = 2.0, b: float = 1.0, size: int = 1024, eval_size: int = 128, noise: float = 0.0
) -> tuple[Dataset, Dataset]:
    """Points on y = theta * x + b: what the tutorial's linear model should recover."""
    g = torch.Generator().manual_seed(seed + 1_000_003)

    def make(n: int) -> TensorDataset:
        x = torch.rand(n, 1, generator=g) * 4 - 2
        return TensorDataset(x, theta * x + b + noise * torch.randn(n, 1, generator=g))

    return make(size), make(eval_size)


DATASETS.add("tokens", token_files)  # token files larger than memory (template/tokens.py)
DATASETS.add("hf", hf_dataset)  # Hugging Face datasets: local files or save_to_disk, map-style (template/hf_data.py)
DATASETS.add("hf_stream", hf_stream)  # the same files streamed, position saved in checkpoints (template/hf_data.py)


@runtime_checkable
class StreamingData(Protocol):
    """A training set that cannot be indexed at random (template/hf_data.py's `HFStream`): it cuts its own
    global batches and keeps its own position, which the trainer saves in checkpoints as `data`."""

    def check(self, global_batch: int) -> None: ...

    def batches(self, global_batch: int, accum: int, world: int, rank: int, num_workers: int, pin_memory: bool,
                start: int, state: dict[str, Any] | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...

    def state_dict(self) -> dict[str, Any]: ...


class TrainData:
    """This rank's training micro-batches from update `start` on, and what a checkpoint must hold to
    continue them: a stream's own position (`data`), or the global batch sampler's (epoch, sample offset)
    (`data_position`; a checkpoint without it continues at update `start` of this batch)."""

    def __init__(self, dataset: Any, global_batch: int, accum: int, world: int, rank: int, seed: int, start: int,
                 num_workers: int, pin_memory: bool, state: dict[str, Any] | None) -> None:
        state = state or {}
        self.start, self.stream, self.sampler = start, None, None
        if isinstance(dataset, StreamingData):
            self.stream = dataset
            self.batches: Iterator[Any] = dataset.batches(global_batch, accum, world, rank, num_workers, pin_memory,
                                                          start, state.get("data"))
            return
        position = tuple(state["data_position"]) if "data_position" in state else None
        self.sampler = GlobalBatchSampler(len(dataset), global_batch, accum, world, rank, seed, start_update=start,
                                          start_position=position)  # type: ignore[arg-type]
        self.batches = iter(make_loader(dataset, self.sampler, num_workers, pin_memory))

    def state_dict(self, step: int) -> dict[str, Any]:
        """The position after update `step`."""
        if self.stream is not None:
            return {"data": self.stream.state_dict()}
        assert self.sampler is not None
        return {"data_position": list(self.sampler.position(step - self.start))}


class GlobalBatchSampler(Sampler[list[int]]):
    """Yields this rank's indices for each micro-batch, starting at any optimizer update.

    Epoch e is a permutation seeded by (seed, e); update u takes global batch u of its epoch (the
    incomplete tail is dropped so every update has the same size); the global batch is cut into
    `accum` micro-batches and each micro-batch into `world` equal slices, one per rank. So one
    process with batch B sees exactly the samples that N processes with batch B/N see together,
    and a resumed run continues mid-epoch at `start_update` without replaying anything.
    """

    def __init__(
        self, num_samples: int, global_batch: int, accum: int, world: int, rank: int, seed: int,
        start_update: int = 0, shuffle: bool = True, start_position: tuple[int, int] | None = None,
    ) -> None:
        if global_batch > num_samples:
            raise ValueError(f"global batch {global_batch} is larger than the dataset ({num_samples} samples)")
        self.num_samples = num_samples
        self.global_batch = global_batch
        if global_batch % (accum * world):
            raise ValueError(f"global batch {global_batch} is not divisible by {accum} micro-batches x {world} ranks")
        self.per_rank = global_batch // (accum * world)
        self.accum = accum
        self.world = world
        self.rank = rank
        self.seed = seed
        self.shuffle = shuffle
        self.updates_per_epoch = num_samples // global_batch
        if start_position is None:
            epoch, update = divmod(start_update, self.updates_per_epoch)
            start_position = (epoch, update * global_batch)
        # (epoch, sample offset into its order): also where a run with another global batch stopped
        self.start_position = start_position

    def position(self, updates: int) -> tuple[int, int]:
        """(epoch, sample offset) after `updates` updates from the start: what a checkpoint stores, so a run
        resumed with another global batch continues with the next unseen sample of the same epoch."""
        epoch, offset = self.start_position
        first = max(0, self.updates_per_epoch * self.global_batch - offset) // self.global_batch  # left in epoch
        if updates < first:
            return epoch, offset + updates * self.global_batch
        epochs, position = divmod(updates - first, self.updates_per_epoch)
        return epoch + 1 + epochs, position * self.global_batch

    def _order(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.num_samples)
        return torch.randperm(self.num_samples, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))

    def epoch_indices(self) -> Iterator[torch.Tensor]:
        """For each epoch from `start_position` on, this rank's indices for the rest of it, in the order
        they are consumed: every `per_rank` consecutive entries are one micro-batch."""
        epoch, offset = self.start_position
        while True:
            # rows: the epoch's remaining global batches, each cut into (accum, world, per_rank)
            whole = max(0, self.updates_per_epoch * self.global_batch - offset) // self.global_batch
            end = offset + whole * self.global_batch
            batches = self._order(epoch)[offset:end]
            yield batches.view(-1, self.accum, self.world, self.per_rank)[:, :, self.rank].reshape(-1)
            epoch, offset = epoch + 1, 0

    def index_tensors(self) -> Iterator[torch.Tensor]:
        """This rank's micro-batches as int64 index tensors, one per micro-batch, endlessly."""
        for indices in self.epoch_indices():
            for start in range(0, len(indices), self.per_rank):
                yield indices[start : start + self.per_rank]

    def __iter__(self) -> Iterator[list[int]]:
        for index in self.index_tensors():
            yield index.tolist()

    def __len__(self) -> int:  # endless: the trainer counts updates, not epochs
        return 2**62


def make_loader(dataset: Dataset, sampler: Sampler[list[int]], num_workers: int, pin_memory: bool) -> DataLoader:
    """A DataLoader over `sampler`'s index lists.

    TensorDatasets, and datasets that say `batched_indexing = True` (token files), are indexed with the
    whole list at once (one gather instead of B `__getitem__` calls and a collate), which is most of the
    input pipeline's cost for small models.
    """
    if isinstance(dataset, TensorDataset) and num_workers == 0 and not pin_memory:
        return TensorBatches(dataset, sampler)  # type: ignore[return-value]
    if isinstance(dataset, TensorDataset) or getattr(dataset, "batched_indexing", False):
        return DataLoader(dataset, sampler=sampler, batch_size=None, num_workers=num_workers, pin_memory=pin_memory)
    return DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, pin_memory=pin_memory)


# TensorBatches gathers this many micro-batches at once (fewer where they would exceed BLOCK_BYTES).
BLOCK_BATCHES = 64
BLOCK_BYTES = 8 << 20


class TensorBatches:
    """In-process batches of a TensorDataset, without a DataLoader.

    What DataLoader(batch_size=None) yields for an in-memory TensorDataset with no workers and no
    pinning, the same values in the same (contiguous) layout, without its per-batch machinery (~50 us
    per batch on CPU): the indices of up to `BLOCK_BATCHES` consecutive micro-batches are gathered in
    one indexing op per tensor and each micro-batch is a view of that block. Per batch that leaves a
    tuple from a zip, where one gather per batch costs more than a small model's forward pass.
    """

    def __init__(self, dataset: TensorDataset, sampler: Sampler[list[int]]) -> None:
        self.tensors, self.sampler = dataset.tensors, sampler

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        if not isinstance(self.sampler, GlobalBatchSampler):
            for index in self.sampler:
                yield tuple(t[torch.as_tensor(index)] for t in self.tensors)
            return
        per = self.sampler.per_rank
        row_bytes = max(1, sum(t[0].numel() * t.element_size() for t in self.tensors))
        rows = per * max(1, min(BLOCK_BATCHES, BLOCK_BYTES // (per * row_bytes)))
        for indices in self.sampler.epoch_indices():
            for start in range(0, len(indices), rows):
                block = indices[start : start + rows]
                yield from zip(*(t[block].split(per) for t in self.tensors), strict=True)


def make_eval_loader(dataset: Dataset, batch_size: int, max_batches: int, world: int, rank: int,
                     pin_memory: bool) -> tuple[Any, int]:
    """The eval split in order, each global batch split over the ranks; returns (loader, batches to use).

    The global eval batch is rounded down to a multiple of the world size so every rank holds the same
    number of samples; `max_batches=0` means the whole split (its incomplete tail dropped).
    """
    size = len(dataset)  # type: ignore[arg-type]
    batch = min(batch_size, size)
    batch -= batch % world
    sampler = GlobalBatchSampler(size, batch, 1, world, rank, seed=0, shuffle=False)
    return make_loader(dataset, sampler, 0, pin_memory), min(max_batches or sampler.updates_per_epoch,
                                                             sampler.updates_per_epoch)
