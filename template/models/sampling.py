"""Sampling text from a token model: `generate`, shared by the `sample_text` hook and scripts/sample.py.

A token model maps (batch, time) ids to (batch, time, vocab) logits (the GPT does); its context is its
`block_size` attribute when it has one (the prompt is then cropped to the last `block_size` tokens at every
step, as nanoGPT's `generate`), unbounded otherwise.

`generate` runs a plain forward of the module it is given, on the calling process only. That is safe for the
unwrapped module of a DDP run on rank 0 alone (DDP's collectives live in its wrapper's forward and backward),
but not for a sharded model (FSDP): every rank holds a shard of each weight and would have to join each
forward. Callers therefore run it on rank 0 with unsharded weights only.
"""

from __future__ import annotations

import torch
from torch import nn


def context_length(model: nn.Module) -> int | None:
    """How many tokens the model sees at once (`block_size`), or None if it does not say."""
    size = getattr(model, "block_size", None)
    return int(size) if isinstance(size, int) and size > 0 else None


@torch.no_grad()
def token_model_vocab(model: nn.Module) -> int:
    """The vocabulary of a token model, found by one forward of 2 tokens; ValueError (saying what the model
    gave) if its output is not (batch, time, vocab) logits for (batch, time) token ids."""
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        out = model(torch.zeros(1, 2, dtype=torch.long, device=device))
    except Exception as exc:  # any error here means the model does not take token ids
        raise ValueError(f"it does not take (batch, time) token ids ({type(exc).__name__}: "
                         f"{' '.join(str(exc).split())[:160]})") from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or out.dim() != 3 or tuple(out.shape[:2]) != (1, 2):
        shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"its output for (batch=1, time=2) token ids is {shape}, not (batch, time, vocab) logits")
    return int(out.shape[-1])


def prompt_problem(ids: list[int], vocab: int, context: int | None, codec: str) -> str | None:
    """What makes encoded prompt `ids` unusable for a model of `vocab` ids and `context` tokens, or None."""
    if not ids:
        return "encodes to no tokens"
    if max(ids) >= vocab:
        return f"encodes to token id {max(ids)} ({codec}), outside the model's vocabulary of {vocab}"
    if context is not None and len(ids) > context:
        return f"encodes to {len(ids)} tokens ({codec}), more than the model's context of {context}"
    return None


@torch.no_grad()
def generate(model: nn.Module, tokens: torch.Tensor, length: int, temperature: float = 1.0, top_k: int | None = None,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """`length` new tokens after `tokens` ((time,) or (batch, time) ids), returned as (batch, length).

    Each step feeds the last `context_length(model)` tokens and draws the next from the last position's
    logits / `temperature` (0: the most likely token), limited to the `top_k` most likely when given, with
    `generator` (on the model's device) as the only source of randomness: the global RNGs are not touched.
    The model runs in eval mode (no dropout) and is put back in the mode it was in. Runs eagerly even on a
    compiled module: a sequence that grows by a token per step would recompile at every length.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    idx = (tokens if tokens.dim() == 2 else tokens[None]).to(device=device, dtype=torch.long)
    context = context_length(model)
    new = []
    try:
        with torch.compiler.set_stance("force_eager"):
            for _ in range(length):
                logits = model(idx if context is None else idx[:, -context:])[:, -1, :].float()
                if temperature == 0:
                    nxt = logits.argmax(dim=-1, keepdim=True)
                else:
                    logits = logits / temperature
                    if top_k is not None and top_k < logits.shape[-1]:
                        kth = torch.topk(logits, top_k).values[:, -1:]
                        logits = logits.masked_fill(logits < kth, float("-inf"))
                    nxt = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator)
                idx = torch.cat([idx, nxt], dim=1)
                new.append(nxt)
    finally:
        model.train(was_training)
    return torch.cat(new, dim=1) if new else idx[:, :0]
