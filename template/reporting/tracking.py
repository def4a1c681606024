"""What a run reports: `metrics.jsonl` rows on rank 0 and, when enabled, the same rows in W&B.

W&B goes through Accelerate's tracker API, and only the main process creates a run: one run per
training, never one per rank. It runs offline, its files under output_dir, unless the user has an online
login configured (WANDB_API_KEY, WANDB_IDENTITY_TOKEN_FILE or a netrc entry for the W&B host);
`WANDB_MODE` always wins, and `WANDB_PROJECT` / `WANDB_ENTITY` win over `tracking.project` /
`tracking.entity`. With `tracking.wandb=false` wandb is never imported.

What a dashboard can rely on:
- every row is logged with `step=` its update number, so W&B's own `_step` is the update counter, and
  `define_metric` makes `step` the x axis of every chart;
- the run keeps its id across resumes (the id travels in the checkpoint). A resumed process first
  re-logs, from metrics.jsonl, the rows up to the checkpoint that this W&B run does not hold yet
  (`_replay_rows`), then trains on, so each step is logged once and in order:
  * offline, every process writes its own `offline-run-*` directory and its W&B step starts at 0, so
    the newest directory holds the whole history 0..N by itself, the updates a killed process ran
    past its checkpoint with the resumed process's values. Syncing that one directory gives the
    complete run; merging all of them by `step`, later directory winning, gives the same. (A process
    killed with SIGKILL leaves only what wandb had flushed, which can be nothing: wandb buffers its
    file. The replay is what makes that harmless);
  * online, W&B refuses steps below the last one it holds (it drops them with a warning), so the rows
    it already holds are not re-sent: past a kill, those updates keep the killed process's rows, whose
    lr and loss the resumed process reproduces exactly (only samples_per_s differs);
- the logged and saved config never holds secrets (`template/reporting/redaction.py`), nor does the command line
  that wandb records with the run's metadata (wandb does not record the environment itself; see
  `_wandb_settings`).
"""

from __future__ import annotations

import json
import math
import netrc
import os
import secrets
import string
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlparse

from accelerate import Accelerator

from template.config import Config
from template.metrics.base import better_when_higher
from template.reporting.artifacts import MODEL_FILES, ModelArtifacts
from template.reporting.redaction import redact, redacted_sys_argv, safe_config
from template.runtime.rng import preserved_rng

# ------------------------------------------------------------------------------------------------
# W&B settings
# ------------------------------------------------------------------------------------------------


def _wandb_host() -> str:
    url = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
    return urlparse(url if "//" in url else f"https://{url}").hostname or "api.wandb.ai"


def _netrc_path() -> Path:
    if os.environ.get("NETRC"):
        return Path(os.environ["NETRC"]).expanduser()
    for name in ("~/.netrc", "~/_netrc"):
        path = Path(name).expanduser()
        if path.is_file():
            return path
    return Path("~/.netrc").expanduser()


def login_configured() -> bool:
    """Whether wandb would find credentials: the environment, or a netrc entry for the W&B host."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    path = _netrc_path()
    if not path.is_file():
        return False
    try:
        return netrc.netrc(str(path)).authenticators(_wandb_host()) is not None
    except (netrc.NetrcParseError, OSError):
        return False


def wandb_mode() -> str | None:
    """Offline unless a login is configured; None lets WANDB_MODE (or the login) decide."""
    if os.environ.get("WANDB_MODE"):
        return None
    return None if login_configured() else "offline"


def run_labels(cfg: Config) -> dict[str, Any]:
    """Run name, group and tags from the config, so dashboards can compare strategies side by side."""
    s = cfg.scheduler
    strategy = f"{s.strategy}:{'expression' if s.strategy == 'lambda' and s.expression else s.name}"
    return redact({
        "name": cfg.tracking.name or f"{cfg.optimizer.name}-{strategy}-lr{cfg.optimizer.lr:g}-seed{cfg.seed}",
        "group": cfg.tracking.group or strategy,
        "tags": [*cfg.tracking.tags, f"strategy:{s.strategy}", f"optimizer:{cfg.optimizer.name}"],
    })


def new_run_id() -> str:
    """The id of a new run: the sweep agent's (WANDB_RUN_ID) when there is one, else a random one."""
    alphabet = string.ascii_lowercase + string.digits
    return os.environ.get("WANDB_RUN_ID") or "".join(secrets.choice(alphabet) for _ in range(8))


def _wandb_settings(wandb: Any) -> Any:
    """What wandb records besides what we log.

    Measured with wandb 0.31 (offline run files): no environment variables; the command line
    (`sys.argv`, shown redacted, see `redacted_sys_argv`), program path, host name, OS, Python,
    executable, CPU/GPU/memory/disk sizes, the git commit and remote (wandb strips a password from
    the remote URL), pip requirements, and the console output. Job creation (a W&B Launch feature)
    would read `sys.argv` again at the end of the run, unredacted: it is turned off.
    """
    return wandb.Settings(disable_job_creation=True)


# ------------------------------------------------------------------------------------------------
# The tracker
# ------------------------------------------------------------------------------------------------


def _replay_rows(path: Path, first: int, last: int) -> list[dict[str, Any]]:
    """metrics.jsonl's rows for steps first..last, one per step (rows of a step merged, later wins)."""
    if last < first or not path.is_file():
        return []
    merged: dict[int, dict[str, Any]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
            step = int(row["step"])
        except (ValueError, KeyError, TypeError):
            continue  # a line torn by a kill
        if first <= step <= last:
            merged.setdefault(step, {}).update(row)
    return [merged[s] for s in sorted(merged)]


class Tracker:
    """Rank 0 appends one JSON row per logged update; W&B (optional) receives the same row.

    Built before the checkpoint is read (its W&B run id is the checkpoint's `tracker` entry), started after:
    `start(start_step, images)` opens metrics.jsonl and the W&B run, re-logs what the W&B run lacks up to
    `start_step` (see the module docstring) and logs `images` (the lr preview, drawn by the trainer) at step 0.
    """

    def __init__(self, accelerator: Accelerator, cfg: Config, higher_is_better: dict[str, bool] | None = None) -> None:
        self.accelerator, self.cfg = accelerator, cfg
        self.higher_is_better = higher_is_better or {}  # eval.metrics' directions; losses are lower-is-better
        self.enabled = accelerator.is_main_process
        self.wandb = cfg.tracking.wandb
        self.run_id: str | None = None
        self.wandb_from = 0  # lowest step the W&B run accepts (0 unless an online resume)
        self._run: Any = None
        self._file: TextIO | None = None
        self.best: dict[str, tuple[float, int]] = {}  # eval key -> (best value, its update)
        self.confusion: list[list[int]] | None = None  # the last evaluation's confusion matrix
        self.peaks: dict[str, float] = {}  # memory key -> the run's peak so far (this process's)
        self.artifacts = ModelArtifacts(cfg)  # tracking.log_model

    def state_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "best": {k: list(v) for k, v in self.best.items()}, "peaks": self.peaks,
                "model_best": self.artifacts.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.run_id = state["run_id"]
        self.best = {k: (float(v), int(s)) for k, (v, s) in state["best"].items()}
        self.peaks = dict(state["peaks"])
        self.artifacts.load_state_dict(state.get("model_best"))  # absent in checkpoints from before log_model

    def run_summary(self) -> dict[str, Any]:
        """For summary.json and the W&B run summary: each eval value's best and its update, the peak memory."""
        out: dict[str, Any] = {}
        for key, (value, step) in self.best.items():
            out[f"best/{key}"], out[f"best/{key}_step"] = value, step
        out.update(self.peaks)
        if self.confusion is not None:
            out["confusion_matrix"] = self.confusion
        return out

    def start(self, start_step: int, images: dict[str, Path] | None = None) -> None:
        if not self.enabled:
            return
        out = Path(self.cfg.output_dir)
        metrics = out / "metrics.jsonl"
        replay = _replay_rows(metrics, 1, start_step) if self.wandb and start_step else []
        self._file = metrics.open("a", encoding="utf-8")
        if self.wandb:
            with preserved_rng():  # W&B's setup must not shift the training's random draws
                self._start_wandb(self.cfg, out, replay, images or {})

    def _start_wandb(self, cfg: Config, out: Path, replay: list[dict[str, Any]], images: dict[str, Path]) -> None:
        import wandb  # only when enabled

        if self.run_id is None:
            self.run_id = new_run_id()
        init: dict[str, Any] = {"dir": str(out), "id": self.run_id, "resume": "allow",
                                "settings": _wandb_settings(wandb), **run_labels(cfg)}
        mode = wandb_mode()
        if mode:
            init["mode"] = mode
        entity = os.environ.get("WANDB_ENTITY") or cfg.tracking.entity
        if entity:
            init["entity"] = entity
        project = os.environ.get("WANDB_PROJECT") or cfg.tracking.project
        with redacted_sys_argv():
            self.accelerator.init_trackers(project, config=safe_config(cfg), init_kwargs={"wandb": init})
        self._run = self.accelerator.get_tracker("wandb", unwrap=True)
        self.run_id = self._run.id  # a sweep agent imposes its own id (wandb ignores ours there)
        self._run.define_metric("step")
        self._run.define_metric("*", step_metric="step")
        for axis in ("samples", "tokens", "epoch"):  # x axes to compare runs of other batch sizes on one chart
            self._run.define_metric(axis, hidden=False)
        # A new or offline run starts at 0; an online resume at the step after the last one W&B holds.
        self.wandb_from = int(self._run.step or 0)
        if images and self.wandb_from == 0:
            self.log_images(images, step=0)
        for row in replay:
            self._log_wandb(row)

    def _log_wandb(self, row: dict[str, Any]) -> None:
        if self._run is not None and row["step"] >= self.wandb_from:
            self.accelerator.log(row, step=row["step"])

    def log_eval(self, step: int, values: dict[str, float]) -> None:
        """An evaluation row; the best value of each eval loss and metric (the lowest, or the highest where a
        metric's `higher_is_better` says so) and its update go to the run summary."""
        for key, value in values.items():
            higher = better_when_higher(key, self.higher_is_better)
            if higher is None or not math.isfinite(value):
                continue
            best = self.best.get(key)
            if best is None or (value > best[0] if higher else value < best[0]):
                self.best[key] = (value, step)
        self.artifacts.see(step, values)
        self.log({"step": step, **values})
        if self._run is not None:
            self._run.summary.update(self.run_summary())

    def log(self, row: dict[str, Any]) -> None:
        """Append `row` (it has `step`) to metrics.jsonl and send it to W&B."""
        for key, value in row.items():
            if key.startswith("memory/"):
                self.peaks[key] = max(self.peaks.get(key, 0.0), value)
        if not self.enabled:
            return
        assert self._file is not None
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        self._log_wandb(row)

    def log_confusion(self, step: int, metrics: Any) -> None:
        """`eval.confusion_matrix`: the matrix `metrics` (EvalMetrics) just computed, summed over the ranks, to
        W&B as a table drawn by W&B's confusion-matrix chart (what `wandb.plot.confusion_matrix` logs, made
        from the counts rather than from every sample's label), and kept for the run summary."""
        matrix = metrics.confusion if metrics is not None else None
        if matrix is None:
            return
        self.confusion = matrix
        if self._run is None or step < self.wandb_from:
            return
        import wandb

        cells = [[str(actual), str(predicted), count] for actual, row in enumerate(matrix)
                 for predicted, count in enumerate(row)]
        table = wandb.Table(columns=["Actual", "Predicted", "nPredictions"], data=cells)
        chart = wandb.plot_table("wandb/confusion_matrix/v1", table,
                                 {"Actual": "Actual", "Predicted": "Predicted", "nPredictions": "nPredictions"},
                                 {"title": f"Confusion matrix, update {step}"})
        self.accelerator.log({"step": step, "eval/confusion_matrix": chart}, step=step)

    def attach(self, files: list[Path]) -> None:
        """Files (profiler traces) saved with the W&B run, under their path relative to output_dir."""
        if self._run is None or not files:
            return
        for path in files:
            self._run.save(str(path), base_path=self.cfg.output_dir, policy="now")

    def log_checkpoint(self, path: Path, step: int) -> None:
        """A complete checkpoint directory as a version of the `checkpoint-<run id>` artifact
        (`tracking.log_model=checkpoints`; rank 0; see reporting/artifacts.py for what it costs)."""
        if self._run is not None and self.artifacts.mode == "checkpoints":
            with preserved_rng():
                self.artifacts.log(self._run, "checkpoint", step, [path])

    def log_model(self, step: int) -> None:
        """The final weights (model.safetensors, beside config.yaml and tokenizer.json) as a version of the
        `model-<run id>` artifact (`tracking.log_model=final` or `checkpoints`; rank 0)."""
        if self._run is not None and self.artifacts.mode != "false":
            out = Path(self.cfg.output_dir)
            with preserved_rng():
                self.artifacts.log(self._run, "model", step, [out / name for name in MODEL_FILES])

    def log_images(self, images: dict[str, Path], step: int) -> None:
        """PNG files as W&B images under `plots/<name>`, at update `step` (0: before training)."""
        if self._run is None or step < self.wandb_from:
            return
        import wandb

        row: dict[str, Any] = {f"plots/{k}": wandb.Image(str(p)) for k, p in images.items() if Path(p).exists()}
        if row:
            self.accelerator.log({"step": step, **row}, step=step)

    def close(self, exit_code: int = 0) -> None:
        """Close metrics.jsonl and finish the W&B run (exit_code 1: shown as failed). Safe to call twice."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._run is not None:
            # Not accelerator.end_training(): it also destroys the process group, on this rank only,
            # while the other ranks still have collectives to run.
            if exit_code:
                self._run.finish(exit_code=exit_code)
            else:
                for tracker in self.accelerator.trackers:
                    tracker.finish()
            self.accelerator.trackers.clear()
            self._run = None


def training_row(step: int, lrs: dict[str, float], loss: float, epoch: float, rates: dict[str, float],
                 grad_norm: Any = None, skipped: int | None = None, samples: int | None = None) -> dict[str, Any]:
    """One metrics.jsonl row: `lr` is param group 0's lr used by update `step`, `lr/<group>` every group's;
    `rates` are the throughput keys (samples_per_s, and tokens_per_s / mfu for token models)."""
    row: dict[str, Any] = {"step": step, "lr": next(iter(lrs.values())), **{f"lr/{k}": v for k, v in lrs.items()},
                           "loss": loss, "epoch": epoch, **rates}
    if grad_norm is not None:
        row["grad_norm"] = float(grad_norm)
    if skipped is not None:
        row["skipped_updates"] = skipped
    if samples is not None:
        row["samples"] = samples
    return row
