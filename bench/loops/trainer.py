"""The template's trainer itself, `template.trainer.train(cfg)`, timed like every other loop."""

from __future__ import annotations

from typing import Any

import torch

from template.config import Config


def run_trainer(cfg: Config, device: torch.device) -> dict[str, Any]:
    from template.trainer import train

    summary = train(cfg)
    return {"param_digest": summary["param_digest"], "first_update_s": summary["first_update_s"]}

