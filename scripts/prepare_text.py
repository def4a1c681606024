#!/usr/bin/env python
"""Turn local text files into the token files that `configs/gpt.yaml` trains on: byte-level, no download.

    python scripts/prepare_text.py                                # the Python standard library's sources
    python scripts/prepare_text.py --input 'notes/**/*.md' --out data/notes

The tokenizer is the identity on bytes (vocabulary 256, token = byte value), so any file of any language
or encoding round-trips exactly and nothing is downloaded. Files are read in sorted order and joined with
a blank line; every `--every`-th file goes to `val.bin` (the held-out split), the rest to `train.bin`, both
raw uint8 arrays in nanoGPT's format, beside a `meta.json` that records the dtype, the vocabulary and the
unigram baseline: the held-out bits per byte of a model that knows only the training split's byte
frequencies, the number a language model has to beat.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import sys
import sysconfig
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "data" / "stdlib_bytes"  # where configs/gpt.yaml reads
SEPARATOR = b"\n\n"
SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test"}


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


def unigram_bits_per_byte(train: np.ndarray, held_out: np.ndarray) -> float:
    """Cross entropy (bits) of held_out under train's byte frequencies (add-one smoothed)."""
    p = (np.bincount(train, minlength=256) + 1.0) / (len(train) + 256.0)
    counts = np.bincount(held_out, minlength=256)
    return float(-(counts * np.log2(p)).sum() / max(1, counts.sum()))


def prepare(files: list[Path], out: Path, every: int) -> dict[str, object]:
    splits: dict[str, list[bytes]] = {"train": [], "val": []}
    for i, path in enumerate(files):
        splits["val" if every and i % every == every - 1 else "train"].append(path.read_bytes())
    if not splits["val"] and splits["train"]:  # one file: its last tenth is the held-out part
        whole = splits["train"].pop()
        cut = len(whole) - max(1, len(whole) // 10)
        splits = {"train": [whole[:cut]], "val": [whole[cut:]]}
    out.mkdir(parents=True, exist_ok=True)
    arrays = {name: encode(SEPARATOR.join(parts)) for name, parts in splits.items()}
    for name, tokens in arrays.items():
        tokens.tofile(out / f"{name}.bin")
    meta = {"dtype": "uint8", "vocab_size": 256, "tokenizer": "bytes", "files": len(files),
            "train_tokens": len(arrays["train"]), "val_tokens": len(arrays["val"]),
            "unigram_bits_per_byte": round(unigram_bits_per_byte(arrays["train"], arrays["val"]), 4)}
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--input", nargs="+", metavar="GLOB", help="text files (globs, ** allowed); "
                   "default: the Python standard library's sources")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default: {DEFAULT_OUT})")
    p.add_argument("--every", type=int, default=10, help="every N-th file goes to val.bin (default: 10)")
    args = p.parse_args(argv)
    if args.every < 2:
        print("error: --every: must be >= 2", file=sys.stderr)
        return 2
    files = expand(args.input) if args.input else stdlib_sources()
    if not files:
        print(f"error: --input: no files match {' '.join(args.input or [])}", file=sys.stderr)
        return 2
    meta = prepare(files, args.out, args.every)
    if not meta["train_tokens"] or not meta["val_tokens"]:
        print(f"error: --input: the files hold too little text ({meta['train_tokens']} + "
              f"{meta['val_tokens']} bytes)", file=sys.stderr)
        return 2
    print(f"{meta['files']} files -> {args.out}: train {meta['train_tokens']:,} tokens, val {meta['val_tokens']:,} "
          f"tokens (bytes, vocab 256); unigram baseline {meta['unigram_bits_per_byte']} bits/byte "
          f"= loss {meta['unigram_bits_per_byte'] * math.log(2):.4f} nats")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
