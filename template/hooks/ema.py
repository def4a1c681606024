"""`ema`: an exponential moving average of the weights, evaluated beside them and saved at the end.

ema = decay * ema + (1 - decay) * weights, every `every` updates from update `start` (the first update at
or after `start` copies the weights). It is computed on every rank from weights that DDP keeps identical,
so the replicas' EMAs are equal too (summary.json: `ema_digest`, and `ema_replica_digests` from every
rank). At each evaluation the EMA weights are swapped in and evaluated (`eval/loss_ema` beside
`eval/loss`, `eval/<metric>_ema` beside each `eval.metrics` value); at the end they are written to
`model_ema.safetensors` under the model's own names. Its tensors travel in the checkpoint, so a resumed
run continues the same average. Sharded (`distributed.shard: fsdp2`), each rank keeps the shadow of its own
shards (DTensors like the parameters), the checkpoint writes them with the model's shards, and the end
gathers the full EMA weights to write them.
"""

from __future__ import annotations

from typing import Any

import torch
from accelerate.utils import gather_object

from template.hooks.base import HOOKS, Hook, HookContext
from template.runtime.distributed import param_digest
from template.runtime.sharding import full_state_dict, is_dtensor, is_sharded


@HOOKS.register("ema")
class EMA(Hook):
    def __init__(self, decay: float = 0.999, start: int = 1, every: int = 1) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        if start < 1 or every < 1:
            raise ValueError(f"start and every must be >= 1, got {start}, {every}")
        self.decay, self.start, self.every = decay, start, every
        self.shadow: dict[str, torch.Tensor] = {}
        self.updates = 0  # EMA updates made so far
        self.loaded = False  # a checkpoint's shadow, not yet placed like the parameters

    def _params(self, ctx: HookContext) -> dict[str, torch.Tensor]:
        params: dict[str, torch.Tensor] = {name: p for name, p in ctx.plain.named_parameters() if p.requires_grad}
        if self.loaded:  # once after a resume: an unsharded run's full tensors, sharded like the parameters now
            self.loaded = False
            for name, value in self.shadow.items():
                param = params[name]
                if is_dtensor(param) and not is_dtensor(value):
                    from torch.distributed.tensor import distribute_tensor

                    self.shadow[name] = distribute_tensor(value.to(param.device), param.device_mesh,
                                                          param.placements, src_data_rank=None)
        return params

    @torch.no_grad()
    def after_update(self, ctx: HookContext) -> None:
        if ctx.step < self.start or (ctx.step - self.start) % self.every:
            return
        params = self._params(ctx)
        if not self.shadow:
            self.shadow = {name: p.detach().clone().float() for name, p in params.items()}
        else:
            names = list(self.shadow)
            torch._foreach_lerp_([self.shadow[n] for n in names], [params[n].detach().float() for n in names],
                                 1.0 - self.decay)
        self.updates += 1

    @torch.no_grad()
    def swapped_in(self, ctx: HookContext) -> dict[str, torch.Tensor]:
        """Put the EMA into the model; return the weights it replaced."""
        params = self._params(ctx)
        saved = {name: params[name].detach().clone() for name in self.shadow}
        for name, value in self.shadow.items():
            params[name].copy_(value)
        return saved

    @torch.no_grad()
    def restore(self, ctx: HookContext, saved: dict[str, torch.Tensor]) -> None:
        params = self._params(ctx)
        for name, value in saved.items():
            params[name].copy_(value)

    def after_evaluate(self, ctx: HookContext, metrics: dict[str, float]) -> None:
        if not self.shadow or ctx.evaluate is None:
            return
        saved = self.swapped_in(ctx)
        try:
            metrics.update({f"{key}_ema": value for key, value in ctx.evaluate().items()})
        finally:
            self.restore(ctx, saved)

    def eval_keys(self, produced: list[str]) -> list[str]:
        return [f"{key}_ema" for key in produced]

    def state_dict(self) -> dict[str, Any]:
        return {"shadow": self.shadow, "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.shadow = {name: t.clone() for name, t in state["shadow"].items()}
        self.updates = int(state["updates"])
        self.loaded = True

    def on_end(self, ctx: HookContext, summary: dict[str, Any]) -> None:
        if not self.shadow:
            return
        saved = self.swapped_in(ctx)
        try:
            digests = list(gather_object([param_digest(ctx.plain)]))  # every rank's EMA: equal replicas
            summary["ema_digest"], summary["ema_replica_digests"] = digests[ctx.accelerator.process_index], digests
            weights = full_state_dict(ctx.model) if is_sharded(ctx.model) else ctx.plain.state_dict()  # a collective
            if ctx.is_main_process:
                from safetensors.torch import save_file

                from template.runtime.checkpoint import untied

                save_file(untied(weights), str(ctx.output_dir / "model_ema.safetensors"))
        finally:
            self.restore(ctx, saved)
        summary["ema_updates"] = self.updates
