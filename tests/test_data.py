"""The global-batch sampler and the in-process TensorDataset batches.

Given a dataset of 100 samples and a global batch of 8: one process sees, for every update, exactly the
samples that N processes (and/or accumulation micro-batches) see together; a resumed sampler continues
where an uninterrupted one would be; and `TensorBatches` (blocks gathered at once, batches as views)
yields exactly what a DataLoader over the same sampler yields.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from template.data import GlobalBatchSampler, TensorBatches, make_loader
from template.data import sampler as data

SIZE, BATCH = 100, 8  # 12 updates per epoch, 4 samples dropped each epoch
UPDATES = 40  # a little over three epochs


def updates(world: int, accum: int, start: int = 0, count: int = UPDATES) -> list[list[int]]:
    """The samples of each update, all ranks and micro-batches together, in consumption order."""
    streams = [GlobalBatchSampler(SIZE, BATCH, accum, world, rank, seed=3, start_update=start).index_tensors()
               for rank in range(world)]
    out = []
    for _ in range(count):
        samples: list[int] = []
        for _ in range(accum):
            for stream in streams:
                samples += next(stream).tolist()
        out.append(samples)
    return out


@pytest.mark.parametrize(("world", "accum"), [(2, 1), (4, 1), (1, 2), (2, 2), (1, 8), (8, 1)])
def test_n_ranks_and_micro_batches_see_the_single_process_batches(world, accum):
    assert updates(world, accum) == updates(1, 1)


def test_each_epoch_is_a_permutation_without_repeats():
    one = updates(1, 1)
    per_epoch = SIZE // BATCH
    for e in range(3):
        epoch = list(itertools.chain(*one[e * per_epoch:(e + 1) * per_epoch]))
        assert len(set(epoch)) == len(epoch) == per_epoch * BATCH
    assert one[0] != one[per_epoch]  # a new order each epoch


@pytest.mark.parametrize("start", [1, 5, 12, 13, 30])
def test_a_resumed_sampler_continues_the_uninterrupted_one(start):
    for world, accum in [(1, 1), (2, 2)]:
        assert updates(world, accum, start, UPDATES - start) == updates(world, accum)[start:]


def test_global_batch_must_split_evenly():
    with pytest.raises(ValueError, match="not divisible"):
        GlobalBatchSampler(SIZE, 10, 2, 3, 0, seed=0)


def dataset() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(SIZE, 3, 2, generator=g), torch.arange(SIZE), torch.randn(SIZE, generator=g))


@pytest.mark.parametrize(("world", "rank", "accum", "start"), [(1, 0, 1, 0), (2, 1, 2, 7), (4, 3, 1, 11)])
@pytest.mark.parametrize("block_bytes", [data.BLOCK_BYTES, 1, 1000])
def test_tensor_batches_match_a_dataloader(monkeypatch, world, rank, accum, start, block_bytes):
    monkeypatch.setattr(data, "BLOCK_BYTES", block_bytes)  # 1: one micro-batch per block; 1000: a few
    ds = dataset()

    def sampler() -> GlobalBatchSampler:
        return GlobalBatchSampler(SIZE, BATCH, accum, world, rank, seed=5, start_update=start)

    loader = make_loader(ds, sampler(), num_workers=0, pin_memory=False)
    assert isinstance(loader, TensorBatches)
    reference = DataLoader(ds, sampler=sampler(), batch_size=None)
    count = 3 * (SIZE // BATCH) * accum  # three epochs of micro-batches: several blocks and epoch ends
    for ours, theirs in itertools.islice(zip(loader, reference, strict=False), count):
        assert len(ours) == len(theirs) == 3
        for a, b in zip(ours, theirs, strict=True):
            assert a.is_contiguous() and a.shape == b.shape and a.dtype == b.dtype
            assert torch.equal(a, b)


def test_tensor_batches_with_another_sampler():
    ds = dataset()
    batches = list(TensorBatches(ds, [[3, 1], [7, 7, 0]]))  # type: ignore[arg-type]
    assert [b[1].tolist() for b in batches] == [[3, 1], [7, 7, 0]]
