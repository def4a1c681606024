#!/usr/bin/env python
"""Turn local text files into the token files that `configs/gpt.yaml` trains on: bytes or a local BPE, no download.

    python scripts/prepare_text.py                                # the Python standard library's sources
    python scripts/prepare_text.py --input 'notes/**/*.md' --out data/notes
    python scripts/prepare_text.py --tokenizer bpe --vocab-size 4096   # data/stdlib_bpe4096 (configs/gpt_bpe.yaml)

`--tokenizer bytes` (the default) is the identity on bytes (vocabulary 256, token = byte value), so any file
of any language or encoding round-trips exactly. `--tokenizer bpe` trains a byte-level BPE (GPT-2's scheme:
ByteLevel pre-tokenizer and decoder, Hugging Face `tokenizers`' BpeTrainer, nothing downloaded) on the
TRAINING split only, so the held-out split stays unseen, and writes it as `tokenizer.json` beside the token
files; it reads the files as UTF-8 (an invalid byte becomes U+FFFD, and the byte counts are of that text).
Files are read in sorted order and joined with a blank line; every `--every`-th file goes to `val.bin` (the
held-out split), the rest to `train.bin`, flat arrays in nanoGPT's format (uint8 for bytes; for BPE uint16
when the vocabulary fits, else uint32), beside a `meta.json` that records the dtype, the vocabulary, the
tokenizer, each split's bytes and tokens (bits per byte = loss / ln 2 x tokens / bytes) and the unigram
baseline: the held-out bits per byte of a model that knows only the training split's byte frequencies, the
number a language model has to beat.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import sys
import sysconfig
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "data" / "stdlib_bytes"  # where configs/gpt.yaml reads
SEPARATOR = b"\n\n"
SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test"}
TOKENIZER_FILE = "tokenizer.json"  # template/data/tokens.py and the run directory use the same name
BYTE_ALPHABET = 256  # a byte-level BPE starts from every byte: any text stays encodable


def default_out(tokenizer: str, vocab_size: int | None = None) -> Path:
    """data/stdlib_bytes for bytes, data/stdlib_bpe<N> for a BPE of N ids: where the shipped configs read."""
    return DEFAULT_OUT if tokenizer == "bytes" else ROOT / "data" / f"stdlib_bpe{vocab_size}"


def token_dtype(vocab_size: int) -> str:
    """The smallest unsigned dtype of a BPE's ids (nanoGPT's uint16 up to 65,536 ids, else uint32)."""
    for name in ("uint16", "uint32"):
        if vocab_size - 1 <= np.iinfo(name).max:
            return name
    raise ValueError(f"{vocab_size} ids do not fit uint32")


def stdlib_sources() -> list[Path]:
    """The standard library's own .py files (its test suite and installed packages left out): on every machine."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(p for p in root.rglob("*.py") if not SKIP_DIRS & set(p.relative_to(root).parts[:-1]))


def expand(patterns: list[str]) -> list[Path]:
    files: set[Path] = set()
    for pattern in patterns:
        matched = [Path(p) for p in glob.glob(pattern, recursive=True)]
        files.update(p for p in matched if p.is_file())
    return sorted(files)


def encode(data: bytes) -> np.ndarray:
    """Bytes -> token ids (the identity): a uint8 array over the same bytes."""
    return np.frombuffer(data, dtype=np.uint8)


def decode(tokens: np.ndarray) -> bytes:
    return np.asarray(tokens, dtype=np.uint8).tobytes()


def unigram_bits_per_byte(train: np.ndarray, held_out: np.ndarray, vocab_size: int = 256,
                          bytes_per_token: float = 1.0) -> float:
    """Cross entropy (bits) of held_out under train's token frequencies (add-one smoothed), per byte."""
    p = (np.bincount(train, minlength=vocab_size) + 1.0) / (len(train) + float(vocab_size))
    counts = np.bincount(held_out, minlength=vocab_size)
    return float(-(counts * np.log2(p)).sum() / max(1, counts.sum()) / bytes_per_token)


def split(files: list[Path], every: int) -> dict[str, bytes]:
    """Every `every`-th file to val, the rest to train, each joined with a blank line."""
    splits: dict[str, list[bytes]] = {"train": [], "val": []}
    for i, path in enumerate(files):
        splits["val" if every and i % every == every - 1 else "train"].append(path.read_bytes())
    if not splits["val"] and splits["train"]:  # one file: its last tenth is the held-out part
        whole = splits["train"].pop()
        cut = len(whole) - max(1, len(whole) // 10)
        splits = {"train": [whole[:cut]], "val": [whole[cut:]]}
    return {name: SEPARATOR.join(parts) for name, parts in splits.items()}


def train_bpe(text: str, vocab_size: int) -> Any:
    """A byte-level BPE of at most `vocab_size` ids (256 bytes + merges, no special tokens) learnt from `text`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    # per file (the blank line the split is joined with ends a pre-token anyway): iterating is faster and
    # lets the trainer count pairs in parallel
    tokenizer.train_from_iterator(text.split(SEPARATOR.decode()), trainer=trainer)
    return tokenizer


def bpe_encode(tokenizer: Any, text: str, dtype: str) -> np.ndarray:
    """`text` -> ids, encoded file by file in parallel; the concatenation decodes to `text` exactly."""
    sep = SEPARATOR.decode()
    parts = text.split(sep)
    docs = [part + sep for part in parts[:-1]] + parts[-1:]
    return np.fromiter((i for enc in tokenizer.encode_batch(docs) for i in enc.ids), dtype=dtype)


def prepare(files: list[Path], out: Path, every: int, tokenizer: str = "bytes", vocab_size: int | None = None,
            dtype: str | None = None) -> dict[str, object]:
    raw = split(files, every)
    out.mkdir(parents=True, exist_ok=True)
    if tokenizer == "bytes":
        arrays = {name: encode(data) for name, data in raw.items()}
        nbytes = {name: len(data) for name, data in raw.items()}
        meta: dict[str, Any] = {"dtype": "uint8", "vocab_size": BYTE_ALPHABET, "tokenizer": "bytes"}
        byte_arrays = arrays
    else:
        assert vocab_size is not None
        texts = {name: data.decode("utf-8", errors="replace") for name, data in raw.items()}
        encoded = {name: text.encode("utf-8") for name, text in texts.items()}
        bpe = train_bpe(texts["train"], vocab_size)  # the training split only: val stays unseen
        bpe.save(str(out / TOKENIZER_FILE))
        dtype = dtype or token_dtype(vocab_size)
        arrays = {name: bpe_encode(bpe, text, dtype) for name, text in texts.items()}
        nbytes = {name: len(data) for name, data in encoded.items()}
        meta = {"dtype": dtype, "vocab_size": bpe.get_vocab_size(), "tokenizer": "bpe",
                "tokenizer_file": TOKENIZER_FILE}
        byte_arrays = {name: encode(data) for name, data in encoded.items()}
    for name, tokens in arrays.items():
        tokens.tofile(out / f"{name}.bin")
    meta.update({"files": len(files), "train_tokens": len(arrays["train"]), "val_tokens": len(arrays["val"]),
                 "train_bytes": nbytes["train"], "val_bytes": nbytes["val"],
                 "unigram_bits_per_byte": round(unigram_bits_per_byte(byte_arrays["train"], byte_arrays["val"]), 4)})
    if tokenizer != "bytes" and len(arrays["val"]):  # the same baseline over this tokenizer's units
        meta["unigram_token_bits_per_byte"] = round(unigram_bits_per_byte(
            arrays["train"], arrays["val"], int(meta["vocab_size"]), nbytes["val"] / len(arrays["val"])), 4)
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def check_args(args: argparse.Namespace) -> str | None:
    """The one `error:` line for bad arguments, or None."""
    if args.every < 2:
        return "--every: must be >= 2"
    if args.tokenizer == "bytes":
        if args.vocab_size is not None or args.dtype is not None:
            option = "--vocab-size" if args.vocab_size is not None else "--dtype"
            return f"{option}: the bytes tokenizer has 256 ids in uint8; {option} goes with --tokenizer bpe"
        return None
    if args.vocab_size is None:
        return "--vocab-size: required with --tokenizer bpe (e.g. --vocab-size 4096)"
    if args.vocab_size < BYTE_ALPHABET:
        return (f"--vocab-size: {args.vocab_size} is smaller than the {BYTE_ALPHABET}-byte alphabet a byte-level "
                "BPE starts from")
    largest = int(np.iinfo(args.dtype or "uint32").max) + 1
    if args.vocab_size > largest:
        return f"--vocab-size: {args.vocab_size:,} ids do not fit {args.dtype or 'uint32'} (at most {largest:,})"
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--input", nargs="+", metavar="GLOB", help="text files (globs, ** allowed); "
                   "default: the Python standard library's sources")
    p.add_argument("--out", type=Path, help=f"output directory (default: {DEFAULT_OUT} for bytes, "
                   f"{default_out('bpe', 0).parent}/stdlib_bpe<N> for bpe)")
    p.add_argument("--every", type=int, default=10, help="every N-th file goes to val.bin (default: 10)")
    p.add_argument("--tokenizer", choices=("bytes", "bpe"), default="bytes",
                   help="bytes (vocabulary 256, the default) or a byte-level BPE trained on the training split")
    p.add_argument("--vocab-size", type=int, help="the BPE's vocabulary: 256 bytes + merges (bpe only)")
    p.add_argument("--dtype", choices=("uint16", "uint32"),
                   help="token dtype (bpe only; default: uint16 when the vocabulary fits, else uint32)")
    args = p.parse_args(argv)
    problem = check_args(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    files = expand(args.input) if args.input else stdlib_sources()
    if not files:
        print(f"error: --input: no files match {' '.join(args.input or [])}", file=sys.stderr)
        return 2
    out = args.out or default_out(args.tokenizer, args.vocab_size)
    meta = prepare(files, out, args.every, args.tokenizer, args.vocab_size, args.dtype)
    if not meta["train_tokens"] or not meta["val_tokens"]:
        print(f"error: --input: the files hold too little text ({meta['train_bytes']} + "
              f"{meta['val_bytes']} bytes)", file=sys.stderr)
        return 2
    units = "bytes, vocab 256" if args.tokenizer == "bytes" else (
        f"BPE, vocab {meta['vocab_size']}, {meta['val_bytes'] / meta['val_tokens']:.2f} bytes per held-out token, "
        f"{meta['dtype']}")
    print(f"{meta['files']} files -> {out}: train {meta['train_tokens']:,} tokens, val {meta['val_tokens']:,} "
          f"tokens ({units}); unigram baseline {meta['unigram_bits_per_byte']} bits/byte "
          f"= loss {meta['unigram_bits_per_byte'] * math.log(2):.4f} nats")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
