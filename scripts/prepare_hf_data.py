#!/usr/bin/env python
"""Write the local files that `configs/hf_text.yaml` and `configs/hf_stream.yaml` read: no download.

    python scripts/prepare_hf_data.py                       # the Python standard library's sources
    python scripts/prepare_hf_data.py --input 'notes/**/*.md' --out data/notes_hf --shards 8

One JSON object per source file, `{"path": ..., "text": ...}`, in the JSON Lines format that Hugging Face
`datasets` loads (`load_dataset("json", data_files=...)`): `--shards` training files `train-0000i.jsonl`
(a stream reads whole files per DataLoader worker, so more shards than workers keep every worker busy) and
every `--every`-th source file in `val.jsonl`. `--max-bytes` caps the training text so the example trains
in seconds; the files are dealt round-robin so the shards are about the same size.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from prepare_text import ROOT, expand, stdlib_sources

DEFAULT_OUT = ROOT / "data" / "hf_text"  # where configs/hf_text.yaml and configs/hf_stream.yaml read


def prepare(files: list[Path], out: Path, shards: int, every: int, max_bytes: int) -> dict[str, int]:
    """Write the shards and val.jsonl; return how many rows and bytes went where."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("train-*.jsonl"):
        old.unlink()  # a rerun with fewer shards must not leave stale ones for the glob to pick up
    rows: dict[str, list[str]] = {"train": [], "val": []}
    sizes = {"train": 0, "val": 0}
    for i, path in enumerate(files):
        split = "val" if i % every == every - 1 else "train"
        if sizes[split] >= (max_bytes if split == "train" else max(1, max_bytes // every)):
            continue
        text = path.read_bytes().decode("utf-8", errors="replace")
        rows[split].append(json.dumps({"path": str(path), "text": text}))
        sizes[split] += len(text)
    for k in range(shards):
        (out / f"train-{k:05d}.jsonl").write_text("".join(r + "\n" for r in rows["train"][k::shards]))
    (out / "val.jsonl").write_text("".join(r + "\n" for r in rows["val"]))
    return {"train_rows": len(rows["train"]), "val_rows": len(rows["val"]), **{f"{k}_chars": v for k, v in
                                                                              sizes.items()}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--input", nargs="+", metavar="GLOB", help="text files (globs, ** allowed); "
                   "default: the Python standard library's sources")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default: {DEFAULT_OUT})")
    p.add_argument("--shards", type=int, default=4, help="training files to deal the rows into (default: 4)")
    p.add_argument("--every", type=int, default=10, help="every N-th file goes to val.jsonl (default: 10)")
    p.add_argument("--max-bytes", type=int, default=2_000_000, help="training text to write at most, about "
                   "(default: 2000000)")
    args = p.parse_args(argv)
    for name in ("shards", "every", "max_bytes"):
        if getattr(args, name) < (2 if name == "every" else 1):
            print(f"error: --{name.replace('_', '-')}: must be >= {2 if name == 'every' else 1}", file=sys.stderr)
            return 2
    files = expand(args.input) if args.input else stdlib_sources()
    if not files:
        print(f"error: --input: no files match {' '.join(args.input or [])}", file=sys.stderr)
        return 2
    counts = prepare(files, args.out, args.shards, args.every, args.max_bytes)
    if counts["train_rows"] < args.shards or not counts["val_rows"]:
        print(f"error: --input: too few files ({counts['train_rows']} for {args.shards} shards, "
              f"{counts['val_rows']} held out)", file=sys.stderr)
        return 2
    print(f"{counts['train_rows']} rows ({counts['train_chars']:,} chars) in {args.shards} shards, "
          f"{counts['val_rows']} rows ({counts['val_chars']:,} chars) in val.jsonl -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
