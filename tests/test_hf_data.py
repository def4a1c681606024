"""Hugging Face `datasets` sources: `hf` (map-style) and `hf_stream` (a stream with its position in checkpoints).

In-process: the transforms, the four file formats and save_to_disk reading alike, a stream's global batches cut
so that each sample goes to exactly one rank per pass (and 2 ranks together see what 1 rank sees, update by
update), a stream resuming from its saved state with and without DataLoader workers, the end of a pass, and
every bad input as a ConfigError naming its key. Then real runs of a tiny GPT: `hf` on 2 processes trains as
on 1, and a kill and resume is bit-identical for `hf` and for `hf_stream` (with 2 DataLoader workers, across
the end of a pass).
"""

from __future__ import annotations

import io
import itertools
import json
import pickle
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from template.data import GlobalBatchSampler, StreamingData, make_loader

from conftest import read_summary, run_here, run_train, train_rows
from harness import STDLIB, Launched, assert_same_training, train_here, wait_for_step

datasets = pytest.importorskip("datasets")
pytest.importorskip("torchdata")

from template.data import hf_dataset, hf_stream  # noqa: E402
from template.data.hf import common as hf_common  # noqa: E402
from template.data.hf import stream as hf_stream_module  # noqa: E402
from template.data.hf.common import byte_windows, columns_to_tensors  # noqa: E402
from template.errors import ConfigError  # noqa: E402

# ------------------------------------------------------------------------------------------------
# Transforms and map-style tables
# ------------------------------------------------------------------------------------------------


def test_byte_windows_are_utf8_bytes_and_their_next_bytes():
    transform = byte_windows(text_column="t", block_size=4)
    out = transform.fn({"t": ["abcdé", "xy"]})
    data = "abcdé\n\nxy".encode()  # 11 bytes: (11 - 1) // 4 = 2 windows of 4 inputs
    assert out["x"].tolist() == [list(data[0:4]), list(data[4:8])]
    assert out["y"].tolist() == [list(data[1:5]), list(data[5:9])]
    assert transform.columns == ("t",) and transform.tokens_per_sample == 4
    assert len(transform.fn({"t": ["ab"]})["x"]) == 0  # too short for a window: no sample, not an error


def test_columns_to_tensors_puts_scalars_and_lists_side_by_side():
    transform = columns_to_tensors(inputs=["a", "b"], targets="y")
    out = transform.fn({"a": [1, 2], "b": [[3, 4], [5, 6]], "y": [7, 8]})
    assert out["x"].dtype == np.float32 and out["x"].tolist() == [[1, 3, 4], [2, 5, 6]]
    assert out["y"].tolist() == [[7], [8]] and transform.columns == ("a", "b", "y")


def numeric_rows(n: int) -> list[dict[str, Any]]:
    return [{"id": i, "a": i * 0.5, "b": [i, -i], "y": 2.0 * i + 1} for i in range(n)]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_json_csv_parquet_and_save_to_disk_give_the_same_samples(tmp_path):
    rows = numeric_rows(20)
    flat = [{"a": r["a"], "y": r["y"]} for r in rows]  # CSV has no list columns
    write_jsonl(tmp_path / "d.jsonl", flat)
    table = datasets.Dataset.from_list(flat)
    table.to_csv(tmp_path / "d.csv", index=False)
    table.to_parquet(tmp_path / "d.parquet")
    datasets.DatasetDict({"train": table, "test": table.select(range(5))}).save_to_disk(tmp_path / "saved")
    kwargs = {"transform": "columns_to_tensors", "transform_kwargs": {"inputs": ["a"], "targets": ["y"]},
              "cache_dir": str(tmp_path / "cache")}
    loaded = [hf_dataset(0, data_files=str(tmp_path / f"d.{ext}"), **kwargs)[0] for ext in ("jsonl", "csv", "parquet")]
    saved, held = hf_dataset(0, path=str(tmp_path / "saved"), eval_split="test", **kwargs)
    assert held is not None and len(held) == 5
    for data in [*loaded, saved]:
        x, y = data[[3, 0, 19]]
        assert x.tolist() == [[1.5], [0.0], [9.5]] and y.tolist() == [[7.0], [1.0], [39.0]]
    train, held = hf_dataset(0, data_files=str(tmp_path / "d.jsonl"), eval_fraction=0.25, **kwargs)
    assert held is not None and (len(train), len(held)) == (15, 5) and held[0][1].tolist() == [31.0]


def test_hf_tables_feed_the_global_batch_sampler_and_pickle_for_workers(tmp_path):
    write_jsonl(tmp_path / "d.jsonl", numeric_rows(64))
    train, _ = hf_dataset(0, data_files=str(tmp_path / "d.jsonl"), transform="columns_to_tensors",
                          transform_kwargs={"inputs": ["id"], "targets": ["y"]}, cache_dir=str(tmp_path / "c"))
    sampler = GlobalBatchSampler(len(train), 16, 1, 1, 0, seed=3)
    for workers in (0, 2):
        x, _ = next(iter(make_loader(train, sampler, workers, False)))
        assert x.squeeze(1).long().tolist() == next(sampler.index_tensors()).tolist()
    clone = pickle.loads(pickle.dumps(train))
    assert torch.equal(clone[[5, 7]][1], train[[5, 7]][1])


# ------------------------------------------------------------------------------------------------
# Streams
# ------------------------------------------------------------------------------------------------


def id_stream(tmp_path: Path, n: int = 100, shards: int = 4, **kwargs: Any) -> Any:
    """A stream of the ids 0..n-1 (x = id, y = id) in `shards` JSON Lines files."""
    rows = numeric_rows(n)
    for k in range(shards):
        write_jsonl(tmp_path / "ids" / f"s{k}.jsonl", rows[k::shards])
    stream, _ = hf_stream(1, data_files=str(tmp_path / "ids" / "s*.jsonl"), transform="columns_to_tensors",
                          transform_kwargs={"inputs": ["id"], "targets": ["id"], "dtype": "int64"},
                          cache_dir=str(tmp_path / "cache"), **kwargs)
    return stream


def flat(lists: Any) -> list[int]:
    return list(itertools.chain.from_iterable(lists))


def updates(stream: Any, count: int, world: int = 1, rank: int = 0, workers: int = 0, start: int = 0,
            state: dict[str, Any] | None = None, batch: int = 8, accum: int = 2) -> list[list[int]]:
    """The ids this rank trains on in each of `count` updates."""
    it = stream.batches(batch, accum, world, rank, workers, False, start, state)
    return [flat(next(it)[0].view(-1).tolist() for _ in range(accum)) for _ in range(count)]


def test_a_stream_gives_each_sample_to_one_rank_once_per_pass_and_two_ranks_see_what_one_sees(tmp_path):
    stream = id_stream(tmp_path)
    assert isinstance(stream, StreamingData)
    one = updates(stream, 24)  # 100 ids, global batch 8: 12 updates per pass (4 ids of a pass are never used)
    ranks = [updates(id_stream(tmp_path), 24, world=2, rank=r) for r in (0, 1)]
    for u in range(24):
        assert sorted(ranks[0][u] + ranks[1][u]) == sorted(one[u])  # 1 process == 2 processes, per update
        assert not set(ranks[0][u]) & set(ranks[1][u])
    for first in (0, 12):  # each pass: no id twice, none skipped but the tail of fewer than a global batch
        seen = flat(one[first : first + 12])
        assert len(seen) == len(set(seen)) == 96 and set(seen) <= set(range(100))
    assert one[:12] != one[12:]  # the next pass reads the shards in another order
    assert stream.state_dict()["pass"] == 1


@pytest.mark.parametrize(("workers", "pack"), [(0, 1000), (0, 7), (2, 1000), (2, 7)])
def test_a_stream_resumes_from_its_saved_position_across_a_pass_end(tmp_path, monkeypatch, workers, pack):
    """From a state saved after any update (within the first pack, or with packs of 7 rows, where a global batch
    spans packs), the stream goes on as if never stopped, across the end of the pass."""
    monkeypatch.setattr(hf_stream_module, "MAP_BATCH", pack)
    stream = id_stream(tmp_path)
    straight = updates(stream, 30, workers=workers)
    for stop in (1, 10, 12):
        first = id_stream(tmp_path)
        updates(first, stop, workers=workers)  # (the generator is paused where a checkpoint would be taken)
        buffer = io.BytesIO()
        torch.save(first.state_dict(), buffer)  # what a checkpoint holds, read back as the trainer reads it
        buffer.seek(0)
        state = torch.load(buffer, weights_only=True)
        resumed = updates(id_stream(tmp_path), 30 - stop, workers=workers, start=stop, state=state)
        assert resumed == straight[stop:], stop
    pass_length = 12 if workers == 0 else 11  # 2 workers read 2 shards each and each drops its own tail
    seen = flat(straight[:pass_length])
    assert len(seen) == len(set(seen)) == 8 * pass_length


@pytest.mark.parametrize(("files", "kwargs", "key", "words"), [
    ("nowhere/*.jsonl", {}, "data.kwargs.data_files", "does not exist"),
    ("empty.jsonl", {}, "data.kwargs.data_files", "is empty"),
    ("ids.jsonl", {"transform_kwargs": {"inputs": ["id"], "targets": ["label"]}}, "data.kwargs.transform_kwargs",
     "needs column(s) ['label']"),
    ("ids.jsonl", {"transform": "tokenise"}, "data.kwargs.transform", "unknown transform 'tokenise'"),
    ("ids.jsonl", {"transform_kwargs": {"width": 3}}, "data.kwargs.transform_kwargs", "unexpected keyword"),
    ("ids.jsonl", {"format": "xml"}, "data.kwargs.format", "unknown format 'xml'"),
    ("ids.txtx", {}, "data.kwargs.data_files", "cannot tell the format"),
])
@pytest.mark.parametrize("source", [hf_dataset, hf_stream])
def test_bad_inputs_are_config_errors_naming_the_key(tmp_path, source, files, kwargs, key, words):
    write_jsonl(tmp_path / "ids.jsonl", numeric_rows(10))
    write_jsonl(tmp_path / "ids.txtx", numeric_rows(10))
    (tmp_path / "empty.jsonl").write_text("")
    args = {"transform": "columns_to_tensors", "transform_kwargs": {"inputs": ["id"], "targets": ["y"]},
            "cache_dir": str(tmp_path / "cache"), **kwargs}
    with pytest.raises(ConfigError) as err:
        source(0, data_files=str(tmp_path / files), **args)
    assert err.value.key == key and words in err.value.problem, str(err.value)


def test_bad_map_style_sources_and_short_streams_are_config_errors(tmp_path):
    write_jsonl(tmp_path / "ids.jsonl", numeric_rows(10))
    datasets.Dataset.from_list(numeric_rows(4)).save_to_disk(tmp_path / "saved")
    cases = [
        ({"data_files": str(tmp_path / "ids.jsonl"), "path": str(tmp_path / "saved")}, "data.kwargs.data_files"),
        ({"path": str(tmp_path / "saved"), "eval_split": "test"}, "data.kwargs.eval_split"),
        ({"path": str(tmp_path / "nowhere")}, "data.kwargs.path"),
        ({"data_files": str(tmp_path / "ids.jsonl"), "eval_fraction": 1.5}, "data.kwargs.eval_fraction"),
    ]
    for kwargs, key in cases:
        with pytest.raises(ConfigError) as err:
            hf_dataset(0, transform="columns_to_tensors", transform_kwargs={"inputs": ["id"]}, **kwargs)
        assert err.value.key == key, kwargs
    with pytest.raises(ConfigError) as err:  # a text column too short for one window: no sample at all
        hf_dataset(0, data_files=str(tmp_path / "ids.jsonl"), transform="byte_windows",
                   transform_kwargs={"text_column": "id", "block_size": 4096}, cache_dir=str(tmp_path / "c"))
    assert err.value.key == "data.kwargs.data_files" and "no samples" in err.value.problem
    stream = id_stream(tmp_path, n=10, shards=2)
    stream.check(8)
    with pytest.raises(ConfigError) as err:  # 10 samples per pass cannot fill a global batch of 16
        stream.check(16)
    assert err.value.key == "data.kwargs.data_files" and "10 samples per pass" in err.value.problem


def test_a_stream_position_resumes_only_where_it_can(tmp_path):
    stream = id_stream(tmp_path)
    updates(stream, 3, workers=0)
    state = stream.state_dict()
    assert state["workers"] == 0
    with pytest.raises(ConfigError) as err:  # each worker's position is in its own files
        updates(id_stream(tmp_path), 1, workers=2, start=3, state=state)
    assert err.value.key == "data.num_workers" and "data.num_workers=0" in err.value.problem
    with pytest.raises(ConfigError) as err:  # a checkpoint of a map-style run holds no position
        updates(id_stream(tmp_path), 1, start=3, state=None)
    assert err.value.key == "train.resume"


def test_rows_the_transform_cannot_take_are_a_config_error(tmp_path):
    write_jsonl(tmp_path / "ragged.jsonl", [{"x": [1.0] * (1 + i % 2), "y": 0.0} for i in range(8)])
    write_jsonl(tmp_path / "text.jsonl", [{"x": "one", "y": 0.0} for i in range(8)])
    for name in ("ragged", "text"):
        kwargs = {"data_files": str(tmp_path / f"{name}.jsonl"), "transform": "columns_to_tensors",
                  "cache_dir": str(tmp_path / "c")}
        with pytest.raises(ConfigError) as err:
            hf_dataset(0, **kwargs)
        assert err.value.key == "data.kwargs.transform_kwargs" and "failed on" in err.value.problem, name
        stream, _ = hf_stream(0, **kwargs)
        with pytest.raises(ConfigError) as err:
            stream.check(4)
        assert err.value.key == "data.kwargs.transform_kwargs" and "failed on" in err.value.problem, name


def ragged_samples(batch: dict[str, list[Any]]) -> dict[str, Any]:
    return {"x": [[1.0] * (1 + i % 2) for i in range(len(batch["y"]))], "y": batch["y"]}


@hf_common.TRANSFORMS.register("test_ragged")
def ragged() -> hf_common.Transform:
    """A forker's transform whose samples differ in length: fine for `datasets`, not for a batch."""
    return hf_common.Transform(("y",), ragged_samples)


def test_samples_of_unequal_shapes_are_a_config_error(tmp_path):
    write_jsonl(tmp_path / "d.jsonl", numeric_rows(8))
    with pytest.raises(ConfigError) as err:
        hf_dataset(0, data_files=str(tmp_path / "d.jsonl"), transform="test_ragged", cache_dir=str(tmp_path / "c"))
    assert err.value.key == "data.kwargs.transform_kwargs" and "differ in shape" in err.value.problem


def test_a_stream_refuses_an_epoch_interval_and_logs_its_run_fraction_as_epoch(corpus):
    from template.config import load_config
    from template.parts import build_parts

    overrides = [f"data.kwargs.data_files={corpus}/train-*.jsonl", "data.kwargs.eval_files=null",
                 f"data.kwargs.cache_dir={corpus}/cache", "train.max_steps=30"]
    parts = build_parts(load_config("configs/hf_stream.yaml", overrides))
    assert parts.updates_per_epoch == 30 and parts.eval_set is None
    with pytest.raises(ConfigError) as err:
        build_parts(load_config("configs/hf_stream.yaml", [*overrides, "scheduler.interval=epoch"]))
    assert err.value.key == "scheduler.interval"


# ------------------------------------------------------------------------------------------------
# Real runs of a tiny GPT on local JSON Lines files
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """6 training shards of standard-library source lines (~3 kB: a pass is ~11 updates) and a val file."""
    out = tmp_path_factory.mktemp("hf_corpus")
    text = (STDLIB / "json" / "decoder.py").read_text()
    lines = [line for line in text.splitlines() if line.strip()][:120]
    rows = [{"text": line} for line in lines]
    for k in range(6):
        write_jsonl(out / f"train-{k}.jsonl", rows[k:100:6])
    write_jsonl(out / "val.jsonl", rows[100:])
    return out


def tiny_args(corpus: Path, config: str, *extra: str) -> tuple[str, ...]:
    """configs/hf_*.yaml shrunk to seconds: a GPT of width 32 on 32-byte windows, batch 8, 24 updates."""
    return ("--config", f"configs/{config}.yaml", f"data.kwargs.data_files={corpus}/train-*.jsonl",
            f"data.kwargs.eval_files={corpus}/val.jsonl", f"data.kwargs.cache_dir={corpus}/cache",
            "model.kwargs.block_size=32", "model.kwargs.n_embd=32", "train.batch_size=8", "train.max_steps=24",
            "train.log_every=1", "train.checkpoint_every=6", "train.eval_every=12", "train.eval_batches=2",
            "scheduler.kwargs.warmup_steps=4", "train.progress=false", "train.plots=false",
            "tracking.wandb=false", *extra)


@pytest.fixture(scope="module")
def hf_reference(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hf_ref")
    run_here(*tiny_args(corpus, "hf_text"), f"output_dir={out}")
    return out


def kill_and_resume(args: tuple[str, ...], out: Path) -> str:
    """Run paced, kill at update 14 (past the checkpoint of 12), rerun to the end; return the rerun's stdout."""
    run = Launched((*args, "imports=[plugins.pace]"), out, FT_PACE_S="0.15")
    wait_for_step(run, 14)
    time.sleep(0.05)
    run.kill_group()
    run.finish()
    stdout, _ = train_here(args, out)
    assert "resumed from" in stdout and "step_00000012" in stdout
    return stdout


@pytest.mark.e2e
def test_hf_map_style_learns_and_a_kill_and_resume_is_bit_identical(corpus, hf_reference, tmp_path):
    rows = train_rows(hf_reference)
    assert len(rows) == 24 and rows[24]["loss"] < rows[1]["loss"] - 0.5 and rows[1]["tokens_per_s"] > 0
    kill_and_resume(tiny_args(corpus, "hf_text"), tmp_path / "killed")
    assert_same_training(hf_reference, tmp_path / "killed")


def assert_close_training(out: Path, reference: Path) -> None:
    """2 processes vs 1: the same lr column, the losses and weights to float rounding (gradients are averaged
    over ranks in another order)."""
    summary = read_summary(out)
    assert summary["world_size"] == 2 and len(set(summary["replica_digests"])) == 1
    mine, ref = train_rows(out), train_rows(reference)
    assert [r["lr"] for r in mine.values()] == [r["lr"] for r in ref.values()]
    np.testing.assert_allclose([r["loss"] for r in mine.values()], [r["loss"] for r in ref.values()], rtol=2e-4)
    theirs = load_file(reference / "model.safetensors")
    for name, tensor in load_file(out / "model.safetensors").items():
        torch.testing.assert_close(tensor, theirs[name], rtol=1e-3, atol=2e-5, msg=name)


@pytest.mark.e2e
@pytest.mark.ddp
def test_hf_map_style_on_two_processes_trains_as_on_one(corpus, hf_reference, tmp_path):
    out = tmp_path / "two"
    run_train(*tiny_args(corpus, "hf_text", "data.num_workers=1"), f"output_dir={out}", launcher="accelerate",
              nproc=2)
    assert_close_training(out, hf_reference)


STREAM = ("data.num_workers=2", "train.keep_checkpoints=4")  # two DataLoader workers, 3 shards each


@pytest.fixture(scope="module")
def stream_reference(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("stream_ref")
    run_here(*tiny_args(corpus, "hf_stream", *STREAM), f"output_dir={out}")
    return out


def stream_pass(out: Path, step: int) -> int:
    """The pass of the stream that checkpoint `step` is in."""
    state = torch.load(out / "checkpoints" / f"step_{step:08d}" / "trainer.pt", weights_only=True)
    return int(state["data"]["stream"]["pass"])


@pytest.mark.e2e
def test_hf_stream_kill_and_resume_with_workers_is_bit_identical_across_a_pass_end(corpus, stream_reference,
                                                                                    tmp_path):
    rows = train_rows(stream_reference)
    assert len(rows) == 24 and rows[24]["loss"] < rows[1]["loss"] - 0.5
    kill_and_resume(tiny_args(corpus, "hf_stream", *STREAM), tmp_path / "killed")
    assert_same_training(stream_reference, tmp_path / "killed")
    assert (stream_pass(tmp_path / "killed", 12), stream_pass(tmp_path / "killed", 24)) == (0, 1)


@pytest.mark.e2e
@pytest.mark.ddp
def test_hf_stream_on_two_processes_trains_as_on_one(corpus, stream_reference, tmp_path):
    out = tmp_path / "two"
    run_train(*tiny_args(corpus, "hf_stream", *STREAM), f"output_dir={out}", launcher="accelerate", nproc=2)
    assert_close_training(out, stream_reference)


@pytest.mark.e2e
def test_a_stream_without_the_column_is_one_error_line_and_exit_2(corpus, tmp_path):
    proc = run_here(*tiny_args(corpus, "hf_stream", "data.kwargs.transform_kwargs.text_column=body"),
                    f"output_dir={tmp_path / 'run'}", check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: data.kwargs.transform_kwargs: transform 'byte_windows' "
                                                   "needs column(s) ['body']"), proc.stderr
    assert not (tmp_path / "run").exists()
