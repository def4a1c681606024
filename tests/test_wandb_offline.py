"""Tests for tests/wandb_offline.py against files written by a real wandb (offline mode, subprocess)."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

pytest.importorskip("wandb")

from wandb_offline import (
    BLOCK_LEN,
    WandbFileError,
    find_run_dirs,
    iter_records,
    pb,
    read_run,
    read_runs,
)

N_FIRST = 25
N_TOTAL = 30
BLOB_LEN = 70_000  # one summary record > 2 blocks: exercises FIRST/MIDDLE/LAST fragments

FIRST_RUN = """
import json, sys
import wandb
root, blob_len, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
run = wandb.init(project="p", name="n", group="g", tags=["a", "b"],
                 config={"optimizer": {"lr": 0.1}, "seed": 3}, dir=root)
run.define_metric("train/step")
run.define_metric("*", step_metric="train/step")
run.summary["blob"] = "x" * blob_len
for s in range(1, n + 1):
    run.log({"train/step": s, "lr": 0.1 * 0.5 ** ((s - 1) // 10), "loss": 1.0 / s})
print(json.dumps({"id": run.id}))
run.finish()
"""

RESUMED_RUN = """
import sys
import wandb
root, run_id, first, last = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
run = wandb.init(project="p", id=run_id, resume="allow", dir=root)
for s in range(first, last + 1):
    run.log({"train/step": s, "lr": 0.1 * 0.5 ** ((s - 1) // 10), "loss": 1.0 / s})
run.finish()
"""


def _run_wandb(script: str, root: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(
        WANDB_MODE="offline",
        WANDB_SILENT="true",
        WANDB_DIR=str(root),
        WANDB_CONFIG_DIR=str(root / ".wandb-config"),
        WANDB_CACHE_DIR=str(root / ".wandb-cache"),
        WANDB_DATA_DIR=str(root / ".wandb-data"),
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(root), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, f"wandb subprocess failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _expected_row(s: int) -> dict:
    return {"train/step": s, "lr": 0.1 * 0.5 ** ((s - 1) // 10), "loss": 1.0 / s}


@pytest.fixture(scope="module")
def first_root(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("wandb_first")
    out = _run_wandb(FIRST_RUN, root, str(BLOB_LEN), str(N_FIRST))
    run_id = json.loads(out.strip().splitlines()[-1])["id"]
    return root, run_id


@pytest.fixture(scope="module")
def resumed_root(first_root: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    src, run_id = first_root
    root = tmp_path_factory.mktemp("wandb_resumed")
    shutil.copytree(src / "wandb", root / "wandb", symlinks=True)
    _run_wandb(RESUMED_RUN, root, run_id, str(N_FIRST + 1), str(N_TOTAL))
    return root, run_id


def test_read_run_round_trip(first_root: tuple[Path, str]) -> None:
    root, run_id = first_root
    run_dirs = find_run_dirs(root)
    assert len(run_dirs) == 1 and run_dirs[0].name.startswith("offline-run-")
    run = read_run(run_dirs[0])

    assert run.run_id == run_id
    assert (run.project, run.name, run.group, run.tags) == ("p", "n", "g", ["a", "b"])
    assert run.config == {"optimizer": {"lr": 0.1}, "seed": 3}

    assert len(run.history) == N_FIRST
    for i, row in enumerate(run.history):
        s = i + 1
        assert {k: row[k] for k in ("train/step", "lr", "loss")} == _expected_row(s)  # floats exact
        assert row["_step"] == i

    defs = [(d.get("name") or d.get("glob_name"), d.get("step_metric")) for d in run.metric_definitions]
    assert defs == [("train/step", None), ("*", "train/step")]
    assert all(d.get("options", {}).get("defined") for d in run.metric_definitions)

    assert run.summary["blob"] == "x" * BLOB_LEN  # reassembled from fragments across 3 blocks
    assert {k: run.summary[k] for k in ("train/step", "lr", "loss")} == _expected_row(N_FIRST)
    assert "_wandb" not in run.summary
    assert run.files == []  # wandb's own files (requirements.txt) are not reported


def test_resumed_run_is_a_second_dir_with_same_id(resumed_root: tuple[Path, str]) -> None:
    root, run_id = resumed_root
    runs = read_runs(root)
    assert [r.run_id for r in runs] == [run_id, run_id]
    steps = [row["train/step"] for r in runs for row in r.history]
    assert steps == list(range(1, N_TOTAL + 1))
    last = runs[1].history[-1]
    assert {k: last[k] for k in ("train/step", "lr", "loss")} == _expected_row(N_TOTAL)


def test_truncated_file_reads_a_prefix(first_root: tuple[Path, str], tmp_path: Path) -> None:
    root, _ = first_root
    (src,) = find_run_dirs(root)
    full = read_run(src)
    data = next(src.glob("run-*.wandb")).read_bytes()
    assert data[:7] == b":W&B\xe1\xbe\x00"
    assert len(data) > 2 * BLOCK_LEN

    last_block = (len(data) - 1) // BLOCK_LEN * BLOCK_LEN
    mid_last_block = last_block + (len(data) - last_block) // 2
    cuts = [0, 3, 7, 20, BLOCK_LEN + 5, mid_last_block, len(data) - 1]
    run_dir = tmp_path / "offline-run-cut"
    run_dir.mkdir()
    target = run_dir / "run-cut.wandb"
    for cut in cuts:
        # plain truncation, and the zero-filled tail that wandb-core's preallocation leaves on a kill
        for tail in (b"", b"\0" * (512 * 1024 - cut)):
            target.write_bytes(data[:cut] + tail)
            part = read_run(run_dir)
            k = len(part.history)
            assert part.history == full.history[:k], cut
            if cut == mid_last_block:
                assert 0 < k < N_FIRST
                assert part.run_id == full.run_id and part.config == full.config
                assert part.summary["blob"] == full.summary["blob"]
            if cut == len(data) - 1:
                assert k == N_FIRST


def _pack(payloads: list[bytes]) -> bytes:
    """Minimal writer for the log format (the inverse of the reader), to exercise edge cases."""
    out = bytearray(b":W&B" + struct.pack("<HB", 0xBEE1, 0))
    for payload in payloads:
        rest, first = payload, True
        while True:
            left = BLOCK_LEN - len(out) % BLOCK_LEN
            if left < 7:
                out += b"\0" * left
                continue
            chunk, rest = rest[: left - 7], rest[left - 7 :]
            rtype = (1 if not rest else 2) if first else (4 if not rest else 3)
            crc = zlib.crc32(chunk, zlib.crc32(bytes((rtype,))))
            out += struct.pack("<IHB", crc, len(chunk), rtype) + chunk
            first = False
            if not rest:
                break
    return bytes(out)


def _history_record(step: int, pad: str = "") -> bytes:
    rec = pb.Record()
    rec.history.item.add(key="s", value_json=json.dumps(step))
    rec.history.item.add(key="pad", value_json=json.dumps(pad))
    rec.history.item.add(nested_key=["img", "path"], value_json='"media/a.png"')
    rec.history.step.num = step
    return rec.SerializeToString()


@pytest.mark.parametrize("left_over", [0, 1, 6, 7, 8])
def test_block_padding_and_fragments(tmp_path: Path, left_over: int) -> None:
    """Records that end exactly 0..8 bytes before a block boundary, then one spanning 3 blocks."""
    # choose the padding so that the first record ends `left_over` bytes before the end of block 0
    pad = BLOCK_LEN
    for _ in range(5):
        pad -= len(_pack([_history_record(1, "y" * pad)])) - (BLOCK_LEN - left_over)
    payloads = [_history_record(1, "y" * pad), _history_record(2, "z" * 3 * BLOCK_LEN), _history_record(0)]
    assert len(_pack(payloads[:1])) == BLOCK_LEN - left_over
    path = tmp_path / "offline-run-x" / "run-x.wandb"
    path.parent.mkdir()
    path.write_bytes(_pack(payloads))
    run = read_run(path.parent)
    assert [row["s"] for row in run.history] == [1, 2, 0]
    assert run.history[1]["pad"] == "z" * 3 * BLOCK_LEN
    assert run.history[0]["img"] == {"path": "media/a.png"}
    assert run.history[2]["_step"] == 0 and run.run_id == "x"
    assert len(list(iter_records(path))) == 3


def test_not_a_wandb_file(tmp_path: Path) -> None:
    path = tmp_path / "run-bad.wandb"
    path.write_bytes(b"hello world, not a log")
    with pytest.raises(WandbFileError):
        read_run(path)
    assert read_runs(tmp_path) == []  # not inside an offline-run-* dir
