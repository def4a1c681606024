"""Held-out loss in bits per byte: the figure that compares language models whatever their tokenizer.

A loss in nats per token depends on how much text a token holds (a BPE token ~3 bytes, a byte token 1), so
models on different tokenizers compare only per byte of text: loss / ln 2 x tokens / bytes. An eval set
that knows its tokens per byte (`tokens_per_byte`, template/data/tokens.py: 1.0 for bytes) gets `eval/bpb`.
"""

from __future__ import annotations

import math
from typing import Any


def bits_per_byte(eval_loss: float, eval_set: Any) -> dict[str, float]:
    """{"eval/bpb": ...} when `eval_set` has a `tokens_per_byte` ratio, else {}."""
    ratio = getattr(eval_set, "tokens_per_byte", None)
    return {} if ratio is None else {"eval/bpb": eval_loss / math.log(2) * ratio}
