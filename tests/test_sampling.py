"""Text from a token model: `generate`, the codec, the `sample_text` hook and scripts/sample.py.

Units: the codec (bytes, a Hugging Face tokenizer found in the run or the data directory), `generate` (its
own generator only, the model's mode put back, greedy = top-1, a context longer than the model's). Then tiny
runs of configs/gpt.yaml with dropout 0.1 (so that any draw from the global RNG would change the weights): the
hook's text in metrics.jsonl and in one W&B table (real offline wandb, a subprocess), the same text from an
identical run, the same weights and losses as without the hook, a resume that keeps the table, and
scripts/sample.py printing the hook's last text from model.safetensors. Bad inputs: exit 2 from real processes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from template.config import load_config
from template.data.text import TextCodec
from template.errors import ConfigError
from template.hooks.sample_text import SampleText
from template.models.gpt import GPT
from template.models.sampling import generate

from conftest import ROOT, clean_env, read_metrics, run_here, run_train, train_rows
from harness import TINY_MODEL, small_corpus, tiny_args

SAMPLE = ROOT / "scripts" / "sample.py"
PROMPT, LENGTH, TEMPERATURE, TOP_K, SEED = "def ", 24, 0.8, 16, 3
HOOK = (f'hooks=[{{name: sample_text, kwargs: {{prompt: "{PROMPT}", length: {LENGTH}, temperature: {TEMPERATURE}, '
        f"top_k: {TOP_K}, seed: {SEED}}}}}]")
# 12 updates, evaluated (and sampled) at 6 and 12, dropout on; the lr horizon fixed so that a run may resume
# with a longer train.max_steps
RUN = ("model.kwargs.dropout=0.1", "train.eval_every=6", "scheduler.kwargs.total_steps=12")


def tiny_gpt(**kwargs: int | float) -> GPT:
    torch.manual_seed(0)
    return GPT(**{**TINY_MODEL, "block_size": 8, "dropout": 0.1, **kwargs})


def write_tokenizer(directory: Path, texts: list[str], vocab_size: int) -> Path:
    """A byte-level BPE tokenizer trained here (no download), saved as `directory/tokenizer.json`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts * 20, trainers.BpeTrainer(vocab_size=vocab_size,
                                                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    return directory / "tokenizer.json"


# ------------------------------------------------------------------------------------------------
# The codec and generate
# ------------------------------------------------------------------------------------------------


def test_bytes_codec_round_trips_utf8_and_never_fails_to_decode(tmp_path):
    codec = TextCodec.from_dir(tmp_path)  # no tokenizer.json: bytes
    assert codec.tokenizer is None and codec.vocab_size == 256
    assert codec.encode("é=1") == [0xC3, 0xA9, ord("="), ord("1")]
    assert codec.decode(codec.encode("é=1")) == "é=1"
    assert codec.decode([0xC3]) == "\ufffd"  # a cut UTF-8 sequence, as a byte model can sample


def test_the_run_directorys_tokenizer_wins_over_the_data_directorys(tmp_path):
    data = write_tokenizer(tmp_path / "data", ["def foo(x):\n    return x\n"], 280).parent
    codec = TextCodec.for_run(tmp_path / "run", data)  # the run has none: its token files' tokenizer
    assert codec.source == data / "tokenizer.json" and codec.vocab_size > 256
    ids = codec.encode("def foo(x):")
    assert len(ids) < len("def foo(x):") and codec.decode(ids) == "def foo(x):"
    write_tokenizer(tmp_path / "run", ["class Bar:\n    pass\n"], 270)
    assert TextCodec.for_run(tmp_path / "run", data).source == tmp_path / "run" / "tokenizer.json"


def test_generate_draws_from_its_generator_only_and_puts_the_model_back():
    model = tiny_gpt().train()
    prompt = torch.tensor([1, 2, 3])
    before = torch.get_rng_state()
    a = generate(model, prompt, 12, 1.0, 8, torch.Generator().manual_seed(5))  # 3 + 12 tokens > block_size 8
    assert torch.equal(torch.get_rng_state(), before) and model.training
    assert a.shape == (1, 12) and int(a.max()) < 256
    assert torch.equal(a, generate(model, prompt, 12, 1.0, 8, torch.Generator().manual_seed(5)))
    assert not torch.equal(a, generate(model, prompt, 12, 1.0, 8, torch.Generator().manual_seed(6)))
    greedy = generate(model, prompt, 12, 0.0, None, None)
    assert torch.equal(greedy, generate(model, prompt, 12, 1.0, 1, torch.Generator().manual_seed(7)))


def test_the_hook_encodes_with_the_data_directorys_tokenizer_and_refuses_a_prompt_past_the_context(tmp_path):
    data = write_tokenizer(tmp_path / "data", ["def foo(x):\n    return x\n"], 280).parent
    cfg = load_config(ROOT / "configs" / "gpt.yaml", [f"data.kwargs.dir={data}", f"output_dir={tmp_path / 'run'}"])
    model = tiny_gpt(vocab_size=280)
    hook = SampleText(prompt="def foo(x):")
    hook.check(cfg, model)
    assert hook.codec.source == data / "tokenizer.json" and hook.ids == hook.codec.encode("def foo(x):")
    with pytest.raises(ConfigError, match="more than the model's context of 8") as err:
        SampleText(prompt="def foo(x):\n    return x\n" * 3).check(cfg, model)
    assert err.value.key == "hooks.kwargs.prompt"


# ------------------------------------------------------------------------------------------------
# Tiny GPT runs
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return small_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def with_wandb(corpus, tmp_path_factory) -> Path:
    """The hook on, logging to an offline W&B run (a subprocess: W&B never runs in-process here)."""
    root = tmp_path_factory.mktemp("sampled_wandb")
    run_train(*tiny_args(corpus, 12), *RUN, HOOK, "tracking.wandb=true", f"output_dir={root / 'run'}",
              env=clean_env(WANDB_DATA_DIR=str(root / "wandb-data")))
    return root / "run"


@pytest.fixture(scope="module")
def sampled(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sampled")
    run_here(*tiny_args(corpus, 12), *RUN, HOOK, f"output_dir={out}")
    return out


@pytest.fixture(scope="module")
def plain(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("plain")
    run_here(*tiny_args(corpus, 12), *RUN, f"output_dir={out}")
    return out


def texts(out: Path) -> dict[int, str]:
    return {row["step"]: row["text_sample"] for row in read_metrics(out) if "text_sample" in row}


@pytest.mark.e2e
def test_samples_reach_metrics_and_one_wandb_table(with_wandb):
    from wandb_offline import read_runs

    logged = texts(with_wandb)
    assert sorted(logged) == [6, 12] and all(len(t) > 0 for t in logged.values())
    (run,) = read_runs(with_wandb / "wandb")
    tables = [row for row in run.history if "text_samples" in row]
    assert [row["step"] for row in tables] == [6, 12]  # logged at each evaluation, on the update's own step
    last = json.loads((next((with_wandb / "wandb").glob("offline-run-*")) / "files" /
                       tables[-1]["text_samples"]["path"]).read_text())
    assert last["columns"] == ["step", "prompt", "text"]
    assert last["data"] == [[step, PROMPT, text] for step, text in sorted(logged.items())]  # the whole history


@pytest.mark.e2e
def test_identical_runs_sample_the_same_text(with_wandb, sampled):
    assert texts(sampled) == texts(with_wandb)  # also: logging to W&B changes nothing


@pytest.mark.e2e
def test_the_hook_leaves_the_training_alone(sampled, plain):
    """Dropout draws from the global RNG at every update: one draw by the hook would change every later mask."""
    assert (sampled / "model.safetensors").read_bytes() == (plain / "model.safetensors").read_bytes()
    strip = lambda rows: {s: {k: v for k, v in r.items() if k in ("loss", "lr")} for s, r in rows.items()}  # noqa: E731
    assert strip(train_rows(sampled)) == strip(train_rows(plain))
    evals = lambda out: [r["eval/loss"] for r in read_metrics(out) if "eval/loss" in r]  # noqa: E731
    assert evals(sampled) == evals(plain)


@pytest.mark.e2e
def test_a_resumed_run_samples_the_same_text_and_keeps_the_table(corpus, sampled, tmp_path):
    for steps in (6, 12):
        run_here(*tiny_args(corpus, steps), *RUN, HOOK, f"output_dir={tmp_path}")
    assert texts(tmp_path) == texts(sampled)
    state = torch.load(tmp_path / "checkpoints" / "step_00000012" / "trainer.pt", weights_only=True)
    rows = state["hooks"]["0:sample_text"]["rows"]
    assert rows == [[step, PROMPT, text] for step, text in sorted(texts(sampled).items())]


@pytest.mark.e2e
def test_sample_script_prints_the_hooks_last_text_from_the_saved_weights(sampled):
    """The final evaluation samples the final weights: scripts/sample.py, same arguments, same text."""
    proc = run_here("--run", str(sampled), "--prompt", PROMPT, "--length", str(LENGTH), "--seed", str(SEED),
                    "--temperature", str(TEMPERATURE), "--top-k", str(TOP_K), "--device", "cpu", script=SAMPLE)
    assert proc.stdout == PROMPT + texts(sampled)[12] + "\n"


def run_script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=clean_env(), capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize(("case", "key", "words"), [
    ("mlp", "hooks.0.name", "needs a token model"),
    ("long prompt", "hooks.0.kwargs.prompt", "more than the model's context of 32"),
    ("no run", "--run", "has no config.yaml and no model.safetensors"),
])
def test_bad_input_is_one_line_naming_the_key_and_exit_2(corpus, tmp_path, case, key, words):
    out = tmp_path / "run"
    if case == "mlp":  # the default config's model maps features to a number, not tokens to logits
        proc = run_script(str(ROOT / "scripts" / "train.py"), "hooks=[{name: sample_text}]", f"output_dir={out}")
    elif case == "long prompt":
        proc = run_script(str(ROOT / "scripts" / "train.py"), *tiny_args(corpus, 12), *RUN,
                          f"hooks=[{{name: sample_text, kwargs: {{prompt: '{'x' * 33}'}}}}]", f"output_dir={out}")
    else:
        out.mkdir()
        proc = run_script(str(SAMPLE), "--run", str(out))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"error: {key}: ") and words in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stdout == ""
    assert case == "no run" or not out.exists()
