"""`data.name: hf`: a Hugging Face Arrow table as a map-style dataset (see hf/stream.py for streams)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

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
from template.errors import ConfigError, describe

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


def transformed(table: Any, transform: Transform, name: str, where: str) -> Any:
    check_columns(table.column_names, transform, name, where)
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
        loaded = import_datasets().load_from_disk(path)
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
        table, where = load_files(files, file_format(files, format, "data.kwargs.data_files"), "data.kwargs.data_files",
                             False, cache_dir), files[0]
    if eval_files is not None:
        files = resolve_files(eval_files, "data.kwargs.eval_files")
        held = load_files(files, file_format(files, format, "data.kwargs.eval_files"), "data.kwargs.eval_files", False,
                     cache_dir)
    train = transformed(table, fn, transform, where)
    if held is not None:
        held = transformed(held, fn, transform, "the eval data")
    elif eval_fraction:
        cut = len(train) - int(len(train) * eval_fraction)
        train, held = train.select(range(cut)), train.select(range(cut, len(train)))
    if len(train) == 0:
        raise ConfigError("data.kwargs.data_files" if path is None else "data.kwargs.path",
                          f"{where} gives no samples after transform '{transform}'")
    held_out = ArrowPairs(held, fn.tokens_per_sample) if held is not None else None
    return ArrowPairs(train, fn.tokens_per_sample), held_out


