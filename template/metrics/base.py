"""The contract of an evaluation metric, the `METRICS` registry, and the run's set of metrics.

A metric is a torchmetrics `Metric` (registered by name: the class itself, or a factory returning one):
`update(outputs, targets)` with every eval batch's model outputs and targets, `compute()` once per
evaluation, then `reset()`. torchmetrics keeps a metric's state as sums (or concatenations) and gathers it
over the ranks inside `compute`, so N processes log the value 1 process computes over the same samples: the
eval loader hands each sample to exactly one rank, never padding a rank's share with repeats (the incomplete
tail of the split is dropped instead: `make_eval_loader`), so no sample counts twice. Its class attribute
`higher_is_better` says which way the best value lies (the run summary's `best/...`, the monitor checks).

Every metric is built and tried on one eval batch of the model's outputs before training (`build_eval_metrics`),
so a metric that does not fit the model (perplexity on a classifier's (N, C) scores) is a ConfigError naming
`eval.metrics.<i>` before any process starts. A factory that takes `num_classes` gets the size of the
outputs' last dimension unless the config gives one.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from template.config import Config, EvalConfig
from template.data import make_eval_loader
from template.errors import ConfigError, describe, suggest
from template.registry import Registry
from template.runtime.rng import preserved_rng

if TYPE_CHECKING:
    from torchmetrics import Metric

    from template.hooks import Hooks

METRICS: Registry[Callable[..., Any]] = Registry("metric", "eval.metrics.name")
# The shipped metrics import torchmetrics (seconds at startup): loaded when a config lists a metric.
SHIPPED = (f"{__package__}.classification", f"{__package__}.language")


class EvalMetrics:
    """The run's metrics by logged key (`eval/<name>`), and the confusion matrix when asked for: updated with
    every eval batch, computed (reduced over the ranks: a collective) and reset once per evaluation."""

    def __init__(self, metrics: dict[str, Metric], confusion: Metric | None = None) -> None:
        self.metrics, self.confusion_metric = metrics, confusion
        self.confusion: list[list[int]] | None = None  # the last evaluation's matrix (row: target, column: predicted)
        self._all = [*metrics.values(), *([confusion] if confusion is not None else [])]
        self._where = [*(f"eval.metrics.{i}" for i in range(len(metrics))), "eval.confusion_matrix"]

    @property
    def higher_is_better(self) -> dict[str, bool]:
        return {key: bool(m.higher_is_better) for key, m in self.metrics.items() if m.higher_is_better is not None}

    def to(self, device: torch.device) -> EvalMetrics:
        for metric in self._all:
            metric.to(device)
        return self

    def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        if isinstance(outputs, torch.Tensor) and outputs.dtype in (torch.float16, torch.bfloat16):
            outputs = outputs.float()  # autocast's half-precision logits: softmax and log in float32, as the loss
        for where, metric in zip(self._where, self._all, strict=False):
            try:
                metric.update(outputs, targets)
            except Exception as exc:  # what the trial batch could not show (a target out of range later on)
                raise ConfigError(where, f"failed on an eval batch: outputs {_shape(outputs)}, targets "
                                         f"{_shape(targets)}: {describe(exc)}") from None

    def compute(self) -> dict[str, float]:
        """Every metric's value over the evaluation, the same on every rank; then a clean slate for the next."""
        values = {key: float(metric.compute()) for key, metric in self.metrics.items()}
        if self.confusion_metric is not None:
            self.confusion = self.confusion_metric.compute().long().tolist()
        for metric in self._all:
            metric.reset()
        return values


def load_shipped() -> None:
    """Register the shipped metrics (importing torchmetrics: only when a config lists a metric)."""
    for module in SHIPPED:
        importlib.import_module(module)


def trial_batch(model: nn.Module, eval_set: Any) -> tuple[Any, torch.Tensor]:
    """The model's outputs for the first two eval samples (CPU, eval mode, no grad, every RNG left as it was)."""
    loader, _ = make_eval_loader(eval_set, 2, 1, 1, 0, pin_memory=False)
    x, y = next(iter(loader))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), preserved_rng():
            return model(x), y
    finally:
        model.train(was_training)


def _parameters(factory: Any) -> set[str]:
    try:
        return set(inspect.signature(factory).parameters)
    except (TypeError, ValueError):
        return set()


def _shape(value: Any) -> str:
    return f"{tuple(value.shape)} {str(value.dtype).removeprefix('torch.')}" if isinstance(value, torch.Tensor) \
        else type(value).__name__


def class_count(where: str, name: str, outputs: Any) -> int:
    """The number of classes a classifier's outputs score: their last dimension, (N, C) or (N, ..., C)."""
    if not isinstance(outputs, torch.Tensor) or outputs.ndim < 2 or outputs.shape[-1] < 2:
        raise ConfigError(where, f"{name} needs class scores (N, C) or (N, ..., C) with C >= 2 classes, but the "
                                 f"model outputs {_shape(outputs)}")
    return int(outputs.shape[-1])


def make_metric(where: str, name: str, kwargs: dict[str, Any], outputs: Any) -> Metric:
    """Metric `name` built with `kwargs` (and `num_classes` from the outputs where it takes one, unless given)."""
    from torchmetrics import Metric

    try:
        takes_classes = "num_classes" in _parameters(METRICS.get(name))
        if takes_classes and "num_classes" not in kwargs:
            kwargs = {**kwargs, "num_classes": class_count(where, f"'{name}'", outputs)}
        metric = METRICS.build(name, **kwargs)
    except ConfigError as exc:  # the registry's keys name no entry: eval.metrics.0.kwargs, not eval.metrics.kwargs
        key = exc.key if exc.key.startswith(where) else exc.key.replace("eval.metrics", where, 1)
        raise ConfigError(key, exc.problem) from None
    if not isinstance(metric, Metric):
        raise ConfigError(f"{where}.name", f"'{name}' gave a {type(metric).__name__}, not a torchmetrics Metric")
    return metric


def tried(where: str, name: str, metric: Metric, outputs: Any, targets: torch.Tensor, scalar: bool = True) -> Metric:
    """`metric` after one update and compute on the trial batch (then reset): a ConfigError if it cannot."""
    try:
        metric.update(outputs, targets)
        value = metric.compute()
    except Exception as exc:  # torchmetrics' shape and argument checks: ValueError, RuntimeError, ...
        raise ConfigError(where, f"{name} does not fit this model: outputs {_shape(outputs)}, targets "
                                 f"{_shape(targets)}: {describe(exc)}") from None
    finally:
        metric.reset()
    if scalar and (not isinstance(value, torch.Tensor) or value.numel() != 1):
        raise ConfigError(f"{where}.kwargs", f"{name} computes {_shape(value)}; a logged metric is one number "
                                             "(average 'none' gives one per class)")
    return metric


def build_eval_metrics(cfg: EvalConfig, model: nn.Module, eval_set: Any) -> EvalMetrics | None:
    """The metrics `cfg` lists, each tried on the model's outputs for one eval batch (`eval_set`: None when the
    run does not evaluate); None when none is listed. Every bad entry is a ConfigError naming it."""
    if not cfg.metrics and not cfg.confusion_matrix:
        return None
    if eval_set is None:
        raise ConfigError("eval.metrics" if cfg.metrics else "eval.confusion_matrix",
                          "is never computed: this run does not evaluate (set train.eval_every, with a dataset "
                          "that has an eval split)")
    load_shipped()
    outputs, targets = trial_batch(model, eval_set)
    built: dict[str, Metric] = {}
    for i, spec in enumerate(cfg.metrics):
        where, key = f"eval.metrics.{i}", f"eval/{spec.log_as or spec.name}"
        if key in built or key == "eval/loss":
            raise ConfigError(f"{where}.log_as" if spec.log_as else where,
                              f"{key} is logged already; give this entry a log_as of its own")
        built[key] = tried(where, f"'{spec.name}'", make_metric(where, spec.name, spec.kwargs, outputs), outputs,
                           targets)
    confusion = None
    if cfg.confusion_matrix:
        from template.metrics.classification import ConfusionMatrix

        where = "eval.confusion_matrix"
        confusion = tried(where, "the confusion matrix", ConfusionMatrix(class_count(where, "a confusion matrix",
                                                                                     outputs)),
                          outputs, targets, scalar=False)
    return EvalMetrics(built, confusion)


def better_when_higher(key: str, known: dict[str, bool]) -> bool | None:
    """Which way `key` improves: a metric's `higher_is_better`, a loss lower, a hook's variant (`eval/accuracy_ema`)
    as the metric it is made from; None when unknown."""
    if key in known:
        return known[key]
    if "loss" in key or key.startswith("eval/bpb"):  # bits per byte is the loss in other units
        return False
    base = max((k for k in known if key.startswith(k + "_")), key=len, default=None)
    return known[base] if base is not None else None


def check_monitors(cfg: Config, needs_metric: bool, hooks: Hooks, metrics: EvalMetrics | None,
                   evaluates: bool) -> list[str]:
    """Each monitor of an `eval/...` value (a metric-driven lr strategy's `scheduler.monitor`, a hook's `monitor`)
    against the keys an evaluation produces: a ConfigError for one never produced, a warning (returned) for a
    mode that counts a better value as worse."""
    known = metrics.higher_is_better if metrics is not None else {}
    produced = ["eval/loss", *(metrics.metrics if metrics is not None else ())]
    produced += hooks.eval_keys(produced)
    s = cfg.scheduler
    monitors: list[tuple[str, str, Any]] = []
    if needs_metric:
        monitors.append(("scheduler.monitor", s.monitor,
                         s.kwargs.get("mode", "min" if s.name in ("ReduceLROnPlateau", "plateau_halving") else None)))
    monitors += [(f"hooks.{i}.kwargs.monitor", monitor, mode) for i, monitor, mode in hooks.monitors()]
    notes = []
    for key, monitor, mode in monitors:
        if not monitor.startswith("eval/"):
            continue
        if not evaluates:
            raise ConfigError(key, f"'{monitor}' is never produced: this run does not evaluate (set "
                                   "train.eval_every, or monitor train/loss)")
        if monitor not in produced:
            raise ConfigError(key, f"'{monitor}' is never produced{suggest(monitor, produced)}: an evaluation logs "
                                   f"{', '.join(produced)} (eval.metrics lists the metrics)")
        higher = better_when_higher(monitor, known)
        if higher is not None and mode in ("min", "max") and higher != (mode == "max"):
            notes.append(f"{key}: {monitor} is better when {'higher' if higher else 'lower'}, but the mode is "
                         f"'{mode}' (set its kwargs mode: {'max' if higher else 'min'})")
    return notes
