"""lightning.Trainer on a LightningModule doing what the raw loop does.

Only when `lightning` is importable (`pip install -e ".[bench]"`); the throughput section skips it with
a note otherwise.
"""

from __future__ import annotations

import importlib.util
import logging
import warnings
from typing import Any

import torch

from bench.configs import LOG_EVERY
from bench.loops.raw import build_common
from template.config import Config


def lightning_available() -> bool:
    return importlib.util.find_spec("lightning") is not None


def run_lightning(cfg: Config, device: torch.device) -> dict[str, Any]:
    import lightning as L
    from torch.utils.data import DataLoader

    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    model, loss_fn, optimizer, scheduler, train_set = build_common(cfg, torch.device("cpu"))

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model, self.loss_fn = model, loss_fn

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            loss = self.loss_fn(self.model(x), y)
            self.log("train/loss", loss)
            return loss

        def configure_optimizers(self) -> Any:
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    trainer = L.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, max_steps=cfg.train.max_steps,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        gradient_clip_val=cfg.train.clip_grad_norm, log_every_n_steps=LOG_EVERY, num_sanity_val_steps=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(Module(), DataLoader(train_set, batch_size=cfg.train.batch_size, shuffle=True, drop_last=True))
    return {}

