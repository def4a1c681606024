"""Token files larger than memory: nanoGPT's `train.bin` / `val.bin` (a flat array of token ids) via `np.memmap`.

The file is mapped, never read whole: a batch reads only the pages of its windows, so the corpus can be
far larger than RAM (and the OS page cache shares it between ranks and DataLoader workers). The training
split is cut into non-overlapping windows of `block_size + 1` tokens (input and its one-token-shifted
target); the global batch sampler permutes the windows per epoch from the run's seed and takes the slice
of each update's index, so exact mid-epoch resume and "1 process == N processes" hold unchanged, and every
token is seen once per epoch (the way Hugging Face's `group_texts` chunks a corpus).

A directory that scripts/prepare_text.py wrote with `--tokenizer bpe` holds the tokenizer (`tokenizer.json`,
named in meta.json) and each split's bytes and tokens: the datasets expose the file (`tokenizer_file`, and
`run_files`, which the trainer copies into output_dir so a run's samples decode from the run directory alone)
and the split's tokens per byte (`tokens_per_byte`, 1.0 for bytes), from which the trainer logs `eval/bpb`.

Every problem with a file is a ConfigError naming `data.kwargs.<key>` and the file: exit 2, one line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from template.errors import ConfigError

DTYPES = {"uint8": np.uint8, "uint16": np.uint16, "uint32": np.uint32, "int32": np.int32}
META_FILE = "meta.json"  # written by scripts/prepare_text.py: {"dtype": ..., "vocab_size": ..., "tokenizer": ...}
TOKENIZER_FILE = "tokenizer.json"  # a BPE directory's tokenizer, and its copy in a run's output_dir
VOCAB_SAMPLE_BYTES = 1 << 20  # how much of a file the vocab check reads, in a few spread-out chunks


class TokenWindows(Dataset):
    """Window i is tokens [i*block_size, i*block_size + block_size + 1) of the file, as (input, target).

    Indexing with a list or tensor of window indices returns the stacked batch in one memmap gather
    (like `TensorDataset`), which is how the trainer's loader reads it. The memmap is opened lazily in
    each process, so a DataLoader worker maps the file itself instead of receiving a pickled copy.
    """

    batched_indexing = True  # data.make_loader: index with a micro-batch's whole index list at once

    def __init__(self, path: Path, block_size: int, dtype: str) -> None:
        self.path, self.block_size, self.dtype = Path(path), block_size, DTYPES[dtype]
        self.num_tokens = self.path.stat().st_size // np.dtype(self.dtype).itemsize
        self.tokens_per_sample = block_size  # predicted tokens per sample: what tokens/s counts
        self.tokens_per_byte: float | None = None  # of the text this file encodes (meta.json), for bits per byte
        self.tokenizer_file: Path | None = None  # what decodes these ids (None: bytes, or unknown)
        self._data: np.memmap | None = None
        self._offsets = torch.arange(block_size + 1)

    @property
    def run_files(self) -> list[Path]:
        """Files a run needs beside its weights (the trainer copies them into output_dir): the tokenizer."""
        return [self.tokenizer_file] if self.tokenizer_file is not None else []

    @property
    def data(self) -> np.memmap:
        if self._data is None:
            self._data = np.memmap(self.path, dtype=self.dtype, mode="r")
        return self._data

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_data": None}  # workers map the file themselves

    def __len__(self) -> int:
        return (self.num_tokens - 1) // self.block_size

    def __getitem__(self, index: Any) -> tuple[torch.Tensor, torch.Tensor]:
        starts = torch.as_tensor(index, dtype=torch.int64) * self.block_size
        rows = torch.from_numpy(self.data[(starts[..., None] + self._offsets).numpy()].astype(np.int64))
        return rows[..., :-1], rows[..., 1:]

    def max_token_sample(self) -> int:
        """The largest token id in a few chunks spread over the file: a cheap check, not a full scan."""
        per_chunk = max(1, VOCAB_SAMPLE_BYTES // 8 // np.dtype(self.dtype).itemsize)
        starts = np.linspace(0, max(0, self.num_tokens - per_chunk), num=8, dtype=np.int64)
        return int(max(self.data[s : s + per_chunk].max() for s in np.unique(starts)))


def _check_file(path: Path, key: str, dtype: str, block_size: int) -> None:
    if not path.is_file():
        raise ConfigError(key, f"token file {path} does not exist (python scripts/prepare_text.py writes one)")
    size = path.stat().st_size
    itemsize = np.dtype(DTYPES[dtype]).itemsize
    if size == 0:
        raise ConfigError(key, f"token file {path} is empty")
    if size % itemsize:
        raise ConfigError(key, f"token file {path} has {size} bytes, not a multiple of {dtype}'s {itemsize}: "
                               "wrong data.kwargs.dtype, or a truncated file")
    if size // itemsize < block_size + 1:
        raise ConfigError(key, f"token file {path} holds {size // itemsize} tokens, fewer than "
                               f"block_size + 1 = {block_size + 1}")


def _read_meta(directory: Path) -> dict[str, Any]:
    meta = directory / META_FILE
    if not meta.is_file():
        return {}
    try:
        return dict(json.loads(meta.read_text()))
    except (ValueError, TypeError) as exc:
        raise ConfigError("data.kwargs.dir", f"cannot read {meta}: {exc}") from None


def _tokenizer_file(directory: Path, meta: dict[str, Any]) -> Path | None:
    """The tokenizer file meta.json names (None for bytes, or none named): without it the ids cannot be decoded."""
    kind = meta.get("tokenizer")
    if kind in (None, "bytes"):
        return None
    path = directory / str(meta.get("tokenizer_file", TOKENIZER_FILE))
    if not path.is_file():
        raise ConfigError("data.kwargs.dir", f"{directory / META_FILE} names the tokenizer '{kind}', but {path} does "
                                             f"not exist (scripts/prepare_text.py --tokenizer {kind} writes it)")
    return path


def _check_vocab(meta: dict[str, Any], directory: Path, vocab_size: int | None, dtype: str) -> None:
    """The tokenizer's ids must fit the model's vocabulary and the token dtype (meta.json's vocab_size)."""
    if "vocab_size" not in meta:
        return
    ids = int(meta["vocab_size"])
    if vocab_size is not None and vocab_size < ids:
        raise ConfigError("data.kwargs.vocab_size", f"{vocab_size} ids (model.kwargs.vocab_size) are fewer than the "
                                                    f"{ids} of the data's tokenizer ({directory / META_FILE})")
    if ids - 1 > np.iinfo(dtype).max:
        raise ConfigError("data.kwargs.dtype", f"'{dtype}' cannot hold the {ids} ids of the data's tokenizer "
                                               f"({directory / META_FILE})")


def _tokens_per_byte(meta: dict[str, Any], name: str) -> float | None:
    """A split's tokens per byte of text from meta.json (`<split>_tokens` / `<split>_bytes`); 1.0 for bytes."""
    stem = Path(name).stem
    tokens, nbytes = meta.get(f"{stem}_tokens"), meta.get(f"{stem}_bytes")
    if tokens and nbytes:
        return float(tokens) / float(nbytes)
    return 1.0 if meta.get("tokenizer") == "bytes" else None


def token_files(seed: int, dir: str = "data/stdlib_bytes", block_size: int = 128, vocab_size: int | None = None,
                dtype: str | None = None, train_file: str = "train.bin",
                eval_file: str | None = "val.bin") -> tuple[TokenWindows, TokenWindows | None]:
    """`data.name: tokens`: windows of `dir/train_file` for training and `dir/eval_file` for evaluation.

    `dtype` defaults to the one in `dir/meta.json` (scripts/prepare_text.py writes it), else nanoGPT's
    uint16. `vocab_size` (the model's; configs interpolate it) is checked against the tokenizer's in meta.json
    and a sample of each file. The seed is unused: the sampler orders the windows.
    """
    del seed
    directory = Path(dir)
    meta = _read_meta(directory)
    dtype = dtype or str(meta.get("dtype", "uint16"))
    if dtype not in DTYPES:
        raise ConfigError("data.kwargs.dtype", f"unknown token dtype '{dtype}'; one of {', '.join(DTYPES)}")
    if block_size < 1:
        raise ConfigError("data.kwargs.block_size", f"must be >= 1, got {block_size}")
    tokenizer_file = _tokenizer_file(directory, meta)
    splits: list[TokenWindows | None] = []
    for key, name in (("data.kwargs.train_file", train_file), ("data.kwargs.eval_file", eval_file)):
        if name is None:
            splits.append(None)
            continue
        path = directory / name
        _check_file(path, key, dtype, block_size)
        windows = TokenWindows(path, block_size, dtype)
        if vocab_size is not None and (top := windows.max_token_sample()) >= vocab_size:
            raise ConfigError("data.kwargs.vocab_size", f"token file {path} holds token id {top}, but the "
                                                        f"vocabulary has {vocab_size} ids (model.kwargs.vocab_size)")
        windows.tokenizer_file, windows.tokens_per_byte = tokenizer_file, _tokens_per_byte(meta, name)
        splits.append(windows)
    _check_vocab(meta, directory, vocab_size, dtype)  # after the files' own ids: those name the file
    train, held_out = splits
    assert train is not None
    return train, held_out
