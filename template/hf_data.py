"""Hugging Face `datasets` as data sources: `hf` (a map-style Arrow table) and `hf_stream` (an IterableDataset).

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

import glob
import inspect
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from template.config import ConfigError, describe
from template.registry import Registry

FORMATS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text",
           ".arrow": "arrow"}
MAP_BATCH = 1000  # rows per call of a transform (Hugging Face's default): token windows never cross calls


def _datasets() -> Any:
    """`datasets`, quiet (its progress bars and notes would break the one-line error contract)."""
    try:
        import datasets
    except ImportError:
        raise ConfigError("data.name", "needs Hugging Face datasets: pip install -e \".[data]\"") from None
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    return datasets


# ------------------------------------------------------------------------------------------------
# Transforms: rows -> (x, y)
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Transform:
    """A batched `map` function from a table's rows to columns `x` and `y` (one sample per output row).

    `columns` are the input columns it reads, checked against the data before anything runs;
    `tokens_per_sample` (token models) is what tokens/s counts.
    """

    columns: tuple[str, ...]
    fn: Callable[[dict[str, list[Any]]], dict[str, Any]]
    tokens_per_sample: int | None = None


TRANSFORMS: Registry[Callable[..., Transform]] = Registry("transform", "data.kwargs.transform")


def _windows(batch: dict[str, list[Any]], column: str, block_size: int) -> dict[str, Any]:
    data = b"\n\n".join(str(text).encode("utf-8") for text in batch[column])
    count = (len(data) - 1) // block_size  # windows of block_size + 1 bytes, overlapping by one
    tokens = np.frombuffer(data, dtype=np.uint8).astype(np.int64)
    if count < 1:
        return {"x": np.zeros((0, block_size), np.int64), "y": np.zeros((0, block_size), np.int64)}
    rows = tokens[np.arange(count)[:, None] * block_size + np.arange(block_size + 1)]
    return {"x": rows[:, :-1], "y": rows[:, 1:]}


@TRANSFORMS.register("byte_windows")
def byte_windows(text_column: str = "text", block_size: int = 128) -> Transform:
    """Text -> UTF-8 bytes (token = byte, vocabulary 256), rows joined by a blank line and cut into windows of
    `block_size` inputs and their next-byte targets: what the `gpt` model and `next_token` loss train on, the
    way Hugging Face's `group_texts` chunks a corpus (the tail of every 1000 rows is dropped)."""
    if block_size < 1:
        raise ConfigError("data.kwargs.transform_kwargs.block_size", f"must be >= 1, got {block_size}")
    return Transform((text_column,), _ByteWindows(text_column, block_size), tokens_per_sample=block_size)


@dataclass(frozen=True)
class _ByteWindows:  # a picklable callable: DataLoader workers and `datasets`' fingerprinting need one
    column: str
    block_size: int

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, Any]:
        return _windows(batch, self.column, self.block_size)


@dataclass(frozen=True)
class _Columns:
    inputs: tuple[str, ...]
    targets: tuple[str, ...]
    dtype: str

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, Any]:
        def stack(names: tuple[str, ...]) -> np.ndarray:  # scalars and fixed-length lists side by side
            parts = [np.asarray(batch[n], dtype=self.dtype) for n in names]
            return np.concatenate([p.reshape(len(p), -1) for p in parts], axis=1)

        return {"x": stack(self.inputs), "y": stack(self.targets)}


@TRANSFORMS.register("columns_to_tensors")
def columns_to_tensors(inputs: list[str] | str = "x", targets: list[str] | str = "y",
                       dtype: str = "float32") -> Transform:
    """Numeric columns -> x (the `inputs` side by side) and y (the `targets`): tabular data for the MLP."""
    if dtype not in ("float32", "float64", "int64"):
        raise ConfigError("data.kwargs.transform_kwargs.dtype", f"one of float32, float64, int64; got '{dtype}'")
    ins = (inputs,) if isinstance(inputs, str) else tuple(inputs)
    outs = (targets,) if isinstance(targets, str) else tuple(targets)
    for key, names in (("inputs", ins), ("targets", outs)):
        if not names:
            raise ConfigError(f"data.kwargs.transform_kwargs.{key}", "must name at least one column")
    return Transform(ins + tuple(c for c in outs if c not in ins), _Columns(ins, outs, dtype))


def build_transform(name: str, kwargs: dict[str, Any]) -> Transform:
    """The registered transform `name` built with `kwargs`; bad arguments name `data.kwargs.transform_kwargs`."""
    factory = TRANSFORMS.get(name)
    try:
        inspect.signature(factory).bind(**kwargs)
    except TypeError as exc:
        raise ConfigError("data.kwargs.transform_kwargs", f"bad arguments for transform '{name}': {exc}") from None
    return factory(**kwargs)


# ------------------------------------------------------------------------------------------------
# Files
# ------------------------------------------------------------------------------------------------


def resolve_files(files: str | list[str], key: str) -> list[str]:
    """Paths and glob patterns -> existing, non-empty files (sorted per pattern); a ConfigError otherwise."""
    patterns = [files] if isinstance(files, str) else list(files)
    if not patterns:
        raise ConfigError(key, "names no file")
    found: list[str] = []
    for pattern in patterns:
        matched = sorted(p for p in glob.glob(str(pattern), recursive=True) if Path(p).is_file())
        if not matched:
            hint = " (python scripts/prepare_hf_data.py writes the example files)" if "data/" in str(pattern) else ""
            raise ConfigError(key, f"{pattern} does not exist{hint}")
        for path in matched:
            if Path(path).stat().st_size == 0:
                raise ConfigError(key, f"{path} is empty")
        found.extend(matched)
    return found


def file_format(files: list[str], format: str | None, key: str) -> str:
    """The `datasets` builder for these files: `format` if given, else from the first file's extension."""
    if format is not None:
        if format not in set(FORMATS.values()):
            raise ConfigError("data.kwargs.format", f"unknown format '{format}'; one of "
                                                    f"{', '.join(sorted(set(FORMATS.values())))}")
        return format
    suffix = Path(files[0]).suffix.lower()
    if suffix not in FORMATS:
        raise ConfigError(key, f"cannot tell the format of {files[0]} from its extension; set data.kwargs.format")
    return FORMATS[suffix]


def _load(files: list[str], format: str, key: str, streaming: bool, cache_dir: str | None) -> Any:
    try:
        return _datasets().load_dataset(format, data_files=files, split="train", streaming=streaming,
                                        cache_dir=cache_dir)
    except ConfigError:
        raise
    except Exception as exc:  # a file the builder cannot parse: its own error types, all the file's fault
        raise ConfigError(key, f"cannot read {', '.join(files[:3])} as {format}: {describe(exc)}") from None


def _check_columns(have: list[str] | None, transform: Transform, name: str, where: str) -> None:
    missing = [c for c in transform.columns if have is not None and c not in have]
    if missing:
        raise ConfigError("data.kwargs.transform_kwargs", f"transform '{name}' needs column(s) {missing}, which "
                                                          f"{where} does not have (its columns: {have})")


# ------------------------------------------------------------------------------------------------
# Map-style: `data.name: hf`
# ------------------------------------------------------------------------------------------------


class ArrowPairs(Dataset):
    """(x, y) rows of a transformed Arrow table, read as numpy views of its memory-mapped record batches.

    A list of indices is read as one batch (like a `TensorDataset`), which is how the trainer's loader reads
    it. Neither `datasets`' formatting nor an Arrow `take` serves that: the first costs more than a small
    model's update, the second concatenates the table's chunks on every call (bench/sections/data.py). The
    views are built lazily in each process, so DataLoader workers map the file themselves.
    """

    batched_indexing = True  # data.make_loader: index with a micro-batch's whole index list at once

    def __init__(self, table: Any, tokens_per_sample: int | None = None) -> None:
        if table._indices is not None:  # a select()ed view: write the selected rows out, so rows are direct
            table = table.flatten_indices()
        self.table = table
        self.tokens_per_sample = tokens_per_sample
        first = table.with_format("numpy")[0] if len(table) else {"x": np.zeros(0), "y": np.zeros(0)}
        self.shapes = {k: np.asarray(first[k]).shape for k in ("x", "y")}  # one sample's
        self._views: tuple[np.ndarray, list[np.ndarray], list[np.ndarray]] | None = None
        try:
            self.views  # noqa: B018  (built once here, so samples of unequal shapes fail before training)
        except ValueError:
            raise ConfigError("data.kwargs.transform_kwargs", f"the transform's samples differ in shape (the first "
                                                              f"is x {self.shapes['x']}, y {self.shapes['y']}): "
                                                              "list columns must have one length") from None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_views": None}

    def _column(self, batch: Any, name: str) -> np.ndarray:
        values = batch.column(name)
        while hasattr(values, "flatten"):  # (fixed-size) list arrays, nested for 2-d samples: to the values
            values = values.flatten()
        try:
            array = values.to_numpy(zero_copy_only=True)  # a view of the mapped file
        except Exception:  # nulls or a type numpy cannot view: a copy of this record batch
            array = values.to_numpy(zero_copy_only=False)
        return array.reshape(len(batch), *self.shapes[name])

    @property
    def views(self) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
        """(first row of each record batch, x per record batch, y per record batch)."""
        if self._views is None:
            batches = [b for b in self.table.data.table.to_batches() if len(b)]
            starts = np.cumsum([0] + [len(b) for b in batches[:-1]])
            self._views = (starts, [self._column(b, "x") for b in batches], [self._column(b, "y") for b in batches])
        return self._views

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, index: Any) -> tuple[torch.Tensor, torch.Tensor]:
        starts, xs, ys = self.views
        indices = np.asarray(torch.as_tensor(index, dtype=torch.int64).reshape(-1))
        if len(indices) and (indices.min() < 0 or indices.max() >= len(self)):
            raise IndexError(f"index out of range for {len(self)} rows")
        chunks = np.searchsorted(starts, indices, side="right") - 1
        rows = (indices - starts[chunks]).tolist()
        x = np.stack([xs[c][r] for c, r in zip(chunks.tolist(), rows, strict=True)])  # copies: writable
        y = np.stack([ys[c][r] for c, r in zip(chunks.tolist(), rows, strict=True)])
        if np.ndim(index) == 0 and not isinstance(index, (list, tuple)):
            return torch.from_numpy(x[0]), torch.from_numpy(y[0])
        return torch.from_numpy(x), torch.from_numpy(y)


def _transformed(table: Any, transform: Transform, name: str, where: str) -> Any:
    _check_columns(table.column_names, transform, name, where)
    try:
        return table.map(transform.fn, batched=True, batch_size=MAP_BATCH, remove_columns=table.column_names)
    except Exception as exc:  # the transform met rows it cannot take (ragged lists, text in a number column)
        raise ConfigError("data.kwargs.transform_kwargs", f"transform '{name}' failed on {where}: "
                                                          f"{describe(exc)}") from None


def _from_disk(path: str, split: str, eval_split: str | None) -> tuple[Any, Any]:
    """A `save_to_disk` directory: a Dataset, or a DatasetDict whose `split` (and `eval_split`) are used."""
    if not Path(path).is_dir():
        raise ConfigError("data.kwargs.path", f"{path} is not a directory (save_to_disk writes one)")
    try:
        loaded = _datasets().load_from_disk(path)
    except Exception as exc:
        raise ConfigError("data.kwargs.path", f"cannot load {path} with load_from_disk: {describe(exc)}") from None
    if not hasattr(loaded, "keys"):
        if eval_split is not None:
            raise ConfigError("data.kwargs.eval_split", f"{path} holds one Dataset, not splits")
        return loaded, None
    for key, want in (("data.kwargs.split", split), ("data.kwargs.eval_split", eval_split)):
        if want is not None and want not in loaded:
            raise ConfigError(key, f"{path} has no split '{want}' (it has {', '.join(loaded.keys())})")
    return loaded[split], (loaded[eval_split] if eval_split is not None else None)


def hf_dataset(seed: int, data_files: str | list[str] | None = None, path: str | None = None,
               format: str | None = None, split: str = "train", eval_files: str | list[str] | None = None,
               eval_split: str | None = None, eval_fraction: float = 0.0, transform: str = "byte_windows",
               transform_kwargs: dict[str, Any] | None = None,
               cache_dir: str | None = None) -> tuple[ArrowPairs, ArrowPairs | None]:
    """`data.name: hf`: local `data_files` (JSON/CSV/Parquet/text, globs allowed) or a `save_to_disk` `path`.

    The held-out split is `eval_files`, a `save_to_disk` DatasetDict's `eval_split`, or the last
    `eval_fraction` of the transformed rows. `cache_dir` is where `datasets` keeps its Arrow files (its own
    default otherwise). The seed is unused: the global batch sampler orders the rows.
    """
    del seed
    fn = build_transform(transform, dict(transform_kwargs or {}))
    if (data_files is None) == (path is None):
        raise ConfigError("data.kwargs.data_files", "set exactly one of data.kwargs.data_files (files) and "
                                                    "data.kwargs.path (a save_to_disk directory)")
    if not 0.0 <= eval_fraction < 1.0:
        raise ConfigError("data.kwargs.eval_fraction", f"must be in [0, 1), got {eval_fraction}")
    held: Any = None
    if path is not None:
        table, held = _from_disk(path, split, eval_split)
        where = path
    else:
        assert data_files is not None
        files = resolve_files(data_files, "data.kwargs.data_files")
        table, where = _load(files, file_format(files, format, "data.kwargs.data_files"), "data.kwargs.data_files",
                             False, cache_dir), files[0]
    if eval_files is not None:
        files = resolve_files(eval_files, "data.kwargs.eval_files")
        held = _load(files, file_format(files, format, "data.kwargs.eval_files"), "data.kwargs.eval_files", False,
                     cache_dir)
    train = _transformed(table, fn, transform, where)
    if held is not None:
        held = _transformed(held, fn, transform, "the eval data")
    elif eval_fraction:
        cut = len(train) - int(len(train) * eval_fraction)
        train, held = train.select(range(cut)), train.select(range(cut, len(train)))
    if len(train) == 0:
        raise ConfigError("data.kwargs.data_files" if path is None else "data.kwargs.path",
                          f"{where} gives no samples after transform '{transform}'")
    held_out = ArrowPairs(held, fn.tokens_per_sample) if held is not None else None
    return ArrowPairs(train, fn.tokens_per_sample), held_out


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
        raw = _load(self.pass_files(epoch), self.format, "data.kwargs.data_files", True, self.cache_dir)
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
            return StatefulDataLoader(batched, batch_size=None, num_workers=num_workers, pin_memory=pin_memory)

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
    _datasets()
    try:
        import torchdata.stateful_dataloader  # noqa: F401  (the stream position lives in its loader)
    except ImportError:
        raise ConfigError("data.name", "hf_stream needs torchdata: pip install -e \".[data]\"") from None
    fn = build_transform(transform, dict(transform_kwargs or {}))
    files = resolve_files(data_files, "data.kwargs.data_files")
    stream = HFStream(files, file_format(files, format, "data.kwargs.data_files"), fn, seed, shuffle_files, cache_dir)
    first = next(iter(_load(files[:1], stream.format, "data.kwargs.data_files", True, cache_dir)), None)
    if first is None:
        raise ConfigError("data.kwargs.data_files", f"{files[0]} holds no rows")
    _check_columns(list(first), fn, transform, files[0])
    held = None
    if eval_files is not None:
        key = "data.kwargs.eval_files"
        names = resolve_files(eval_files, key)
        table = _load(names, file_format(names, format, key), key, False, cache_dir)
        held = ArrowPairs(_transformed(table, fn, transform, names[0]), fn.tokens_per_sample)
    return stream, held
