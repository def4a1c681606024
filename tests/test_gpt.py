"""The GPT workload: the same trainer and guarantees on a transformer over memory-mapped token files.

Unit checks of the model (activation checkpointing, FLOPs, tied head), the token files (windows, batched
reads, bad files, resident memory far below the file size) and prepare_text.py (bytes round-trip); then
real runs of a tiny configs/gpt.yaml: a kill and resume is bit-identical, a compiled 2-process run agrees
with an eager 1-process one, runs resume across the compile switch in both directions, bf16 trains with
the fp32 run's lr column.
"""

from __future__ import annotations

import json
import math
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from template.data.tokens import TokenWindows, token_files
from template.errors import ConfigError
from template.losses import NextTokenLoss
from template.models.gpt import GPT
from template.reporting.throughput import Throughput

from conftest import ROOT, read_summary, run_here, run_train, train_rows
from harness import (
    TINY_MODEL,
    Launched,
    assert_same_training,
    comparable_rows,
    prepare,
    small_corpus,
    tiny_args,
    train_here,
    wait_for_step,
)

# ------------------------------------------------------------------------------------------------
# The model and the loss
# ------------------------------------------------------------------------------------------------


def test_gpt_maps_tokens_to_next_token_logits_with_a_tied_head():
    model = GPT(**TINY_MODEL)
    logits = model(torch.randint(0, 256, (3, 32)))
    assert logits.shape == (3, 32, 256)
    assert model.lm_head.weight is model.transformer.wte.weight
    names = set(model.state_dict())
    assert {"lm_head.weight", "transformer.wte.weight", "transformer.h.1.attn.c_attn.weight"} <= names
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 33, dtype=torch.long))
    with pytest.raises(ValueError, match="divisible"):
        GPT(n_embd=30, n_head=4)


def test_attention_is_causal():
    model = GPT(**TINY_MODEL).eval()
    x = torch.randint(0, 256, (1, 32))
    changed = x.clone()
    changed[0, 20:] = (changed[0, 20:] + 1) % 256
    with torch.no_grad():
        assert torch.equal(model(x)[0, :20], model(changed)[0, :20])  # the future does not leak back


def test_flops_per_token_is_6n_plus_attention():
    model = GPT(vocab_size=256, block_size=64, n_layer=3, n_head=4, n_embd=64)
    n = sum(p.numel() for p in model.parameters()) - 64 * 64  # the tied head counted once, no wpe
    assert model.num_params() == n
    assert model.flops_per_token() == 6 * n + 12 * 3 * 4 * 16 * 64


@pytest.mark.parametrize("shape", [{"vocab_size": 256, "block_size": 64, "n_layer": 2, "n_head": 4, "n_embd": 64},
                                   {"vocab_size": 1024, "block_size": 32, "n_layer": 3, "n_head": 2, "n_embd": 96,
                                    "bias": False}])
def test_flops_per_token_is_what_torch_counts_for_a_training_step(shape):
    """6N + 12*L*H*Q*T (what MFU divides by) against torch's own FlopCounterMode over a forward and backward:
    equal but for the 6 FLOPs per token of each parameter that is in no matmul (biases, LayerNorms), which the
    estimate counts and torch does not. The math SDPA backend is used so attention's matmuls are counted."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    model = GPT(**shape)
    x = torch.randint(0, shape["vocab_size"], (2, shape["block_size"]))
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        NextTokenLoss()(model(x), x).backward()
    outside_matmuls = sum(p.numel() for p in model.parameters() if p.dim() < 2)
    assert counter.get_total_flops() == (model.flops_per_token() - 6 * outside_matmuls) * x.numel()


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_activation_checkpointing_gives_the_plain_models_gradients(dropout):
    x, y = torch.randint(0, 256, (4, 32)), torch.randint(0, 256, (4, 32))
    grads = []
    for checkpointed in (False, True):
        torch.manual_seed(0)
        model = GPT(**TINY_MODEL, dropout=dropout, checkpoint_activations=checkpointed)
        torch.manual_seed(1)  # the same dropout masks: non-reentrant checkpointing replays the RNG
        NextTokenLoss()(model(x), y).backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=0, atol=0, msg=name)


def test_next_token_loss_is_cross_entropy_over_every_position():
    logits, targets = torch.randn(2, 5, 7), torch.randint(0, 7, (2, 5))
    expected = torch.nn.functional.cross_entropy(logits.permute(0, 2, 1), targets)
    torch.testing.assert_close(NextTokenLoss()(logits, targets), expected)


def test_throughput_counts_tokens_and_model_flops_utilisation(tmp_path):
    (tmp_path / "train.bin").write_bytes(bytes(range(256)) * 4)
    data = TokenWindows(tmp_path / "train.bin", 32, "uint8")
    model = GPT(**TINY_MODEL)
    rates = Throughput(model, data, global_batch=8, world_size=2, peak_flops=1e9, device=torch.device("cpu")).rates(
        updates=10, seconds=2.0)
    assert rates["samples_per_s"] == 40 and rates["tokens_per_s"] == 40 * 32
    assert rates["mfu"] == pytest.approx(40 * 32 * model.flops_per_token() / 2e9)
    plain = Throughput(torch.nn.Linear(2, 2), None, 8, 1, 0.0, torch.device("cpu")).rates(10, 2.0)
    assert plain == {"samples_per_s": 40}  # no tokens, no FLOPs: nothing made up


# ------------------------------------------------------------------------------------------------
# Token files
# ------------------------------------------------------------------------------------------------


def write_tokens(path: Path, tokens: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tokens.tofile(path)
    return path


def test_windows_are_inputs_and_their_shifted_targets_read_in_one_batch(tmp_path):
    tokens = np.arange(1000, dtype=np.uint16) * 7
    data = TokenWindows(write_tokens(tmp_path / "train.bin", tokens), block_size=10, dtype="uint16")
    assert len(data) == 99 and data.tokens_per_sample == 10
    x, y = data[3]
    assert x.tolist() == (tokens[30:40]).tolist() and y.tolist() == (tokens[31:41]).tolist()
    assert x.dtype == torch.int64
    xb, yb = data[[3, 98, 0]]
    assert torch.equal(xb, torch.stack([data[i][0] for i in (3, 98, 0)]))
    assert torch.equal(yb, torch.stack([data[i][1] for i in (3, 98, 0)]))
    clone = pickle.loads(pickle.dumps(data))  # what a DataLoader worker receives: no copy of the data
    assert clone._data is None and torch.equal(clone[5][0], data[5][0])


def test_token_files_read_dtype_from_meta_and_check_the_vocabulary(tmp_path):
    write_tokens(tmp_path / "train.bin", np.arange(300, dtype=np.uint8) % 200)
    write_tokens(tmp_path / "val.bin", np.arange(100, dtype=np.uint8))
    (tmp_path / "meta.json").write_text(json.dumps({"dtype": "uint8", "vocab_size": 256}))
    train, held_out = token_files(0, dir=str(tmp_path), block_size=16, vocab_size=256)
    assert held_out is not None and len(train) == 299 // 16 and len(held_out) == 99 // 16
    with pytest.raises(ConfigError) as err:
        token_files(0, dir=str(tmp_path), block_size=16, vocab_size=100)
    assert err.value.key == "data.kwargs.vocab_size" and "train.bin" in err.value.problem and "199" in err.value.problem


@pytest.mark.parametrize(("content", "dtype", "key", "words"), [
    (None, "uint16", "data.kwargs.train_file", "does not exist"),
    (b"", "uint16", "data.kwargs.train_file", "empty"),
    (b"\x01" * 33, "uint16", "data.kwargs.train_file", "not a multiple"),
    (b"\x01\x00" * 16, "uint16", "data.kwargs.train_file", "fewer than block_size + 1 = 17"),
    (b"\x01" * 40, "int8", "data.kwargs.dtype", "unknown token dtype"),
])
def test_bad_token_files_are_config_errors_naming_the_key_and_the_file(tmp_path, content, dtype, key, words):
    if content is not None:
        (tmp_path / "train.bin").write_bytes(content)
    with pytest.raises(ConfigError) as err:
        token_files(0, dir=str(tmp_path), block_size=16, dtype=dtype, eval_file=None)
    assert err.value.key == key and words in err.value.problem
    if key != "data.kwargs.dtype":
        assert str(tmp_path / "train.bin") in err.value.problem


def test_a_bad_token_file_is_one_error_line_and_exit_2(tmp_path):
    proc = run_here(*tiny_args(tmp_path / "nowhere", 2), f"output_dir={tmp_path / 'run'}", check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: data.kwargs.train_file: token file ")
    assert "nowhere/train.bin does not exist" in lines[0]


MEMORY_PROBE = """
import resource, sys, torch
from template.data import GlobalBatchSampler, make_loader
from template.data.tokens import token_files
def peak_mb(): return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
before = peak_mb()
train, _ = token_files(0, dir=sys.argv[1], block_size=256, vocab_size=65536, dtype="uint16", eval_file=None)
sampler = GlobalBatchSampler(len(train), 16, 1, 1, 0, seed=0)
batches = iter(make_loader(train, sampler, 0, False))
for _ in range(100):
    x, y = next(batches)
print(len(train) * 256 * 2 / 2**20, peak_mb() - before, int(x.sum() + y.sum()))
"""


def test_token_files_larger_than_memory_are_mapped_not_loaded(tmp_path):
    """A 1 GiB token file (sparse: no disk used) is trained from with far less resident memory than its size."""
    size = 1 << 30
    with (tmp_path / "train.bin").open("wb") as f:
        f.truncate(size)
    proc = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(tmp_path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    file_mb, grew_mb, checksum = proc.stdout.split()
    assert float(file_mb) > 1000 and checksum == "0"
    assert float(grew_mb) < 200, f"resident memory grew {grew_mb} MiB reading a {file_mb} MiB file"


# ------------------------------------------------------------------------------------------------
# prepare_text.py
# ------------------------------------------------------------------------------------------------


def test_prepare_text_round_trips_bytes(tmp_path):
    texts = {f"f{i}.txt": f"file {i}: ünïcödé ✓ \x00\xff\n".encode() * (i + 1) for i in range(6)}
    texts["raw.bin"] = bytes(range(256))
    for name, data in texts.items():
        (tmp_path / "in" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "in" / name).write_bytes(data)
    proc = prepare("--input", str(tmp_path / "in" / "*"), "--out", str(tmp_path / "out"), "--every", "3")
    assert proc.returncode == 0, proc.stderr
    ordered = [texts[name] for name in sorted(texts)]
    train = b"\n\n".join(d for i, d in enumerate(ordered) if i % 3 != 2)
    val = b"\n\n".join(d for i, d in enumerate(ordered) if i % 3 == 2)
    assert (tmp_path / "out" / "train.bin").read_bytes() == train
    assert (tmp_path / "out" / "val.bin").read_bytes() == val
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["dtype"] == "uint8" and meta["vocab_size"] == 256 and meta["train_tokens"] == len(train)
    assert 0 < meta["unigram_bits_per_byte"] <= 8
    assert prepare("--input", str(tmp_path / "none*"), "--out", str(tmp_path / "x")).returncode == 2


def test_prepare_text_writes_where_the_gpt_config_reads():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import prepare_text
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    config = OmegaConf.load(ROOT / "configs" / "gpt.yaml")
    assert ROOT / config.data.kwargs.dir == prepare_text.DEFAULT_OUT
    sources = prepare_text.stdlib_sources()
    assert len(sources) > 100 and all("site-packages" not in p.parts for p in sources)


# ------------------------------------------------------------------------------------------------
# Real runs of a tiny configs/gpt.yaml
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return small_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory) -> Path:
    """One uninterrupted 24-update run on 1 process, compile off, fp32."""
    out = tmp_path_factory.mktemp("gpt_ref")
    run_here(*tiny_args(corpus), f"output_dir={out}")
    return out


def losses(out: Path) -> dict[int, float]:
    return {s: r["loss"] for s, r in train_rows(out).items()}


def lrs(out: Path) -> dict[int, float]:
    return {s: r["lr"] for s, r in train_rows(out).items()}


def assert_close_weights(out: Path, reference: Path) -> None:
    """Equal to float rounding. Absolute: AdamW turns rounding noise in a near-zero gradient (the attention
    key bias, to which softmax is blind) into whole lr-sized steps, so relative errors there are large."""
    mine, theirs = load_file(out / "model.safetensors"), load_file(reference / "model.safetensors")
    assert mine.keys() == theirs.keys()
    for name in theirs:
        torch.testing.assert_close(mine[name], theirs[name], rtol=1e-3, atol=2e-5, msg=name)


def assert_close_training(out: Path, reference: Path) -> None:
    assert lrs(out) == lrs(reference)  # the lr contract is exact whatever the numerics
    np.testing.assert_allclose(list(losses(out).values()), list(losses(reference).values()), rtol=2e-4)
    assert_close_weights(out, reference)


@pytest.mark.e2e
def test_gpt_learns_and_logs_tokens_per_second(reference):
    rows = train_rows(reference)
    assert len(rows) == 24 and rows[24]["loss"] < rows[1]["loss"] - 0.5
    assert all(r["tokens_per_s"] == pytest.approx(r["samples_per_s"] * 32) for r in rows.values())
    assert all(r["model_flops_per_s"] > 0 and "mfu" not in r for r in rows.values())  # no known peak on CPU
    weights = load_file(reference / "model.safetensors")
    assert torch.equal(weights["lm_head.weight"], weights["transformer.wte.weight"])
    summary = read_summary(reference)
    assert summary["compiled"] is False and summary["first_update_s"] > 0


@pytest.mark.e2e
def test_gpt_kill_and_resume_is_bit_identical(corpus, reference, tmp_path):
    out = tmp_path / "killed"
    args = (*tiny_args(corpus), "imports=[plugins.pace]")
    run = Launched(args, out, FT_PACE_S="0.1")
    wait_for_step(run, 14)  # past the checkpoint of update 12, mid-way to the next one
    time.sleep(0.05)
    run.kill_group()
    run.finish()
    stdout, _ = train_here(args, out)
    assert "resumed from" in stdout and "step_00000012" in stdout
    assert_same_training(reference, out)


@pytest.fixture(scope="module")
def compiled_two(corpus, tmp_path_factory) -> Path:
    """The tiny GPT compiled, on 2 gloo processes under accelerate launch (DDP graphs split at the buckets)."""
    out = tmp_path_factory.mktemp("gpt_compiled_two")
    run_train(*tiny_args(corpus), "train.compile=true", "train.eval_every=0", f"output_dir={out}",
              launcher="accelerate", nproc=2, timeout=400)
    return out


@pytest.mark.e2e
@pytest.mark.ddp
def test_gpt_compiled_on_two_processes_matches_one_eager_process(compiled_two, reference):
    """Compile on vs off and 2 processes vs 1 at once: the same updates, to float rounding."""
    summary = read_summary(compiled_two)
    assert summary["world_size"] == 2 and len(set(summary["replica_digests"])) == 1 and summary["compiled"]
    assert_close_training(compiled_two, reference)
    names = set(load_file(compiled_two / "model.safetensors"))
    assert names == set(load_file(reference / "model.safetensors")) and not any("_orig_mod" in n for n in names)


@pytest.mark.e2e
@pytest.mark.ddp
def test_a_run_resumes_across_the_compile_switch_both_ways(corpus, reference, compiled_two, tmp_path):
    """Compile off resumes (on 1 process) from the compiled 2-process run's checkpoint, compile on from the
    eager one's: checkpoints do not depend on the switch."""
    for source, switch in ((compiled_two, "false"), (reference, "true")):
        out = tmp_path / f"from_{source.name}"
        checkpoint = source / "checkpoints" / "step_00000018"
        args = (*tiny_args(corpus), f"train.compile={switch}", "train.eval_every=0", f"train.resume={checkpoint}",
                f"output_dir={out}")
        # compile on in a fresh process: dynamo's caches are per process, the eager resume can run here
        proc = run_train(*args, timeout=400) if switch == "true" else run_here(*args)
        assert f"resumed from {checkpoint} at update 18" in proc.stdout
        assert sorted(train_rows(out)) == list(range(19, 25))
        assert_close_weights(out, reference)


@pytest.mark.e2e
def test_bf16_trains_the_gpt_with_the_fp32_lr_column(corpus, reference, tmp_path):
    out = tmp_path / "bf16"
    # a fresh process: Accelerate fixes the precision once per process (its AcceleratorState)
    run_train(*tiny_args(corpus), "train.mixed_precision=bf16", f"output_dir={out}")
    assert lrs(out) == lrs(reference)
    loss = losses(out)
    assert all(math.isfinite(v) for v in loss.values()) and loss[24] < loss[1] - 0.5
    assert load_file(out / "model.safetensors")["transformer.wte.weight"].dtype == torch.float32  # fp32 masters
    assert comparable_rows(out).keys() == comparable_rows(reference).keys()


@pytest.mark.e2e
def test_the_whole_example_prepare_then_train(tmp_path):
    """`python scripts/prepare_text.py && python scripts/train.py --config configs/gpt.yaml`, for 3 updates."""
    proc = prepare()
    assert proc.returncode == 0 and "unigram baseline" in proc.stdout, proc.stderr
    run_here("--config", "configs/gpt.yaml", "train.max_steps=3", "scheduler.kwargs.warmup_steps=1",
             "train.eval_every=3", "train.eval_batches=1", "tracking.wandb=false", "train.plots=false",
             f"output_dir={tmp_path / 'run'}")
    rows = train_rows(tmp_path / "run")
    assert sorted(rows) == [3] and rows[3]["tokens_per_s"] > 0
