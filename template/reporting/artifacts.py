"""`tracking.log_model`: the run's weights as versioned W&B artifacts of type "model", from rank 0.

- `final`: at the end, `model.safetensors` (with `config.yaml`, and `tokenizer.json` when the run has one: what
  `scripts/sample.py` needs to rebuild and decode the model) as a version of artifact `model-<run id>`;
- `checkpoints`: the same, and every checkpoint directory once it is complete (renamed into place, see
  runtime/checkpoint.py) as a version of `checkpoint-<run id>` (the Hugging Face Trainer's two names).

The names hold the W&B run id, which a resumed run keeps (it travels in the checkpoint): a resume adds versions
to the same artifacts. Each version carries the aliases `latest`, `step-<N>` (its update) and `best` when its
update's monitored eval value is the best so far (W&B moves an alias to the newest version that claims it), and
`{"step": N, <monitor>: value}` as metadata.

What it costs the loop (wandb 0.31, read in wandb/sdk/artifacts/artifact.py and wandb_run.py): `add_file`
copies each file into W&B's staging area (`$WANDB_DATA_DIR/artifacts/staging`, default
~/.local/share/wandb) and hashes it, synchronously, so that rotating or overwriting the original cannot
corrupt the upload; `log_artifact` then only hands a record to wandb's service process and returns (online
it uploads in the background and `finish()` waits for it, offline it is written into `run-*.wandb` for
`wandb sync`, which uploads from the staged copies). The other ranks go on meanwhile and wait for rank 0 at
their next collective. Measured on the default run: docs/wandb.md.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from template.config import Config

MODEL_FILES = ("model.safetensors", "config.yaml", "tokenizer.json")  # what a `model` version holds, if present


def monitored_metric(cfg: Config) -> tuple[str, str] | None:
    """The eval metric whose best version gets the `best` alias, and its direction ("min"/"max").

    The first that applies: the `early_stopping` hook's monitor (what decides when the run ends), then
    `scheduler.monitor` (what a metric-driven lr strategy reads; `kwargs.mode` as ReduceLROnPlateau's), each
    only if it is an `eval/...` value; else `eval/loss` when the run evaluates (the value whose best the run
    summary already reports as `best/eval/loss`). None: nothing is evaluated, no version is `best`.
    """
    from template.hooks.early_stopping import EarlyStopping

    for hook in cfg.hooks:
        if hook.name == "early_stopping":
            stopper = EarlyStopping(**hook.kwargs)  # its defaults and checks, as the run builds it
            if stopper.monitor.startswith("eval/"):
                return stopper.monitor, stopper.mode
    s = cfg.scheduler
    if s.monitor.startswith("eval/"):
        return s.monitor, str(s.kwargs.get("mode", "min"))
    return ("eval/loss", "min") if cfg.train.eval_every else None


class ModelArtifacts:
    """Which versions to log and their aliases; the best monitored value so far (a checkpoint entry, through
    the Tracker's state, so a resumed run's `best` compares with the versions logged before the kill)."""

    def __init__(self, cfg: Config) -> None:
        self.mode = cfg.tracking.log_model
        self.monitor = monitored_metric(cfg) if self.mode != "false" else None
        self.best: tuple[float, int] | None = None  # (value, update) of the best monitored eval so far

    def see(self, step: int, values: dict[str, float]) -> None:
        """An evaluation's values: keep the best monitored one (ties keep the earlier update)."""
        if self.monitor is None or self.monitor[0] not in values:
            return
        value = float(values[self.monitor[0]])
        if not math.isfinite(value):
            return
        if self.best is None or (value < self.best[0] if self.monitor[1] == "min" else value > self.best[0]):
            self.best = (value, step)

    def aliases(self, step: int) -> list[str]:
        best = ["best"] if self.best is not None and self.best[1] == step else []
        return ["latest", f"step-{step}", *best]

    def metadata(self, step: int) -> dict[str, Any]:
        meta: dict[str, Any] = {"step": step}
        if self.monitor is not None and self.best is not None and self.best[1] == step:
            meta[self.monitor[0]] = self.best[0]
        return meta

    def log(self, run: Any, kind: str, step: int, files: list[Path]) -> None:
        """Log `files` (each under its own name at the artifact's root, a directory's files under their
        relative paths) as a new version of `<kind>-<run id>`."""
        import wandb

        artifact = wandb.Artifact(f"{kind}-{run.id}", type="model", metadata=self.metadata(step))
        for path in files:
            if path.is_dir():
                artifact.add_dir(str(path))
            elif path.is_file():
                artifact.add_file(str(path), name=path.name)
        run.log_artifact(artifact, aliases=self.aliases(step))

    def state_dict(self) -> list[float] | None:
        return None if self.best is None else [self.best[0], self.best[1]]

    def load_state_dict(self, state: list[float] | None) -> None:
        self.best = None if state is None else (float(state[0]), int(state[1]))
