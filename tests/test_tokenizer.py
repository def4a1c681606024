"""A real tokenizer, trained locally: `prepare_text.py --tokenizer bpe`, the BPE data dir's checks, bits per byte.

Given a small text, the byte-level BPE learnt from its training split decodes both splits back to the text,
and meta.json holds the dtype, the vocabulary and each split's bytes and tokens. Bad arguments exit 2 naming
the option (real subprocesses); a BPE dir without its tokenizer file, a model vocabulary below the
tokenizer's or a dtype too small for it is a ConfigError naming the key. A tiny configs/gpt_bpe.yaml run logs
eval/bpb = eval/loss / ln 2 x tokens / bytes (metrics.jsonl, W&B, summary.json) and leaves the tokenizer in
its output_dir, where it decodes the data; a byte-level run logs eval/bpb = eval/loss / ln 2.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer

from template.data.sampler import make_eval_loader
from template.data.tokens import token_files
from template.errors import ConfigError

from conftest import ROOT, clean_env, read_summary, run_here, run_train, train_rows
from harness import STDLIB, prepare, small_corpus

sys.path.insert(0, str(ROOT / "scripts"))
import prepare_text

sys.path.remove(str(ROOT / "scripts"))

# A text where one word occurs only in the training files and another only in the held-out one (every 3rd).
TRAIN_WORD, HELD_OUT_WORD = "trainonlyword", "heldoutonlyword"
TEXTS = {f"f{i}.txt": (f"def f{i}(x):\n    return x + {i}  # ünïcödé ✓\n"
                       + (f"{HELD_OUT_WORD} " if i % 3 == 2 else f"{TRAIN_WORD} ") * 20) * 10 for i in range(6)}


def tiny_bpe_args(data: Path, steps: int = 6, *extra: str) -> tuple[str, ...]:
    """configs/gpt_bpe.yaml shrunk to seconds: 2 layers of width 32, 32-token windows, batch 8."""
    model = {"vocab_size": 320, "block_size": 32, "n_layer": 2, "n_head": 2, "n_embd": 32}
    return ("--config", "configs/gpt_bpe.yaml", f"data.kwargs.dir={data}",
            *(f"model.kwargs.{k}={v}" for k, v in model.items()), "train.batch_size=8", f"train.max_steps={steps}",
            "train.log_every=1", "train.checkpoint_every=0", f"train.eval_every={steps // 2}", "train.eval_batches=2",
            "scheduler.kwargs.warmup_steps=2", "train.progress=false", "train.plots=false", *extra)


@pytest.fixture(scope="module")
def texts(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("texts")
    for name, text in TEXTS.items():
        (root / name).write_text(text, encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def tiny_bpe(texts, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny_bpe") / "data"
    proc = prepare("--input", str(texts / "*.txt"), "--out", str(out), "--every", "3", "--tokenizer", "bpe",
                   "--vocab-size", "300")
    assert proc.returncode == 0, proc.stderr
    assert "BPE, vocab 300" in proc.stdout
    return out


@pytest.fixture(scope="module")
def corpus_bpe(tmp_path_factory) -> Path:
    """Two standard-library packages' sources as a BPE of 300 ids (a few hundred kB): what the runs train on."""
    out = tmp_path_factory.mktemp("corpus_bpe")
    proc = prepare("--input", str(STDLIB / "json" / "*.py"), str(STDLIB / "email" / "*.py"), "--out", str(out),
                   "--every", "5", "--tokenizer", "bpe", "--vocab-size", "300")
    assert proc.returncode == 0, proc.stderr
    return out


# ------------------------------------------------------------------------------------------------
# prepare_text.py --tokenizer bpe
# ------------------------------------------------------------------------------------------------


def test_bpe_round_trips_both_splits_and_records_bytes_and_tokens(tiny_bpe):
    ordered = [TEXTS[name] for name in sorted(TEXTS)]
    expected = {"train": "\n\n".join(t for i, t in enumerate(ordered) if i % 3 != 2),
                "val": "\n\n".join(t for i, t in enumerate(ordered) if i % 3 == 2)}
    meta = json.loads((tiny_bpe / "meta.json").read_text())
    tokenizer = Tokenizer.from_file(str(tiny_bpe / "tokenizer.json"))
    assert meta["tokenizer"] == "bpe" and meta["tokenizer_file"] == "tokenizer.json" and meta["dtype"] == "uint16"
    assert meta["vocab_size"] == tokenizer.get_vocab_size() == 300
    for split, text in expected.items():
        ids = np.fromfile(tiny_bpe / f"{split}.bin", dtype=np.uint16)
        assert tokenizer.decode(ids.tolist()) == text
        assert meta[f"{split}_tokens"] == len(ids) < meta[f"{split}_bytes"] == len(text.encode())
        assert ids.max() < 300
    assert meta["unigram_token_bits_per_byte"] > 0 and 0 < meta["unigram_bits_per_byte"] <= 8


def test_bpe_learns_from_the_training_split_only(tiny_bpe):
    tokenizer = Tokenizer.from_file(str(tiny_bpe / "tokenizer.json"))
    assert len(tokenizer.encode(f" {TRAIN_WORD}").ids) == 1  # frequent in train: one merged token
    assert len(tokenizer.encode(f" {HELD_OUT_WORD}").ids) > 3  # as frequent, but held out: never merged


def test_token_dtype_is_uint16_while_the_vocabulary_fits_then_uint32(tmp_path, texts):
    assert [prepare_text.token_dtype(n) for n in (256, 50_257, 65_536, 65_537, 2**32)] == [
        "uint16", "uint16", "uint16", "uint32", "uint32"]
    meta = prepare_text.prepare(sorted(texts.glob("*.txt")), tmp_path, 3, "bpe", 70_000)
    assert meta["dtype"] == "uint32"  # from the vocabulary asked for, not the few merges this text allows
    ids = np.fromfile(tmp_path / "train.bin", dtype=np.uint32)
    assert len(ids) == meta["train_tokens"] and ids.max() < meta["vocab_size"]


def test_bytes_stay_the_default_with_the_same_token_files(tmp_path, texts):
    proc = prepare("--input", str(texts / "*.txt"), "--out", str(tmp_path), "--every", "3")
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["tokenizer"] == "bytes" and meta["dtype"] == "uint8" and not (tmp_path / "tokenizer.json").exists()
    ordered = [TEXTS[name].encode() for name in sorted(TEXTS)]
    assert (tmp_path / "train.bin").read_bytes() == b"\n\n".join(t for i, t in enumerate(ordered) if i % 3 != 2)
    assert meta["train_bytes"] == meta["train_tokens"] and meta["val_bytes"] == meta["val_tokens"]


@pytest.mark.parametrize(("args", "option"), [
    (("--tokenizer", "bpe", "--vocab-size", "255"), "--vocab-size: 255 is smaller than the 256-byte alphabet"),
    (("--tokenizer", "bpe", "--vocab-size", "70000", "--dtype", "uint16"),
     "--vocab-size: 70,000 ids do not fit uint16"),
    (("--tokenizer", "bpe", "--vocab-size", str(2**32 + 1)), "--vocab-size: 4,294,967,297 ids do not fit uint32"),
    (("--tokenizer", "bpe"), "--vocab-size: required with --tokenizer bpe"),
    (("--vocab-size", "4096"), "--vocab-size: the bytes tokenizer has 256 ids"),
])
def test_bad_arguments_exit_2_naming_the_option(tmp_path, texts, args, option):
    proc = prepare("--input", str(texts / "*.txt"), "--out", str(tmp_path / "out"), *args)
    assert proc.returncode == 2 and proc.stderr.startswith(f"error: {option}") and len(proc.stderr.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_the_default_bpe_dir_is_where_the_shipped_configs_read():
    from omegaconf import OmegaConf

    assert ROOT / OmegaConf.load(ROOT / "configs" / "gpt_bpe.yaml").data.kwargs.dir == prepare_text.default_out(
        "bpe", 4096)
    assert prepare_text.default_out("bytes") == prepare_text.DEFAULT_OUT


# ------------------------------------------------------------------------------------------------
# template/data/tokens.py on a BPE dir
# ------------------------------------------------------------------------------------------------


def test_a_bpe_dir_exposes_its_tokenizer_and_tokens_per_byte(tiny_bpe):
    train, held_out = token_files(0, str(tiny_bpe), block_size=8, vocab_size=320)
    meta = json.loads((tiny_bpe / "meta.json").read_text())
    assert held_out is not None and held_out.tokens_per_byte == meta["val_tokens"] / meta["val_bytes"]
    assert train.tokenizer_file == tiny_bpe / "tokenizer.json" and train.run_files == [tiny_bpe / "tokenizer.json"]
    assert train.dtype == np.uint16


def test_a_byte_dir_has_one_token_per_byte_and_no_tokenizer_file(tmp_path):
    data = small_corpus(tmp_path / "bytes")
    meta = json.loads((data / "meta.json").read_text())
    (data / "meta.json").write_text(json.dumps({k: v for k, v in meta.items() if not k.endswith("_bytes")}))
    _, held_out = token_files(0, str(data), block_size=8)  # a meta.json written before byte counts existed
    assert held_out is not None and held_out.tokens_per_byte == 1.0 and held_out.run_files == []


def test_a_bpe_dir_without_its_tokenizer_file_is_a_config_error(tiny_bpe, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("train.bin", "val.bin", "meta.json"):
        (broken / name).write_bytes((tiny_bpe / name).read_bytes())
    with pytest.raises(ConfigError) as exc:
        token_files(0, str(broken), block_size=8, vocab_size=320)
    assert exc.value.key == "data.kwargs.dir" and "tokenizer.json does not exist" in str(exc.value)


def test_a_vocabulary_or_dtype_smaller_than_the_tokenizers_is_a_config_error(tiny_bpe, tmp_path):
    """Checked against the tokenizer's vocabulary, not only the ids a sample of the files happens to hold."""
    larger = tmp_path / "larger"
    larger.mkdir()
    for name in ("train.bin", "val.bin", "tokenizer.json"):
        (larger / name).write_bytes((tiny_bpe / name).read_bytes())
    meta = json.loads((tiny_bpe / "meta.json").read_text())
    (larger / "meta.json").write_text(json.dumps({**meta, "vocab_size": 1000}))  # ids the text never used
    with pytest.raises(ConfigError) as exc:
        token_files(0, str(larger), block_size=8, vocab_size=320)
    assert exc.value.key == "data.kwargs.vocab_size" and "fewer than the 1000 of the data's tokenizer" in str(exc.value)
    with pytest.raises(ConfigError) as exc:
        token_files(0, str(tiny_bpe), block_size=8, vocab_size=320, dtype="uint8")
    assert exc.value.key == "data.kwargs.dtype" and "cannot hold the 300 ids" in str(exc.value)


def test_the_cli_turns_a_small_model_vocabulary_into_one_line(corpus_bpe, tmp_path):
    proc = run_here(*tiny_bpe_args(corpus_bpe), "model.kwargs.vocab_size=256", "tracking.wandb=false",
                    f"output_dir={tmp_path / 'run'}", check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("error: data.kwargs.vocab_size: ")
    assert len(proc.stderr.splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_eval_micro_batches_cover_the_same_samples_as_whole_batches(tiny_bpe):
    """With accumulation the eval's global batch is cut as training's is: the same windows, in smaller forwards."""
    _, held_out = token_files(0, str(tiny_bpe), block_size=8)
    assert held_out is not None
    whole, n_whole = make_eval_loader(held_out, 8, 2, 1, 0, False)
    micro, n_micro = make_eval_loader(held_out, 8, 2, 1, 0, False, accum=4)
    assert (n_whole, n_micro) == (2, 8)
    xs = [x for x, _ in (b for _, b in zip(range(n_whole), whole, strict=False))]
    ms = [x for x, _ in (b for _, b in zip(range(n_micro), micro, strict=False))]
    assert all(len(x) == 2 for x in ms) and torch.equal(torch.cat(xs), torch.cat(ms))


# ------------------------------------------------------------------------------------------------
# Runs: the tokenizer travels with the run, eval/bpb is logged
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bpe_run(corpus_bpe, tmp_path_factory) -> Path:
    """A tiny configs/gpt_bpe.yaml for 6 updates with W&B offline (a subprocess: W&B's service)."""
    out = tmp_path_factory.mktemp("bpe_run")
    run_train(*tiny_bpe_args(corpus_bpe), "tracking.wandb=true", f"output_dir={out}", env=clean_env())
    return out


@pytest.mark.e2e
def test_a_bpe_run_logs_bits_per_byte_everywhere(bpe_run, corpus_bpe):
    from wandb_offline import read_runs

    meta = json.loads((corpus_bpe / "meta.json").read_text())
    ratio = meta["val_tokens"] / meta["val_bytes"]
    evals = {r["step"]: r for r in (json.loads(line) for line in (bpe_run / "metrics.jsonl").read_text().split("\n")
                                    if line) if "eval/loss" in r}
    assert sorted(evals) == [3, 6]
    for row in evals.values():
        assert row["eval/bpb"] == pytest.approx(row["eval/loss"] / math.log(2) * ratio, rel=1e-12)
        assert row["eval/bpb"] < row["eval/loss"] / math.log(2)  # a BPE token holds several bytes
    summary = read_summary(bpe_run)
    assert summary["eval/bpb"] == evals[6]["eval/bpb"]
    (run,) = read_runs(bpe_run / "wandb")
    history = {row["step"]: row for row in run.history if "eval/bpb" in row}
    assert {s: r["eval/bpb"] for s, r in history.items()} == {s: r["eval/bpb"] for s, r in evals.items()}
    assert run.summary["eval/bpb"] == evals[6]["eval/bpb"]
    assert len(train_rows(bpe_run)) == 6


@pytest.mark.e2e
def test_the_run_directory_alone_decodes_the_models_tokens(bpe_run, corpus_bpe):
    assert (bpe_run / "tokenizer.json").read_bytes() == (corpus_bpe / "tokenizer.json").read_bytes()
    tokenizer = Tokenizer.from_file(str(bpe_run / "tokenizer.json"))
    files = prepare_text.expand([str(STDLIB / "json" / "*.py"), str(STDLIB / "email" / "*.py")])
    held_out = prepare_text.split(files, 5)["val"].decode()
    assert tokenizer.decode(np.fromfile(corpus_bpe / "val.bin", dtype=np.uint16).tolist()) == held_out


@pytest.mark.e2e
def test_a_byte_run_logs_bits_per_byte_equal_to_its_loss_in_bits(tmp_path):
    data = small_corpus(tmp_path / "bytes")
    out = tmp_path / "run"
    run_here("--config", "configs/gpt.yaml", f"data.kwargs.dir={data}", "model.kwargs.block_size=32",
             "model.kwargs.n_layer=1", "model.kwargs.n_embd=32", "model.kwargs.n_head=2", "train.batch_size=8",
             "train.max_steps=2", "train.eval_every=2", "train.eval_batches=1", "scheduler.kwargs.warmup_steps=1",
             "tracking.wandb=false", "train.plots=false", "train.progress=false", f"output_dir={out}")
    summary = read_summary(out)
    assert summary["eval/bpb"] == pytest.approx(summary["eval/loss"] / math.log(2), rel=1e-12)
    assert not (out / "tokenizer.json").exists()
