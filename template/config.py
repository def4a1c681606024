"""Typed configuration: YAML files + dotted command-line overrides, validated before any work.

OmegaConf merges the YAML and the overrides onto the dataclass schema below, so an unknown key
(a typo) or a value of the wrong type is rejected by the library itself; `validate` adds the range
checks that a type cannot express. Every problem surfaces as one `ConfigError` naming the key, which
the scripts turn into `error: <key>: <problem>` and exit status 2.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from template.errors import ConfigError, describe, suggest

PACKAGE = __name__.split(".")[0]  # this package's name, whatever a fork renamed it to (the W&B project default)
# The default config: the source checkout's (beside the package) first, else configs/ in the working directory
# (an installed package run from a checkout or a copy of its configs/): see `default_config`.
DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "default.yaml"


@dataclass
class ModelConfig:
    name: str = "mlp"
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataConfig:
    name: str = "synthetic_regression"
    kwargs: dict[str, Any] = field(default_factory=dict)
    num_workers: int = 0


@dataclass
class LossConfig:
    name: str = "simple_mse"
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class ParamGroupConfig:
    """Parameters whose names match any of `params` (fnmatch globs) form their own group."""

    name: str = "group"
    params: list[str] = field(default_factory=list)
    lr: float | None = None
    weight_decay: float | None = None


@dataclass
class OptimizerConfig:
    name: str = "random_scaled_sgd"
    lr: float = 0.1
    weight_decay: float = 0.0
    kwargs: dict[str, Any] = field(default_factory=dict)
    groups: list[ParamGroupConfig] = field(default_factory=list)


@dataclass
class SchedulerConfig:
    strategy: str = "builtin"
    name: str = "ConstantLR"
    kwargs: dict[str, Any] = field(default_factory=dict)
    expression: str | None = None
    constants: dict[str, float] = field(default_factory=dict)
    interval: str = "step"
    monitor: str = "train/loss"
    clock: str = "updates"  # what a strategy's step counts: applied updates, or samples (template/runtime/clock.py)
    reference_batch: int | None = None  # samples per step with clock=samples; None: train.batch_size


@dataclass
class ProfileConfig:
    """`train.profile: {start: 20, steps: 5}`: record updates start..start+steps-1 with torch.profiler."""

    start: int = 10
    steps: int = 5


@dataclass
class TrainConfig:
    max_steps: int = 200
    max_samples: int | None = None  # instead of max_steps: the run's length in samples (template/runtime/clock.py)
    batch_size: int = 64
    grad_accum_steps: int = 1
    # per-process micro-batch: null (from grad_accum_steps), a number, or `auto` (template/runtime/batch_size.py)
    micro_batch_size: int | str | None = None
    log_every: int = 10
    eval_every: int = 0
    eval_batches: int = 4
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    resume: str = "auto"
    clip_grad_norm: float = 0.0
    mixed_precision: str | None = None
    nonfinite: str = "stop"
    progress: bool = True
    plots: bool = True
    keep_freed_memory: bool = True  # glibc keeps freed host memory for the next update (runtime/host_memory.py)
    compile: bool = False  # torch.compile the model (template/runtime/compile.py)
    deterministic: bool = False  # deterministic kernels only: a GPU resume is then bit-identical (slower)
    peak_flops: float = 0.0  # one device's peak FLOP/s for MFU; 0: known GPUs' bf16 peak, none on CPU
    profile: ProfileConfig | None = None  # off; {start, steps}: a torch.profiler trace (reporting/profiling.py)


@dataclass
class DistributedConfig:
    sync_check_every: int = 100
    sync_check_action: str = "error"
    timeout_s: float = 600.0  # the longest a rank waits in a collective (a stuck peer) before the job fails
    shard: str = "none"  # fsdp2: parameters, gradients and optimizer state sharded (template/runtime/sharding.py)
    shard_units: list[str] = field(default_factory=list)  # module name globs sharded one by one; []: the model's


@dataclass
class TrackingConfig:
    wandb: bool = False
    project: str = PACKAGE
    entity: str | None = None
    name: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    log_grad_norm: bool = False  # log grad_norm even when train.clip_grad_norm is 0 (clipping logs it anyway)
    log_model: str = "false"  # false | final | checkpoints: the weights as W&B artifacts (reporting/artifacts.py)


@dataclass
class HookConfig:
    """One entry of `hooks:`: a registered hook (template/hooks/) and its constructor arguments."""

    name: str = ""
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class MetricConfig:
    """One entry of `eval.metrics`: a registered metric (template/metrics/), its kwargs, and the name it is
    logged under (`eval/<log_as or name>`; set `log_as` to list one metric twice, e.g. top-1 and top-5)."""

    name: str = ""
    kwargs: dict[str, Any] = field(default_factory=dict)
    log_as: str | None = None


@dataclass
class EvalConfig:
    """What an evaluation computes beside `eval/loss` (when and on how much: `train.eval_every`, `eval_batches`)."""

    metrics: list[MetricConfig] = field(default_factory=list)
    confusion_matrix: bool = False  # classifiers: the summed matrix to W&B at each evaluation, and summary.json


@dataclass
class Config:
    seed: int = 0
    output_dir: str = "runs/default"
    imports: list[str] = field(default_factory=list)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    hooks: list[HookConfig] = field(default_factory=list)


CHOICES: dict[str, tuple[str, ...]] = {
    "scheduler.interval": ("step", "epoch"),
    "scheduler.clock": ("updates", "samples"),
    "train.nonfinite": ("stop", "skip"),
    "train.mixed_precision": ("no", "fp16", "bf16"),
    "distributed.sync_check_action": ("error", "resync"),
    "distributed.shard": ("none", "fsdp2"),
    "tracking.log_model": ("false", "final", "checkpoints"),
}


def _schema_keys(node: Any, prefix: str = "") -> list[str]:
    keys: list[str] = []
    if isinstance(node, DictConfig):
        for k in node:
            full = f"{prefix}.{k!s}" if prefix else str(k)
            keys.append(full)
            keys.extend(_schema_keys(node._get_node(k), full))
    return keys


def _as_config_error(exc: OmegaConfBaseException, schema: DictConfig) -> ConfigError:
    key = getattr(exc, "full_key", "") or ""
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if "Key '" in message and "not in" in message:
        leaf = key.rsplit(".", 1)[-1]
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        siblings = [k.rsplit(".", 1)[-1] for k in _schema_keys(schema) if k.rsplit(".", 1)[0] == parent] if parent \
            else [k for k in _schema_keys(schema) if "." not in k]
        hint = suggest(leaf, siblings)
        if not hint:  # right name, wrong section? (`checkpoint_every` for `train.checkpoint_every`)
            hint = suggest(leaf, [k for k in _schema_keys(schema) if k.rsplit(".", 1)[-1] == leaf])
        return ConfigError(key, f"unknown key{hint}")
    return ConfigError(key, message)


def _parse_value(key: str, value: str) -> Any:
    """An override's value as YAML (`0.1`, `[a, b]`, `{x: 1}`); text YAML cannot parse is a ConfigError."""
    try:
        return OmegaConf.from_dotlist([f"value={value}"]).value
    except yaml.YAMLError as exc:
        detail = " ".join(str(exc).split())
        shown = value if len(value) <= 60 else value[:57] + "..."
        raise ConfigError(key, f"cannot parse the value {shown!r} as YAML ({detail[:200]})") from None


def default_config() -> Path:
    """configs/default.yaml of the source checkout, else of the working directory; a ConfigError if neither."""
    for candidate in (DEFAULT_CONFIG, Path.cwd() / "configs" / "default.yaml"):
        if candidate.is_file():
            return candidate
    raise ConfigError("--config", f"no default config: neither {DEFAULT_CONFIG} nor configs/default.yaml in the "
                      f"working directory ({Path.cwd()}) exists; pass --config PATH")


def load_config(path: str | os.PathLike[str] | None = None, overrides: Sequence[str] = ()) -> Config:
    """Merge schema <- YAML file <- `key=value` overrides, then validate; raises ConfigError."""
    schema = OmegaConf.structured(Config)
    path = Path(path) if path is not None else default_config()
    if not path.is_file():
        raise ConfigError("--config", f"no such config file: {path}")
    try:
        file_cfg = OmegaConf.load(path)
    except Exception as exc:  # yaml errors come in several classes; all mean the same to the user
        detail = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        raise ConfigError("--config", f"cannot parse {path}: {detail}") from None
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError("", f"override '{item}' is not of the form key=value")
    key = "--config"
    try:
        for item in overrides:
            # `a.kwargs={x: 1}` replaces the whole mapping (switching model.name must not keep the old
            # model's kwargs); `a.kwargs.x=1` changes one entry.
            key, value = item.split("=", 1)
            parsed = _parse_value(key, value)
            OmegaConf.update(file_cfg, key, parsed, merge=False, force_add=True)
            OmegaConf.merge(schema, file_cfg)  # each override checked on its own, so an error can name it
        merged = OmegaConf.merge(schema, file_cfg)
        key = "train.max_samples"
        _max_steps_from_samples(merged)
        cfg: Config = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except ConfigError:
        raise
    except OmegaConfBaseException as exc:
        raise _as_config_error(exc, schema) from None
    except (TypeError, ValueError) as exc:  # OmegaConf's plain errors (a list where a mapping belongs, ...)
        raise ConfigError(key, f"does not fit the config's structure: {describe(exc)}") from None
    validate(cfg)
    return cfg


def _max_steps_from_samples(merged: Any) -> None:
    """`train.max_samples`, when given, sets `train.max_steps` (in reference batches with the samples clock,
    else in updates of train.batch_size) before `${train.max_steps}` interpolations are resolved."""
    t, s = merged.train, merged.scheduler
    if t.max_samples is None:
        return
    per_step = (s.reference_batch or t.batch_size) if s.clock == "samples" else t.batch_size
    _check(t.max_samples >= 1, "train.max_samples", f"must be >= 1, got {t.max_samples}")
    _check(per_step >= 1, "train.batch_size", f"must be >= 1, got {per_step}")
    t.max_steps = -(-t.max_samples // per_step)


def _check(condition: bool, key: str, problem: str) -> None:
    if not condition:
        raise ConfigError(key, problem)


def _non_finite(value: Any, key: str) -> str | None:
    """The dotted key of the first NaN or infinity in `value` (a dataclass, mapping, list or number), or None."""
    if isinstance(value, float):
        return None if math.isfinite(value) else key
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        items: Any = ((f.name, getattr(value, f.name)) for f in dataclasses.fields(value))
    elif isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list | tuple):
        items = enumerate(value)
    else:
        return None
    for name, item in items:
        found = _non_finite(item, f"{key}.{name}" if key else str(name))
        if found:
            return found
    return None


def validate(cfg: Config) -> None:
    """Range and choice checks that the schema's types cannot express."""
    bad = _non_finite(cfg, "")  # an lr, a decay, a clip norm, a component's argument: nothing trains on NaN or inf
    if bad:
        value = OmegaConf.select(OmegaConf.structured(cfg), bad)
        raise ConfigError(bad, f"must be a finite number, got {value}")
    t = cfg.train
    if t.mixed_precision == "False":  # YAML 1.1 reads a bare `no` as false
        t.mixed_precision = "no"
    if cfg.tracking.log_model == "False":  # YAML's `false`, stored in a str field
        cfg.tracking.log_model = "false"
    _check(0 <= cfg.seed < 2**32, "seed", f"must be in [0, 2**32), got {cfg.seed}")
    _check(t.max_steps >= 1, "train.max_steps", f"must be >= 1, got {t.max_steps}")
    _check(t.batch_size >= 1, "train.batch_size", f"must be >= 1, got {t.batch_size}")
    _check(t.grad_accum_steps >= 1, "train.grad_accum_steps", f"must be >= 1, got {t.grad_accum_steps}")
    _check(t.batch_size % t.grad_accum_steps == 0, "train.batch_size",
           f"{t.batch_size} is not divisible by train.grad_accum_steps={t.grad_accum_steps}")
    micro = t.micro_batch_size
    _check(micro is None or micro == "auto" or (isinstance(micro, int) and micro >= 1), "train.micro_batch_size",
           f"must be a positive integer or auto (null: from train.grad_accum_steps), got {micro!r}")
    for key in ("log_every", "eval_every", "checkpoint_every", "eval_batches"):
        value = getattr(t, key)
        _check(value >= 0, f"train.{key}", f"must be >= 0, got {value}")
    _check(t.log_every >= 1, "train.log_every", f"must be >= 1, got {t.log_every}")
    _check(t.keep_checkpoints >= 1, "train.keep_checkpoints", f"must be >= 1, got {t.keep_checkpoints}")
    if t.profile is not None:
        first, last = t.profile.start, t.profile.start + t.profile.steps - 1
        _check(first >= 1 and t.profile.steps >= 1, "train.profile",
               f"start and steps must be >= 1, got start={first}, steps={t.profile.steps}")
        _check(last <= t.max_steps, "train.profile",
               f"updates {first}..{last} reach past train.max_steps={t.max_steps}")
    _check(t.peak_flops >= 0, "train.peak_flops", f"must be >= 0 (0: look the device up), got {t.peak_flops}")
    _check(t.clip_grad_norm >= 0, "train.clip_grad_norm", f"must be >= 0 (0 disables), got {t.clip_grad_norm}")
    _check(cfg.optimizer.lr > 0, "optimizer.lr", f"must be > 0, got {cfg.optimizer.lr}")
    _check(cfg.optimizer.weight_decay >= 0, "optimizer.weight_decay", f"must be >= 0, got {cfg.optimizer.weight_decay}")
    for i, group in enumerate(cfg.optimizer.groups):
        _check(bool(group.params), f"optimizer.groups.{i}.params", "must list at least one name pattern")
        _check(group.lr is None or group.lr > 0, f"optimizer.groups.{i}.lr", f"must be > 0, got {group.lr}")
        _check(group.weight_decay is None or group.weight_decay >= 0, f"optimizer.groups.{i}.weight_decay",
               f"must be >= 0, got {group.weight_decay}")
    sc = cfg.scheduler
    _check(sc.reference_batch is None or sc.reference_batch >= 1, "scheduler.reference_batch",
           f"must be >= 1 (or null: train.batch_size), got {sc.reference_batch}")
    _check(not (sc.clock == "samples" and sc.interval == "epoch"), "scheduler.clock",
           "'samples' counts steps in samples; with interval 'epoch' the lr already follows the data (use clock "
           "updates)")
    d = cfg.distributed
    _check(d.sync_check_every >= 0, "distributed.sync_check_every", "must be >= 0 (0 disables)")
    _check(1 <= d.timeout_s <= 86_400, "distributed.timeout_s", f"must be in [1, 86400] seconds, got {d.timeout_s}")
    _check(cfg.data.num_workers >= 0, "data.num_workers", "must be >= 0")
    _check(bool(cfg.output_dir), "output_dir", "must not be empty")
    for key, options in CHOICES.items():
        section, leaf = key.split(".")
        value = getattr(getattr(cfg, section), leaf)
        if value is None and key == "train.mixed_precision":
            continue
        hint = suggest(str(value), options)
        _check(value in options, key, f"must be one of {', '.join(options)}, got '{value}'{hint}")
    log_model = cfg.tracking.log_model
    _check(log_model == "false" or cfg.tracking.wandb,
           "tracking.log_model", f"'{log_model}' logs W&B artifacts, but tracking.wandb is false (set "
           "tracking.wandb=true, or tracking.log_model=false)")
    _check(log_model != "checkpoints" or t.checkpoint_every > 0, "tracking.log_model",
           "'checkpoints' logs each checkpoint, but train.checkpoint_every is 0: the run writes none (set "
           "train.checkpoint_every, or log the final weights only: tracking.log_model=final)")
    if t.resume not in ("auto", "none"):
        _check(Path(t.resume).exists(), "train.resume", f"checkpoint path does not exist: {t.resume}")


def to_dict(cfg: Config) -> dict[str, Any]:
    """Plain-container form for logging and saving (the config never holds secrets: see tracking)."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
