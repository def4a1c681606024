"""Hugging Face `datasets` as data sources: `hf` (a map-style Arrow table, hf/table.py) and `hf_stream`
(an IterableDataset, this module).

`data.name: hf` loads local JSON/CSV/Parquet/text files (or a `save_to_disk` directory) into an Arrow table,
applies a registered transform (`TRANSFORMS`) that turns its columns into an input `x` and a target `y`, and
hands the trainer a map-style dataset that the global batch sampler indexes like any other: 1 process == N
processes and exact mid-epoch resume hold unchanged.

`data.name: hf_stream` reads the same files as a stream that is never indexed at random (`streaming=True`).
Every rank reads the whole stream and keeps its slice of each global batch, cut exactly as the global batch
sampler cuts one (micro-batch, then rank): so each sample goes to exactly one rank, 1 process == N processes
holds for streams too, and every rank reaches the end of a pass at the same update (no rank waits in a
collective for one that ran out). The price is that each rank decodes the whole stream. The position in the
stream is torchdata's `StatefulDataLoader` state (which holds, per worker, `datasets`' own
`IterableDataset.state_dict()` from before the current pack of samples and how many of the pack were used),
identical on every rank, saved in the checkpoint and restored on resume: a resumed run reads on from where
the checkpoint was, rereading at most one pack (one transform call), never replaying the stream. At the end
of a pass the next pass starts, with the files in a new order drawn from (seed, pass). No shuffle buffer:
`datasets` does not save its contents, so a resume would not be exact.

Every bad input (a missing file, a column the transform needs, an empty stream) is a ConfigError naming
`data.kwargs.<key>`: exit 2, one line. `datasets` and `torchdata` are the `data` extra, imported here only.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from template.data.hf.common import (
    MAP_BATCH,
    Transform,
    build_transform,
    check_columns,
    file_format,
    import_datasets,
    load_files,
    resolve_files,
)
from template.data.hf.table import ArrowPairs, transformed
from template.errors import ConfigError, describe

# ------------------------------------------------------------------------------------------------
# Streaming: `data.name: hf_stream`
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Packed:
    """A transform whose output for a whole map call is one row: the samples of up to MAP_BATCH input rows,
    stacked. `datasets` then iterates (and keeps its state) per pack instead of per sample, where its per-sample
    overhead would cost more than a small model's update (bench/sections/data.py)."""

    fn: Callable[[dict[str, list[Any]]], dict[str, Any]]

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, Any]:
        out = self.fn(batch)
        return {"x": [np.asarray(out["x"])], "y": [np.asarray(out["y"])]}


class GlobalBatches(torch.utils.data.IterableDataset):
    """Packs of samples from a `datasets` IterableDataset cut into global batches (the incomplete tail of the
    pass dropped). The position is `datasets`' own `state_dict()` from before the current pack plus how many of
    its samples were used: a resume reloads that state, rereads one pack and skips those samples.
    StatefulDataLoader saves it per DataLoader worker."""

    def __init__(self, packs: Any, global_batch: int) -> None:
        self.packs, self.global_batch = packs, global_batch
        self._before: dict[str, Any] = dict(packs.state_dict())  # `datasets`' state before the current pack
        self._used = 0  # samples of the current pack already in a batch
        self._skip = 0  # on resume: samples of the first pack that the saved run had used

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        before, skip = self._before, self._skip
        parts: list[tuple[np.ndarray, np.ndarray]] = []  # the next batch's pieces, from one pack or two
        have = 0
        for pack in self.packs:  # in a DataLoader worker, `datasets` reads only that worker's files
            after = dict(self.packs.state_dict())  # `datasets`' state just past this pack
            x, y = np.asarray(pack["x"]), np.asarray(pack["y"])
            self._before, self._used, start = before, skip, skip
            while start < len(x):
                take = min(self.global_batch - have, len(x) - start)
                parts.append((x[start : start + take], y[start : start + take]))
                have, start = have + take, start + take
                self._used = start
                if have == self.global_batch:
                    yield (torch.from_numpy(np.concatenate([p[0] for p in parts])),
                           torch.from_numpy(np.concatenate([p[1] for p in parts])))
                    parts, have = [], 0
            before, skip = after, 0

    def state_dict(self) -> dict[str, Any]:
        return {"packs": self._before, "used": self._used}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.packs.load_state_dict(state["packs"])
        self._before, self._skip = state["packs"], int(state["used"])


class HFStream:
    """A stream of (x, y) samples from local files, cut into global batches; see the module docstring.

    The trainer asks for `batches(...)` (this rank's micro-batches, endlessly, from a saved position) and,
    at a checkpoint, for `state_dict()`: the pass and the loader's position after the last update.
    """

    def __init__(self, files: list[str], format: str, transform: Transform, seed: int, shuffle_files: bool,
                 cache_dir: str | None) -> None:
        self.files, self.format, self.transform = files, format, transform
        self.seed, self.shuffle_files, self.cache_dir = seed, shuffle_files, cache_dir
        self.tokens_per_sample = transform.tokens_per_sample
        self._pass, self._workers = 0, 0
        self._loader: Any = None

    def pass_files(self, epoch: int) -> list[str]:
        """The files in the order pass `epoch` reads them (a permutation drawn from the seed and the pass)."""
        if not self.shuffle_files:
            return list(self.files)
        order = torch.randperm(len(self.files), generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))
        return [self.files[i] for i in order.tolist()]

    def samples(self, epoch: int, packed: bool = False) -> Any:
        """Pass `epoch` as a `datasets` IterableDataset of transformed samples (columns x, y), or of packs of
        them (one row per MAP_BATCH input rows: x and y stacked)."""
        raw = load_files(self.pass_files(epoch), self.format, "data.kwargs.data_files", True, self.cache_dir)
        fn = _Packed(self.transform.fn) if packed else self.transform.fn
        return raw.map(fn, batched=True, batch_size=MAP_BATCH, remove_columns=raw.column_names)

    def check(self, global_batch: int) -> None:
        """Read up to one global batch: an empty stream, or one shorter than a batch, stops the run before it
        starts (a ConfigError), rather than at the first update."""
        count = 0
        try:
            for _ in self.samples(0):
                count += 1
                if count == global_batch:
                    return
        except Exception as exc:  # the transform met rows it cannot take (ragged lists, text in a number column)
            raise ConfigError("data.kwargs.transform_kwargs", f"the transform failed on the stream's first rows: "
                                                              f"{describe(exc)}") from None
        raise ConfigError("data.kwargs.data_files", f"the stream gives {count} samples per pass after the transform,"
                                                    f" fewer than one global batch (train.batch_size={global_batch})")

    def _make_loader(self, epoch: int, global_batch: int, num_workers: int, pin_memory: bool) -> Any:
        from torchdata.stateful_dataloader import StatefulDataLoader

        # each worker reads its share of the files and cuts whole global batches (its own tail is dropped)
        batched = GlobalBatches(self.samples(epoch, packed=True), global_batch)
        with warnings.catch_warnings():  # torchdata 0.11 calls a deprecated torch telemetry hook: noise
            warnings.filterwarnings("ignore", message=".*set_vital.*")
            # its own generator: creating the loader never draws from the global RNG (exact resume of dropout)
            generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            return StatefulDataLoader(batched, batch_size=None, num_workers=num_workers, pin_memory=pin_memory,
                                      generator=generator)

    def batches(self, global_batch: int, accum: int, world: int, rank: int, num_workers: int, pin_memory: bool,
                start: int, state: dict[str, Any] | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's micro-batches: micro-batch m of a global batch is its m-th `global_batch / accum` rows,
        and rank r's part of that the r-th of `world` equal slices (the global batch sampler's layout)."""
        if start and state is None:
            raise ConfigError("train.resume", "the checkpoint holds no stream position (it was written by a run "
                                              "on another data source): set train.resume=none to start over")
        per_rank, self._workers = global_batch // (accum * world), num_workers
        epoch = int(state["pass"]) if state else 0
        position = state["loader"] if state else None
        saved_workers = int(state.get("workers", num_workers)) if state else num_workers
        if saved_workers != num_workers:  # each worker's position is in its own files
            raise ConfigError("data.num_workers", f"the checkpoint's stream position was saved with {saved_workers} "
                                                  f"DataLoader workers, each reading its own files: resume with "
                                                  f"data.num_workers={saved_workers}")
        while True:
            self._pass, self._loader = epoch, self._make_loader(epoch, global_batch, num_workers, pin_memory)
            if position is not None:
                self._loader.load_state_dict(position)
            read = 0
            for whole_x, whole_y in self._loader:
                read += 1
                x = whole_x.view(accum, world, per_rank, *whole_x.shape[1:])
                y = whole_y.view(accum, world, per_rank, *whole_y.shape[1:])
                for micro in range(accum):
                    yield x[micro, rank], y[micro, rank]
            if not read and position is None:  # a whole pass without a batch: the files changed under the run
                raise ConfigError("data.kwargs.data_files", f"pass {epoch} of the stream gave no global batch")
            epoch, position = epoch + 1, None

    def state_dict(self) -> dict[str, Any]:
        """The pass and the loader's position (each worker's `datasets` state): the same on every rank."""
        return {"pass": self._pass, "workers": self._workers,
                "loader": self._loader.state_dict() if self._loader is not None else None}


def hf_stream(seed: int, data_files: str | list[str] = "data/hf_text/train-*.jsonl", format: str | None = None,
              eval_files: str | list[str] | None = None, transform: str = "byte_windows",
              transform_kwargs: dict[str, Any] | None = None, shuffle_files: bool = True,
              cache_dir: str | None = None) -> tuple[HFStream, ArrowPairs | None]:
    """`data.name: hf_stream`: `data_files` (globs allowed) streamed, never loaded whole; the held-out
    `eval_files`, small, are read as a map-style table. More files than ranks' DataLoader workers
    (`data.num_workers`) keep every worker busy: a worker reads whole files."""
    import_datasets()
    try:
        import torchdata.stateful_dataloader  # noqa: F401  (the stream position lives in its loader)
    except ImportError:
        raise ConfigError("data.name", "hf_stream needs torchdata: pip install -e \".[data]\"") from None
    fn = build_transform(transform, dict(transform_kwargs or {}))
    files = resolve_files(data_files, "data.kwargs.data_files")
    stream = HFStream(files, file_format(files, format, "data.kwargs.data_files"), fn, seed, shuffle_files, cache_dir)
    first = next(iter(load_files(files[:1], stream.format, "data.kwargs.data_files", True, cache_dir)), None)
    if first is None:
        raise ConfigError("data.kwargs.data_files", f"{files[0]} holds no rows")
    check_columns(list(first), fn, transform, files[0])
    held = None
    if eval_files is not None:
        key = "data.kwargs.eval_files"
        names = resolve_files(eval_files, key)
        table = load_files(names, file_format(names, format, key), key, False, cache_dir)
        held = ArrowPairs(transformed(table, fn, transform, names[0]), fn.tokens_per_sample)
    return stream, held
