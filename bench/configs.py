"""What each timed run trains: the MLP and GPT sizes, and the trimmed configs the trainer and the loops read.

The hand-written loops (bench/loops/) rebuild the trainer's parts by hand, so they check here that the
config still holds the parts they assume: a changed default config stops the benchmark, instead of
quietly comparing different trainings.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from template.config import DEFAULT_CONFIG, Config, load_config

ROOT = Path(__file__).resolve().parent.parent
LOG_EVERY = 10  # the trainer's default cadence; every loop reads the loss this often


@dataclass(frozen=True)
class ModelSpec:
    name: str
    in_features: int
    hidden: int
    depth: int
    batch: int
    warmup: int  # updates excluded from the timing
    measured: int  # timed updates (a multiple of LOG_EVERY)
    data_size: int = 4096

    @property
    def steps(self) -> int:
        return self.warmup + self.measured


SPECS = {
    "small": ModelSpec("small", in_features=8, hidden=64, depth=2, batch=64, warmup=50, measured=1500),
    "mid": ModelSpec("mid", in_features=256, hidden=1024, depth=4, batch=256, warmup=5, measured=100),
}


@dataclass(frozen=True)
class GPTSpec:
    """The gpt section's model (configs/gpt.yaml's GPT, resized) and batch, per device."""

    n_layer: int
    n_head: int
    n_embd: int
    block_size: int
    batch: int
    warmup: int  # updates excluded from the timing: with compile on, the first one compiles
    measured: int  # timed updates (a multiple of LOG_EVERY)
    name: str = "gpt"
    vocab_size: int = 256  # configs/gpt.yaml's bytes

    @property
    def steps(self) -> int:
        return self.warmup + self.measured

    @property
    def tokens_per_update(self) -> int:
        return self.batch * self.block_size


GPT_SPECS = {
    # configs/gpt.yaml's model as shipped, batch 16: ~0.14 s an update on one core
    "cpu": GPTSpec(n_layer=4, n_head=4, n_embd=128, block_size=128, batch=16, warmup=10, measured=100),
    # GPT-2 small's shape (with the byte vocabulary, 256), 16 x 1024 tokens an update in bf16
    "cuda": GPTSpec(n_layer=12, n_head=12, n_embd=768, block_size=1024, batch=16, warmup=10, measured=50),
}
# The same shapes with GPT-2's vocabulary (50,257 padded to 50,304, configs/gpt2_small.yaml's): the output
# projection is then about a third of GPT-2 small's FLOPs. Random tokens (speed does not depend on them); on
# CPU batch 4, since (4 x 128) x 50,304 logits already make the head most of the update.
VOCAB = 50_304
GPT_VOCAB_SPECS = {
    "cpu": GPTSpec(n_layer=4, n_head=4, n_embd=128, block_size=128, batch=4, warmup=2, measured=10, name="gpt_vocab",
                   vocab_size=VOCAB),
    "cuda": GPTSpec(n_layer=12, n_head=12, n_embd=768, block_size=1024, batch=16, warmup=10, measured=50,
                    name="gpt_vocab", vocab_size=VOCAB),
}


def trainer_overrides(spec: ModelSpec, steps: int, output_dir: Path | str) -> list[str]:
    """The default config on `spec`'s model and data, stripped of everything but training and logging."""
    return [
        f"output_dir={output_dir}", "train.resume=none", f"train.max_steps={steps}", f"train.batch_size={spec.batch}",
        f"model.kwargs={{in_features: {spec.in_features}, hidden: {spec.hidden}, depth: {spec.depth}}}",
        f"data.kwargs={{size: {spec.data_size}, eval_size: 512, in_features: {spec.in_features}}}",
        "tracking.wandb=false", "train.progress=false", "train.checkpoint_every=0", "train.eval_every=0",
        "train.plots=false", f"train.log_every={LOG_EVERY}",
    ]


def bench_config(spec: ModelSpec, steps: int, output_dir: Path | str, extra: list[str] | None = None) -> Config:
    cfg = load_config(DEFAULT_CONFIG, [*trainer_overrides(spec, steps, output_dir), *(extra or [])])
    s = cfg.scheduler
    if (s.strategy, s.name, cfg.optimizer.name, cfg.loss.name) != (
            "subclass", "warmup_cosine", "random_scaled_sgd", "simple_mse"):
        raise SystemExit(f"error: the hand-written loops assume the default config's parts, got {cfg}")
    return cfg


GPT_CONFIG = ROOT / "configs" / "gpt.yaml"
# The hand-written loop's parameters without weight decay, the way configs/gpt.yaml's `no_decay` group names them.
NO_DECAY_PATTERNS = ["*.bias", "*ln_*", "transformer.wpe.weight"]


def gpt_config(spec: GPTSpec, output_dir: Path | str, data_dir: Path | str, compile_model: bool,
               device: torch.device) -> Config:
    """configs/gpt.yaml on `spec`'s model and batch, stripped of everything but training and logging."""
    overrides = [
        f"output_dir={output_dir}", "train.resume=none", f"train.max_steps={spec.steps}",
        f"train.batch_size={spec.batch}", f"model.kwargs.n_layer={spec.n_layer}", f"model.kwargs.n_head={spec.n_head}",
        f"model.kwargs.n_embd={spec.n_embd}", f"model.kwargs.block_size={spec.block_size}",
        f"model.kwargs.vocab_size={spec.vocab_size}", f"data.kwargs.dir={data_dir}",
        "tracking.wandb=false", "train.progress=false", "train.checkpoint_every=0", "train.eval_every=0",
        "train.plots=false", f"train.log_every={LOG_EVERY}", f"train.compile={str(compile_model).lower()}",
        *(["train.mixed_precision=bf16"] if device.type == "cuda" else []),
    ]
    cfg = load_config(GPT_CONFIG, overrides)
    if cfg.scheduler.kwargs["warmup_steps"] >= spec.steps:  # --quick: fewer updates than the config's lr warm-up
        cfg = load_config(GPT_CONFIG, [*overrides, f"scheduler.kwargs.warmup_steps={spec.steps // 2}"])
    s, o = cfg.scheduler, cfg.optimizer
    groups = [(g.name, g.params, g.lr, g.weight_decay) for g in o.groups]
    if ((s.strategy, s.name, s.interval, o.name, cfg.loss.name, cfg.model.name, cfg.data.name) != (
            "subclass", "warmup_cosine", "step", "adamw", "next_token", "gpt", "tokens")
            or groups != [("no_decay", NO_DECAY_PATTERNS, None, 0.0)] or cfg.model.kwargs["dropout"]
            or cfg.train.grad_accum_steps != 1 or not cfg.train.clip_grad_norm):
        raise SystemExit(f"error: the nanoGPT-style loop assumes configs/gpt.yaml's parts, got {cfg}")
    return cfg


def token_data(workdir: Path) -> Path:
    """Byte-level token files: data/stdlib_bytes when scripts/prepare_text.py wrote it there, else written now."""
    shipped = ROOT / "data" / "stdlib_bytes"
    meta = shipped / "meta.json"
    if (shipped / "train.bin").is_file() and meta.is_file() and json.loads(meta.read_text()).get("dtype") == "uint8":
        return shipped
    out = workdir / "stdlib_bytes"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "prepare_text.py"), "--out", str(out)], cwd=ROOT,
                   check=True, capture_output=True, timeout=300)
    return out



def random_token_data(workdir: Path, vocab_size: int, tokens: int = 1 << 22, seed: int = 0) -> Path:
    """uint16 token files of uniform random ids below `vocab_size`: the speed of a vocabulary without a corpus."""
    import numpy as np

    out = workdir / f"random_tokens_{vocab_size}"
    if not (out / "meta.json").is_file():
        out.mkdir(parents=True, exist_ok=True)
        ids = np.random.default_rng(seed).integers(0, vocab_size, size=tokens, dtype=np.uint16)
        ids.tofile(out / "train.bin")
        ids[: tokens // 8].tofile(out / "val.bin")
        (out / "meta.json").write_text(json.dumps({"dtype": "uint16", "vocab_size": vocab_size}) + "\n")
    return out
