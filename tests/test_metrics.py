"""Evaluation metrics (`eval.metrics`): values against direct computations on known tensors, the digits
classifier logging eval/accuracy that a plateau schedule, early stopping and the run summary use, the same
values on 2 processes as on 1, the confusion matrix in W&B, and bad input as one `error:` line."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import TensorDataset

from template.config import EvalConfig, MetricConfig
from template.errors import ConfigError
from template.metrics import METRICS, build_eval_metrics
from template.metrics.base import better_when_higher
from template.models import MLP

from conftest import ROOT, clean_env, read_metrics, read_summary, run_here, run_train

DIGITS = str(ROOT / "configs" / "digits.yaml")
QUIET = ("train.progress=false", "train.plots=false")


@pytest.fixture(scope="module", autouse=True)
def shipped_metrics() -> None:
    """The shipped metrics registered before the first test (torchmetrics is imported here, not at collection;
    an in-process run puts the registries back as it found them, and a module is imported once)."""
    from template.metrics import load_shipped

    load_shipped()


@pytest.fixture(scope="module")
def digits():
    """`data.name: digits` registered before the runs (an in-process run puts the registries back as it found
    them, and a module is imported once), as tests/test_digits.py does."""
    pytest.importorskip("sklearn")
    from template.data.sklearn_digits import digits

    return digits


def built(model: torch.nn.Module, data: TensorDataset, *metrics: dict[str, Any], confusion: bool = False):
    cfg = EvalConfig([MetricConfig(**m) for m in metrics], confusion)
    found = build_eval_metrics(cfg, model, data)
    assert found is not None
    return found


class Fixed(torch.nn.Module):
    """A "model" whose outputs are given scores, whatever the input (the input is the sample's index)."""

    def __init__(self, scores: torch.Tensor) -> None:
        super().__init__()
        self.scores = scores

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        return self.scores[index]


SCORES = torch.tensor([[2.0, 1.0, 0.0, -1.0], [0.1, 0.3, 0.2, 0.0], [0.0, 0.0, 5.0, 1.0], [1.0, 3.0, 2.0, 0.0],
                       [0.0, 1.0, 0.5, 2.0], [3.0, 0.0, 2.5, 1.0], [0.0, 0.2, 0.1, 0.3], [1.0, 0.0, 0.0, 0.5]])
TARGETS = torch.tensor([0, 2, 2, 1, 3, 2, 0, 3])


def evaluated(metrics, scores: torch.Tensor, targets: torch.Tensor, batch: int = 3) -> dict[str, float]:
    for start in range(0, len(targets), batch):  # several eval batches: the states sum over them
        metrics.update(scores[start:start + batch], targets[start:start + batch])
    return metrics.compute()


def test_accuracy_top_k_and_f1_equal_a_direct_computation():
    data = TensorDataset(torch.arange(len(TARGETS)), TARGETS)
    metrics = built(Fixed(SCORES), data, {"name": "accuracy"}, {"name": "top_k_accuracy", "kwargs": {"top_k": 2}},
                    {"name": "f1"}, {"name": "f1", "kwargs": {"average": "micro"}, "log_as": "f1_micro"})
    values = evaluated(metrics, SCORES, TARGETS)
    predicted = SCORES.argmax(dim=1)
    # predicted 0,1,2,1,3,0,3,0 against 0,2,2,1,3,2,0,3: right at samples 0, 2, 3, 4
    assert values["eval/accuracy"] == pytest.approx(4 / 8)
    top2 = SCORES.topk(2, dim=1).indices
    assert values["eval/top_k_accuracy"] == pytest.approx((top2 == TARGETS[:, None]).any(dim=1).double().mean().item())
    f1s, truth = [], TARGETS
    for c in range(4):
        tp = ((predicted == c) & (truth == c)).sum().item()
        fp = ((predicted == c) & (truth != c)).sum().item()
        fn = ((predicted != c) & (truth == c)).sum().item()
        f1s.append(2 * tp / (2 * tp + fp + fn))
    assert values["eval/f1"] == pytest.approx(sum(f1s) / 4)  # macro: the classes' mean
    assert values["eval/f1_micro"] == pytest.approx(4 / 8)  # micro F1 of single-label classes is the accuracy
    assert metrics.higher_is_better == {key: True for key in values}
    assert evaluated(metrics, SCORES, TARGETS, batch=8) == values  # reset after compute: the same again


def test_class_scores_last_and_perplexity_of_a_token_model():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 7)  # (batch, time, vocab), as the GPT gives them
    targets = torch.randint(0, 7, (3, 5))
    data = TensorDataset(torch.arange(3), targets)
    metrics = built(Fixed(logits), data, {"name": "perplexity"}, {"name": "accuracy"})
    values = evaluated(metrics, logits, targets, batch=2)
    cross_entropy = torch.nn.functional.cross_entropy(logits.reshape(-1, 7), targets.reshape(-1))
    assert values["eval/perplexity"] == pytest.approx(math.exp(cross_entropy.item()), rel=1e-5)
    token_accuracy = (logits.argmax(dim=-1) == targets).double().mean().item()
    assert values["eval/accuracy"] == pytest.approx(token_accuracy)  # over every token, classes last
    assert metrics.higher_is_better == {"eval/perplexity": False, "eval/accuracy": True}


def test_num_classes_comes_from_the_model_and_the_confusion_matrix_counts_pairs():
    data = TensorDataset(torch.arange(len(TARGETS)), TARGETS)
    metrics = built(Fixed(SCORES), data, {"name": "f1"}, confusion=True)
    assert metrics.metrics["eval/f1"].num_classes == 4  # the outputs' class dimension
    evaluated(metrics, SCORES, TARGETS)
    expected = [[0] * 4 for _ in range(4)]
    for target, predicted in zip(TARGETS.tolist(), SCORES.argmax(dim=1).tolist(), strict=True):
        expected[target][predicted] += 1
    assert metrics.confusion == expected
    with pytest.raises(ConfigError, match=r"needs class scores") as err:
        built(Fixed(SCORES[:, :1]), data, {"name": "f1"})  # one score per sample: no classes to infer
    assert err.value.key == "eval.metrics.0"
    explicit = built(Fixed(SCORES), data, {"name": "accuracy", "kwargs": {"num_classes": 4}})
    assert explicit.metrics["eval/accuracy"].num_classes == 4


def test_which_way_is_better():
    known = {"eval/accuracy": True, "eval/perplexity": False}
    assert better_when_higher("eval/accuracy", known) and better_when_higher("eval/accuracy_ema", known)
    assert better_when_higher("eval/loss", known) is False and better_when_higher("eval/loss_ema", known) is False
    assert better_when_higher("eval/perplexity_ema", known) is False and better_when_higher("eval/x", known) is None


def test_a_forks_metric_is_one_small_class(monkeypatch):
    from torchmetrics import Metric

    class WithinTolerance(Metric):  # docs/extending.md's example
        """The fraction of predictions within `tolerance` of the target (a regression metric)."""

        higher_is_better = True  # the run summary's best/... is the highest value

        def __init__(self, tolerance: float = 0.1, **kwargs) -> None:
            super().__init__(**kwargs)
            self.tolerance = tolerance
            self.add_state("hits", torch.tensor(0.0), dist_reduce_fx="sum")  # summed over the ranks
            self.add_state("count", torch.tensor(0.0), dist_reduce_fx="sum")

        def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
            self.hits += ((preds - target).abs() <= self.tolerance).sum()
            self.count += target.numel()

        def compute(self) -> torch.Tensor:
            return self.hits / self.count

    monkeypatch.setitem(METRICS._items, "within_tolerance", WithinTolerance)
    predictions = torch.tensor([[1.0], [2.05], [3.5], [4.0]])
    data = TensorDataset(torch.arange(4), torch.tensor([[1.0], [2.0], [3.0], [4.2]]))
    metrics = built(Fixed(predictions), data, {"name": "within_tolerance", "kwargs": {"tolerance": 0.1}})
    assert evaluated(metrics, predictions, data.tensors[1]) == {"eval/within_tolerance": pytest.approx(0.5)}
    assert metrics.higher_is_better == {"eval/within_tolerance": True}


# --- the digits classifier, in process: eval/accuracy logged, monitored, tracked -------------------------

# The plateau schedule halves the lr after every evaluation whose accuracy is not strictly above the best so far;
# early stopping can never see an improvement of more than 1.0 in an accuracy, so it stops at the third
# evaluation (update 30), its best the first one's.
MONITORED = (
    "train.max_steps=60", "train.eval_every=10", "train.log_every=1", "train.checkpoint_every=0",
    "tracking.wandb=false", "eval.metrics=[{name: accuracy}, {name: top_k_accuracy, kwargs: {top_k: 3}, "
    "log_as: top3}, {name: f1}]", "scheduler.strategy=builtin", "scheduler.name=ReduceLROnPlateau",
    "scheduler.kwargs={mode: max, patience: 0, factor: 0.5, threshold: 0}", "scheduler.monitor=eval/accuracy",
    "hooks=[{name: early_stopping, kwargs: {monitor: eval/accuracy, mode: max, patience: 2, min_delta: 1.0}}]",
)


@pytest.fixture(scope="module")
def monitored(tmp_path_factory: pytest.TempPathFactory, digits) -> Path:
    out = tmp_path_factory.mktemp("metrics") / "digits"
    proc = run_here("--config", DIGITS, *QUIET, *MONITORED, f"output_dir={out}")
    assert "warning" not in proc.stdout  # the modes fit: no warning
    return out


def eval_rows(out: Path) -> dict[int, dict[str, Any]]:
    return {r["step"]: r for r in read_metrics(out) if "eval/loss" in r}


def held_out_scores(out: Path, digits) -> tuple[torch.Tensor, torch.Tensor]:
    """The final model's scores on the held-out digits, computed here in one batch."""
    model = MLP(in_features=64, hidden=128, depth=2, out_features=10)
    model.load_state_dict(load_file(out / "model.safetensors"))
    x, y = digits(seed=0)[1].tensors
    with torch.no_grad():
        return model.eval()(x), y


@pytest.mark.e2e
def test_digits_logs_eval_accuracy_equal_to_the_final_models(monitored: Path, digits):
    rows, summary = eval_rows(monitored), read_summary(monitored)
    assert sorted(rows) == [10, 20, 30] and summary["step"] == 30
    for row in rows.values():
        assert set(row) >= {"eval/loss", "eval/accuracy", "eval/top3", "eval/f1"}
    scores, y = held_out_scores(monitored, digits)
    assert summary["eval/accuracy"] == rows[30]["eval/accuracy"]
    assert summary["eval/accuracy"] == pytest.approx((scores.argmax(1) == y).double().mean().item(), abs=1e-6)
    top3 = (scores.topk(3, dim=1).indices == y[:, None]).any(dim=1).double().mean().item()
    assert summary["eval/top3"] == pytest.approx(top3, abs=1e-6)


@pytest.mark.e2e
def test_eval_accuracy_drives_the_plateau_schedule(monitored: Path):
    rows, evals = {r["step"]: r for r in read_metrics(monitored) if "lr" in r}, eval_rows(monitored)
    lr, best, expected = 1.0, -math.inf, {}
    for step in range(1, 31):
        expected[step] = lr
        if step in evals:  # the lr of the next update halves unless accuracy rose above its best
            accuracy = evals[step]["eval/accuracy"]
            lr, best = (lr, accuracy) if accuracy > best else (lr * 0.5, best)
    assert {s: rows[s]["lr"] for s in expected} == expected


@pytest.mark.e2e
def test_early_stopping_and_the_run_summary_use_eval_accuracy(monitored: Path):
    evals, summary = eval_rows(monitored), read_summary(monitored)
    assert "early_stopping: eval/accuracy did not improve" in summary["stopped_early"]
    assert summary["early_stopping"] == {"monitor": "eval/accuracy", "best": evals[10]["eval/accuracy"],
                                         "best_step": 10}
    for key, pick in (("eval/accuracy", max), ("eval/f1", max), ("eval/loss", min)):
        step = pick(evals, key=lambda s, k=key: (evals[s][k], -s))  # the first update reaching the best
        assert (summary[f"best/{key}"], summary[f"best/{key}_step"]) == (evals[step][key], step)


# --- 2 processes == 1 process, and the confusion matrix in the W&B run ------------------------------------

SHORT = ("train.max_steps=20", "train.eval_every=10", "train.checkpoint_every=0", "scheduler.kwargs.warmup_steps=5",
         "eval.metrics=[{name: accuracy}, {name: f1}]", "eval.confusion_matrix=true")


@pytest.mark.ddp
@pytest.mark.e2e
def test_two_processes_log_the_one_process_metrics_and_the_confusion_matrix_reaches_wandb(tmp_path: Path, digits):
    from wandb_offline import find_run_dirs, iter_records, read_runs

    one, two = tmp_path / "one", tmp_path / "two"
    run_here("--config", DIGITS, *QUIET, *SHORT, "tracking.wandb=false", f"output_dir={one}")
    run_train("--config", DIGITS, *QUIET, *SHORT, "tracking.wandb=true", f"output_dir={two}",
              launcher="accelerate", nproc=2)
    single, double = eval_rows(one), eval_rows(two)
    assert sorted(single) == sorted(double) == [10, 20]
    for step in single:  # each eval sample on exactly one rank: the same counts, so the same values
        assert double[step]["eval/accuracy"] == single[step]["eval/accuracy"]
        assert double[step]["eval/f1"] == pytest.approx(single[step]["eval/f1"], abs=1e-6)
        assert double[step]["eval/loss"] == pytest.approx(single[step]["eval/loss"], rel=1e-5)
    summary = read_summary(two)
    matrix = summary["confusion_matrix"]
    assert matrix == read_summary(one)["confusion_matrix"]
    assert sum(map(sum, matrix)) == 360  # the held-out split once: no sample counted twice, none left out
    assert sum(matrix[i][i] for i in range(10)) / 360 == pytest.approx(summary["eval/accuracy"], abs=1e-6)

    (run,) = read_runs(two)
    logged = {row["step"]: row for row in run.history if "eval/accuracy" in row}
    assert {s: r["eval/accuracy"] for s, r in logged.items()} == {s: r["eval/accuracy"] for s, r in double.items()}
    assert run.summary["best/eval/accuracy"] == max(r["eval/accuracy"] for r in double.values())
    tables = [row for row in run.history if "eval/confusion_matrix_table" in row]  # wandb's key for the chart's data
    assert [row["step"] for row in tables] == [10, 20]
    (run_dir,) = find_run_dirs(two)
    cells = json.loads((run_dir / "files" / tables[-1]["eval/confusion_matrix_table"]["path"]).read_text())
    assert cells["columns"] == ["Actual", "Predicted", "nPredictions"]
    assert {(a, p): n for a, p, n in cells["data"]} == {(str(a), str(p)): matrix[a][p] for a in range(10)
                                                        for p in range(10)}
    panels = [json.loads(item.value_json) for record in iter_records(next(run_dir.glob("run-*.wandb")))
              if record.WhichOneof("record_type") == "config" for item in record.config.update
              if list(item.nested_key) == ["_wandb", "visualize", "eval/confusion_matrix"]]
    assert panels and panels[-1]["panel_config"]["panelDefId"] == "wandb/confusion_matrix/v1"  # W&B's own chart


# --- bad input ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("overrides", "line"), [
    (["eval.metrics=[{name: acuracy}]"], "error: eval.metrics.0.name: unknown metric 'acuracy' (did you mean "
                                         "'accuracy'?)"),
    (["eval.metrics=[{name: accuracy}, {name: f1, kwargs: {averag: macro}}]"],
     "error: eval.metrics.1.kwargs: metric 'f1': Unexpected keyword arguments: `averag`"),
    (["eval.metrics=[{name: f1, kwargs: {average: none}}]"], "error: eval.metrics.0.kwargs: 'f1' computes (10,)"),
    (["eval.metrics=[{name: accuracy}, {name: accuracy}]"], "error: eval.metrics.1: eval/accuracy is logged already"),
    (["eval.metrics=[{name: accuracy}]", "train.eval_every=0"], "error: eval.metrics: is never computed"),
    (["eval.metrics=[{name: accuracy}]", "scheduler.strategy=builtin", "scheduler.name=ReduceLROnPlateau",
      "scheduler.kwargs={mode: max}", "scheduler.monitor=eval/acuracy"],
     "error: scheduler.monitor: 'eval/acuracy' is never produced (did you mean 'eval/accuracy'?)"),
    (["eval.metrics=[]", "hooks=[{name: early_stopping, kwargs: {monitor: eval/accuracy}}]"],
     "error: hooks.0.kwargs.monitor: 'eval/accuracy' is never produced"),
])
def test_bad_metric_config_is_one_error_line(tmp_path: Path, overrides: list[str], line: str, digits):
    out = tmp_path / "run"
    proc = run_here("--config", DIGITS, *QUIET, "tracking.wandb=false", "train.eval_every=10", *overrides,
                    f"output_dir={out}", check=False)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith(line), proc.stderr
    assert not out.exists()


def test_a_metric_that_does_not_fit_the_model_exits_2_from_a_real_process(tmp_path: Path):
    """Perplexity wants (B, T, V) logits; the digits classifier gives (N, 10): refused before any work."""
    pytest.importorskip("sklearn")
    out = tmp_path / "run"
    proc = run_train("--config", DIGITS, *QUIET, "tracking.wandb=false", "eval.metrics=[{name: perplexity}]",
                     f"output_dir={out}", check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == ("error: eval.metrics.0: 'perplexity' does not fit this model: outputs (2, 10) "
                                   "float32, targets (2,) int64: Input tensor `preds` is expected to have 3 "
                                   "dimensions, [batch_size, seq_len, vocab_size], but got 2.")
    assert not out.exists()


def test_a_mode_against_the_metric_is_a_warning(tmp_path: Path, digits):
    out = tmp_path / "run"
    proc = run_here("--config", DIGITS, *QUIET, "tracking.wandb=false", "train.max_steps=2", "train.eval_every=1",
                    "train.checkpoint_every=0", "scheduler.kwargs.warmup_steps=0", "eval.metrics=[{name: accuracy}]",
                    "hooks=[{name: early_stopping, kwargs: {monitor: eval/accuracy}}]", f"output_dir={out}")
    assert ("warning: hooks.0.kwargs.monitor: eval/accuracy is better when higher, but the mode is 'min' (set its "
            "kwargs mode: max)") in proc.stdout


def test_a_run_without_eval_metrics_does_not_import_torchmetrics():
    code = "import sys, template.trainer; print('torchmetrics' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=clean_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.stdout.strip() == "False", proc.stderr


def test_a_batch_the_trial_could_not_foresee_names_the_metric():
    data = TensorDataset(torch.arange(len(TARGETS)), TARGETS)
    metrics = built(Fixed(SCORES), data, {"name": "accuracy", "log_as": "a"}, {"name": "f1"})
    with pytest.raises(ConfigError, match=r"failed on an eval batch") as err:
        metrics.update(SCORES[:2], torch.tensor([0, 7]))  # class 7 of 4: f1 counts it in a 4x4 table
    assert err.value.key == "eval.metrics.1"
