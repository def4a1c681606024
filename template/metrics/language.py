"""Token-model metrics: `perplexity`, exp of the mean next-token cross entropy over every evaluated token."""

from __future__ import annotations

from torchmetrics.text import Perplexity as TorchPerplexity

from template.metrics.base import METRICS


@METRICS.register("perplexity")
class Perplexity(TorchPerplexity):
    """Logits (B, T, V) against targets (B, T); kwargs pass through to torchmetrics (`ignore_index`: a
    padding id that counts for nothing). Weighted by tokens, so it equals exp(eval/loss) when every sample
    has the same number of tokens."""
