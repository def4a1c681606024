"""What a run reports: `metrics.jsonl` rows on rank 0 and, when enabled, the same rows in W&B.

W&B goes through Accelerate's tracker API, so only the main process creates a run (one run per
training, never one per rank). It runs offline, its files under output_dir, unless the user has an
online login configured; `WANDB_MODE` always wins. With `tracking.wandb=false` wandb is never imported.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, TextIO

from accelerate import Accelerator

from template.config import Config, to_dict

SECRET_KEY = re.compile(r"(api[_-]?key|token|secret|password|passwd|credential)", re.IGNORECASE)


def redact(value: Any) -> Any:
    """Drop secret-looking entries from a config tree before it is logged or saved."""
    if isinstance(value, dict):
        return {k: ("<redacted>" if SECRET_KEY.search(str(k)) else redact(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def wandb_mode() -> str | None:
    """Offline unless a login is configured; None lets WANDB_MODE (or the login) decide."""
    if os.environ.get("WANDB_MODE"):
        return None
    netrc = Path.home() / ".netrc"
    logged_in = bool(os.environ.get("WANDB_API_KEY")) or (netrc.is_file() and "api.wandb.ai" in netrc.read_text())
    return None if logged_in else "offline"


def run_labels(cfg: Config) -> dict[str, Any]:
    """Run name, group and tags from the config, so dashboards can compare strategies side by side."""
    s = cfg.scheduler
    strategy = f"{s.strategy}:{'expression' if s.strategy == 'lambda' and s.expression else s.name}"
    return {
        "name": cfg.tracking.name or f"{cfg.optimizer.name}-{strategy}-lr{cfg.optimizer.lr:g}-seed{cfg.seed}",
        "group": cfg.tracking.group or strategy,
        "tags": [*cfg.tracking.tags, f"strategy:{s.strategy}", f"optimizer:{cfg.optimizer.name}"],
    }


class Tracker:
    """Rank 0 appends one JSON row per logged update; W&B (optional) receives the same row."""

    def __init__(self, accelerator: Accelerator, cfg: Config, run_id: str | None = None) -> None:
        self.accelerator = accelerator
        self.enabled = accelerator.is_main_process
        self.wandb = cfg.tracking.wandb
        self.run_id = run_id
        self._file: TextIO | None = None
        if not self.enabled:
            return
        out = Path(cfg.output_dir)
        self._file = (out / "metrics.jsonl").open("a", encoding="utf-8")
        if self.wandb:
            self._start_wandb(cfg, out)

    def _start_wandb(self, cfg: Config, out: Path) -> None:
        import wandb  # only when enabled

        if self.run_id is None:
            self.run_id = wandb.util.generate_id()
        init = {"dir": str(out), "id": self.run_id, "resume": "allow", **run_labels(cfg)}
        mode = wandb_mode()
        if mode:
            init["mode"] = mode
        if cfg.tracking.entity:
            init["entity"] = cfg.tracking.entity
        self.accelerator.init_trackers(
            os.environ.get("WANDB_PROJECT", cfg.tracking.project), config=redact(to_dict(cfg)),
            init_kwargs={"wandb": init},
        )
        run = self.accelerator.get_tracker("wandb", unwrap=True)
        run.define_metric("step")
        run.define_metric("*", step_metric="step")

    def log(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        assert self._file is not None
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self.wandb:
            self.accelerator.log(row, step=row["step"])

    def log_images(self, images: dict[str, Path], step: int) -> None:
        if not (self.enabled and self.wandb):
            return
        import wandb

        self.accelerator.log({k: wandb.Image(str(p)) for k, p in images.items() if p.exists()}, step=step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self.enabled and self.wandb:
            self.accelerator.end_training()
