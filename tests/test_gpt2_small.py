"""configs/gpt2_small.yaml, checked on a CPU: GPT-2 small's shape and recipe, built on the meta device.

Given the config, the model has GPT-2 small's ~124M parameters (124,475,904 with the padded vocabulary, as
nanoGPT counts them), its vocabulary covers the 50,257 ids of the tokenizer its data dir is prepared with,
a global batch of ~0.5M tokens, and the fused AdamW it asks for also steps on a CPU. Its speed is measured
where a GPU is lent (scripts/gpu_check.sh).
"""

from __future__ import annotations

import sys

import torch

from template.config import load_config
from template.models import MODELS
from template.optim import build_optimizer

from conftest import ROOT

CONFIG = ROOT / "configs" / "gpt2_small.yaml"


def test_the_config_validates_with_gpt2_smalls_shape_and_recipe():
    cfg = load_config(CONFIG)
    k, t = cfg.model.kwargs, cfg.train
    assert (k["n_layer"], k["n_head"], k["n_embd"], k["block_size"]) == (12, 12, 768, 1024)
    assert t.mixed_precision == "bf16" and t.compile and cfg.optimizer.kwargs["fused"] is True
    assert t.batch_size % t.grad_accum_steps == 0
    assert 0.45e6 < t.batch_size * k["block_size"] < 0.6e6  # tokens an update, nanoGPT's ~0.5M
    assert cfg.scheduler.name == "warmup_cosine" and 0 < cfg.scheduler.kwargs["warmup_steps"] < t.max_steps


def test_the_model_is_gpt2_small_and_its_vocabulary_covers_the_tokenizers():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import prepare_text
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    cfg = load_config(CONFIG)
    with torch.device("meta"):  # no memory, no init time: the shapes only
        model = MODELS.build(cfg.model.name, **cfg.model.kwargs)
    params = sum(p.numel() for p in model.parameters())
    assert params == 124_475_904  # GPT-2 small with its head tied to the embedding, vocabulary 50,304
    vocab = cfg.model.kwargs["vocab_size"]
    assert vocab >= 50_257 and vocab % 64 == 0
    assert ROOT / cfg.data.kwargs["dir"] == prepare_text.default_out("bpe", 50_257)
    assert cfg.data.kwargs["vocab_size"] == vocab  # what the data dir's tokenizer is checked against
    assert prepare_text.token_dtype(50_257) == "uint16"


def test_its_fused_adamw_steps_on_a_cpu_too():
    cfg = load_config(CONFIG, ["model.kwargs.n_layer=1", "model.kwargs.n_embd=32", "model.kwargs.n_head=2",
                               "model.kwargs.vocab_size=64", "model.kwargs.block_size=8"])
    model = MODELS.build(cfg.model.name, **cfg.model.kwargs)
    optimizer = build_optimizer(model, cfg.optimizer, cfg.seed)
    assert all(group["fused"] for group in optimizer.param_groups)
    before = model.lm_head.weight.detach().clone()
    model(torch.randint(0, 64, (2, 8))).square().mean().backward()
    optimizer.step()
    assert not torch.equal(before, model.lm_head.weight)
