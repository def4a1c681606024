"""Evaluation metrics beyond the loss (`eval.metrics` in the config), computed with torchmetrics.

`base.py` holds the contract, the `METRICS` registry and the run's set of metrics (`EvalMetrics`);
`classification.py` (accuracy, top-k accuracy, F1, the confusion matrix) and `language.py` (perplexity) the
shipped metrics. Those two import torchmetrics, so they load only when a config lists a metric: a run without
`eval.metrics` never imports it. A fork registers its own into `METRICS` in a module listed under `imports:`.
"""

from template.metrics.base import METRICS, EvalMetrics, build_eval_metrics, check_monitors, load_shipped

__all__ = ["METRICS", "EvalMetrics", "build_eval_metrics", "check_monitors", "load_shipped"]
