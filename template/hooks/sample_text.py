"""`sample_text`: at evaluations, text sampled from the current weights of a token model, logged.

Every `every`-th evaluation, rank 0 continues `prompt` by `length` tokens (`template/models/sampling.py`:
`temperature`, 0 for the most likely token; `top_k`), drawn from a `torch.Generator` seeded with `seed` at
each sample: the text depends on the weights alone, so identical runs (and a resumed one) sample the same
text, and the training's random state is not touched (no global draw; `preserved_rng` around wandb too).
The text goes into the next metrics.jsonl / W&B row as `text_sample` (the evaluation's own row when
train.eval_every is a multiple of train.log_every), and every sample so far into the W&B table
`text_samples` (columns step, prompt, text), which travels in the checkpoint so a resumed run's table is whole.

Decoding uses the run's `tokenizer.json` (output_dir, else `data.kwargs.dir`), else bytes
(`template/data/text.py`). Refused before any work (exit 2): a model that is not a token model, a prompt
longer than its context, a run that does not evaluate. Generation runs a plain forward of the unwrapped
model on rank 0 only under DDP; sharded (`distributed.shard: fsdp2`) every rank must join each forward of its
shards, so every rank generates the same text (same weights, same seeded generator) and rank 0 logs it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from template.config import Config
from template.data.text import TextCodec
from template.errors import ConfigError
from template.hooks.base import HOOKS, Hook, HookContext
from template.models.sampling import context_length, generate, prompt_problem, token_model_vocab
from template.runtime.rng import preserved_rng
from template.runtime.sharding import is_sharded, reshard

TABLE_COLUMNS: list[str | int] = ["step", "prompt", "text"]


@HOOKS.register("sample_text")
class SampleText(Hook):
    def __init__(self, prompt: str = "\n", length: int = 100, temperature: float = 1.0, top_k: int | None = None,
                 seed: int = 0, every: int = 1) -> None:
        if not isinstance(prompt, str) or not prompt:
            raise ValueError(f"prompt must be a non-empty string, got {prompt!r}")
        if length < 1 or every < 1:
            raise ValueError(f"length and every must be >= 1, got {length}, {every}")
        if temperature < 0 or (top_k is not None and top_k < 1):
            raise ValueError(f"need temperature >= 0 and top_k >= 1 (or null), got {temperature}, {top_k}")
        self.prompt, self.length, self.temperature, self.top_k = prompt, length, temperature, top_k
        self.seed, self.every = seed, every
        self.codec = TextCodec()
        self.ids: list[int] = []
        self.evals = 0  # evaluations seen
        self.rows: list[list[Any]] = []  # the W&B table: [step, prompt, text] per sample (rank 0's)
        self.pending: str | None = None  # the newest text, for the next logged row

    def check(self, cfg: Config, model: nn.Module) -> None:
        if not cfg.train.eval_every:
            raise ConfigError("train.eval_every", "is 0, but the sample_text hook samples at evaluations")
        try:
            vocab = token_model_vocab(model)
        except ValueError as exc:
            raise ConfigError("hooks.name", f"sample_text needs a token model, and model '{cfg.model.name}' is not "
                                            f"one: {exc}") from None
        data_dir = cfg.data.kwargs.get("dir")
        self.codec = TextCodec.for_run(cfg.output_dir, data_dir)
        if self.codec.tokenizer is None and vocab > self.codec.vocab_size:
            raise ConfigError("hooks.name", f"model '{cfg.model.name}' has a vocabulary of {vocab}, but there is no "
                                            f"tokenizer.json in {cfg.output_dir} or {data_dir}: bytes decode ids < 256")
        self.ids = self.codec.encode(self.prompt)
        problem = prompt_problem(self.ids, vocab, context_length(model), self.codec.name)
        if problem:
            raise ConfigError("hooks.kwargs.prompt", problem)

    def after_evaluate(self, ctx: HookContext, metrics: dict[str, float]) -> None:
        self.evals += 1
        if self.evals % self.every:
            return
        sharded = is_sharded(ctx.model)
        if not (ctx.is_main_process or sharded):
            return
        device = next(ctx.plain.parameters()).device
        with preserved_rng(), ctx.accelerator.autocast():
            generator = torch.Generator(device=device).manual_seed(self.seed)
            new = generate(ctx.plain, torch.tensor(self.ids), self.length, self.temperature, self.top_k, generator)
        if sharded:
            reshard(ctx.model)  # forwards without backward leave the root's parameters gathered
        text = self.codec.decode(new[0].tolist())
        self.rows.append([ctx.step, self.prompt, text])
        self.pending = text
        if any(tracker.name == "wandb" for tracker in ctx.accelerator.trackers):
            with preserved_rng():
                import wandb

                table = wandb.Table(columns=TABLE_COLUMNS, data=[list(row) for row in self.rows])
                ctx.accelerator.log({"step": ctx.step, "text_samples": table}, step=ctx.step)

    def on_log(self, ctx: HookContext, row: dict[str, Any]) -> None:
        if self.pending is not None:
            row["text_sample"] = self.pending
            self.pending = None

    def state_dict(self) -> dict[str, Any]:
        return {"evals": self.evals, "rows": self.rows, "pending": self.pending}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.evals, self.rows, self.pending = int(state["evals"]), list(state["rows"]), state["pending"]

