"""The global-batch sampler that makes N ranks equal 1, and the loaders built on it.

Batches are cut from the
GLOBAL batch by `GlobalBatchSampler`, so which samples an update consumes depends only on the
update's index, never on the world size or on where a previous run stopped.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, TensorDataset

from template.errors import ConfigError


@runtime_checkable
class StreamingData(Protocol):
    """A training set that cannot be indexed at random (data/hf/stream.py's `HFStream`): it cuts its own
    global batches and keeps its own position, which the trainer saves in checkpoints as `data`."""

    def check(self, global_batch: int) -> None: ...

    def batches(self, global_batch: int, accum: int, world: int, rank: int, num_workers: int, pin_memory: bool,
                start: int, state: dict[str, Any] | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...

    def state_dict(self) -> dict[str, Any]: ...


class TrainData:
    """This rank's training micro-batches (iterate it), and where they stand in the data: the checkpoint's
    `data` entry. A stream keeps its own position; map-style data is at (epoch, sample offset) of the global
    batch sampler, so a run resumed with another global batch continues at the next unseen sample.

    Nothing is read until the first batch is asked for, from the position `load_state_dict` set: setup makes no
    draw, and the loaders draw their worker seeds from a generator of their own (seed, position), never from
    the global RNG that the model's dropout uses.
    """

    def __init__(self, dataset: Any, global_batch: int, accum: int, world: int, rank: int, seed: int,
                 num_workers: int, pin_memory: bool) -> None:
        self.dataset, self.global_batch, self.accum, self.world, self.rank = dataset, global_batch, accum, world, rank
        self.seed, self.num_workers, self.pin_memory = seed, num_workers, pin_memory
        self.stream = dataset if isinstance(dataset, StreamingData) else None
        self._stream_state: dict[str, Any] | None = None  # a checkpoint's stream position, if resumed
        self._micro = 0  # micro-batches handed out since the position was set
        self._batches: Iterator[Any] | None = None
        self.sampler: GlobalBatchSampler | None = None
        if self.stream is None:
            self._set_position((0, 0))

    def _set_position(self, position: tuple[int, int]) -> None:
        self.sampler = GlobalBatchSampler(len(self.dataset), self.global_batch, self.accum, self.world, self.rank,
                                          self.seed, start_position=position)
        self._batches, self._micro = None, 0

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        if self._batches is None:
            self._batches = self._start()
        self._micro += 1
        return next(self._batches)

    def _start(self) -> Iterator[Any]:
        if self.stream is not None:
            return self.stream.batches(self.global_batch, self.accum, self.world, self.rank, self.num_workers,
                                       self.pin_memory, int(self._stream_state is not None), self._stream_state)
        assert self.sampler is not None
        epoch, offset = self.sampler.start_position
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch * 65_537 + offset)
        return iter(make_loader(self.dataset, self.sampler, self.num_workers, self.pin_memory, generator))

    def _position(self) -> tuple[int, int]:
        """(epoch, sample offset) after the updates whose micro-batches were handed out (map-style data)."""
        assert self.sampler is not None
        return self.sampler.position(self._micro // self.accum)

    @property
    def handed_out(self) -> int:
        """Micro-batches handed out since the position was set: read before an update, it names that update."""
        return self._micro

    @property
    def rewindable(self) -> bool:
        """Whether an update can be read again (`regroup` with `handed_out`): map-style data, not a stream."""
        return self.stream is None

    def regroup(self, accum: int, handed_out: int | None = None) -> None:
        """Cut each global batch into `accum` micro-batches from the next update on (train.micro_batch_size).
        With `handed_out` (read before an update began) that update is read again, from its first sample: an
        update redone with smaller micro-batches consumes the same samples. The global batch, and so which
        samples an update takes, does not change; only their split into micro-batches and ranks does."""
        if self.stream is not None:
            if self._micro:
                raise RuntimeError("a stream cannot be read again from an earlier update")
            self.accum, self._batches = accum, None
            return
        position = self._position() if handed_out is None else self.sampler.position(handed_out // self.accum)  # type: ignore[union-attr]
        self.accum = accum
        self._set_position(position)

    def peek(self) -> Any:
        """This rank's whole share of the next update's global batch, as one micro-batch, without moving: what
        the micro-batch search tries (its trials cut it smaller). Map-style data only draws no random number;
        a stream's loader may, so call it with the RNG preserved."""
        if self.stream is not None:
            batches = self.stream.batches(self.global_batch, 1, self.world, self.rank, self.num_workers, False,
                                          int(self._stream_state is not None), self._stream_state)
            try:
                return next(batches)
            finally:
                batches.close()  # type: ignore[attr-defined]
        sampler = GlobalBatchSampler(len(self.dataset), self.global_batch, 1, self.world, self.rank, self.seed,
                                     start_position=self._position())
        return next(iter(make_loader(self.dataset, sampler, 0, False, torch.Generator().manual_seed(self.seed))))

    def epochs(self, stand_in: float) -> float:
        """Epochs of data consumed so far (the `epoch` column), exact across a change of batch on resume;
        a stream, whose pass length is unknown, reports `stand_in`."""
        if self.sampler is None:
            return stand_in
        epoch, offset = self._position()
        per_epoch = self.sampler.updates_per_epoch * self.global_batch
        return (epoch * per_epoch + offset) / per_epoch

    def state_dict(self) -> dict[str, Any]:
        """The position after the updates whose micro-batches were handed out."""
        if self.stream is not None:
            return {"stream": self.stream.state_dict()}
        return {"position": list(self._position())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.stream is not None:
            if "stream" not in state:
                raise ConfigError("train.resume", "the checkpoint holds no stream position (it was written by a run "
                                                  "on another data source): set train.resume=none to start over")
            self._stream_state, self._batches, self._micro = state["stream"], None, 0
            return
        if "position" not in state:
            raise ConfigError("train.resume", "the checkpoint holds a stream's position, not a position in this "
                                              "map-style data: set train.resume=none to start over")
        epoch, offset = state["position"]
        self._set_position((int(epoch), int(offset)))


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


def make_loader(dataset: Dataset, sampler: Sampler[list[int]], num_workers: int, pin_memory: bool,
                generator: torch.Generator | None = None) -> DataLoader:
    """A DataLoader over `sampler`'s index lists.

    TensorDatasets, and datasets that say `batched_indexing = True` (token files), are indexed with the
    whole list at once (one gather instead of B `__getitem__` calls and a collate), which is most of the
    input pipeline's cost for small models.
    """
    if isinstance(dataset, TensorDataset) and num_workers == 0 and not pin_memory:
        return TensorBatches(dataset, sampler)  # type: ignore[return-value]
    if isinstance(dataset, TensorDataset) or getattr(dataset, "batched_indexing", False):
        return DataLoader(dataset, sampler=sampler, batch_size=None, num_workers=num_workers, pin_memory=pin_memory,
                          generator=generator)
    return DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, pin_memory=pin_memory,
                      generator=generator)


# TensorBatches gathers this many micro-batches at once (fewer where they would exceed BLOCK_BYTES).
BLOCK_BATCHES = 64
BLOCK_BYTES = 8 << 20


class TensorBatches:
    """In-process batches of a TensorDataset, without a DataLoader.

    What DataLoader(batch_size=None) yields for an in-memory TensorDataset with no workers and no
    pinning, the same values in the same (contiguous) layout, without its per-batch machinery (a cost
    that small models notice: docs/benchmark.md): the indices of up to `BLOCK_BATCHES` consecutive
    micro-batches are gathered in one indexing op per tensor and each micro-batch is a view of that block.
    Per batch that leaves a tuple from a zip, where one gather per batch costs more than a small model's
    forward pass.
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
                     pin_memory: bool, accum: int = 1) -> tuple[Any, int]:
    """The eval split in order, each global batch split over the ranks and into `accum` micro-batches as
    training's is (a global batch that needs accumulation to fit in memory would not fit one forward: GPT-2
    small's 512 x 1024 x 50,304 logits); returns (loader, micro-batches to use).

    The global eval batch is rounded down to a multiple of world x accum so every rank holds the same
    number of samples; `max_batches=0` means the whole split (its incomplete tail dropped). The same
    samples make a global batch whatever `accum`: the sample-weighted mean is the same to float rounding.
    """
    size = len(dataset)  # type: ignore[arg-type]
    batch = min(batch_size, size)
    accum = accum if batch >= world * accum else 1  # a split smaller than one global batch: whole per rank
    batch -= batch % (world * accum)
    sampler = GlobalBatchSampler(size, batch, accum, world, rank, seed=0, shuffle=False)
    return make_loader(dataset, sampler, 0, pin_memory), min(max_batches or sampler.updates_per_epoch,
                                                             sampler.updates_per_epoch) * accum
