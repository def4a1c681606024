"""Hugging Face `datasets` sources, the parts both share: transforms (rows -> (x, y)) and files.

`datasets` and `torchdata` are the `data` extra, imported only where a source is used."""

from __future__ import annotations

import glob
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from template.errors import ConfigError, describe
from template.registry import Registry

FORMATS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text",
           ".arrow": "arrow"}
MAP_BATCH = 1000  # rows per call of a transform (Hugging Face's default): token windows never cross calls


def import_datasets() -> Any:
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


def load_files(files: list[str], format: str, key: str, streaming: bool, cache_dir: str | None) -> Any:
    try:
        return import_datasets().load_dataset(format, data_files=files, split="train", streaming=streaming,
                                        cache_dir=cache_dir)
    except ConfigError:
        raise
    except Exception as exc:  # a file the builder cannot parse: its own error types, all the file's fault
        raise ConfigError(key, f"cannot read {', '.join(files[:3])} as {format}: {describe(exc)}") from None


def check_columns(have: list[str] | None, transform: Transform, name: str, where: str) -> None:
    missing = [c for c in transform.columns if have is not None and c not in have]
    if missing:
        raise ConfigError("data.kwargs.transform_kwargs", f"transform '{name}' needs column(s) {missing}, which "
                                                          f"{where} does not have (its columns: {have})")


