"""What a run reports besides the loss: peak memory per log window, and the curves a person reads at a glance."""

from __future__ import annotations

import json

import matplotlib.pyplot as plt
import torch

from template.reporting.memory import PeakMemory
from template.reporting.plotting import plot_training_curves

from conftest import ROOT, read_metrics, read_summary
from harness import comparable_rows, train_here


def test_the_peak_of_a_window_is_reset_after_each_row():
    memory = PeakMemory(torch.device("cpu"))
    memory.window()
    big = torch.ones(64 << 20)  # 256 MiB touched
    del big
    during = memory.window()["memory/max_rss_gb"]
    after = memory.window()["memory/max_rss_gb"]
    assert during > after + 0.2  # the window that held 256 MiB shows it; the next one does not


def test_loss_png_draws_the_eval_loss_over_the_training_loss(tmp_path, monkeypatch):
    rows = [{"step": s, "lr": 0.1, "loss": 1.0 / s} for s in range(1, 11)]
    rows += [{"step": 5, "eval/loss": 0.3}, {"step": 10, "eval/loss": 0.2, "eval/loss_ema": 0.15}]
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)  # keep the figures to look at them
    paths = plot_training_curves(rows, tmp_path)
    assert paths["loss"].is_file() and paths["lr"].is_file()
    loss_axes = figures[list(paths).index("loss")].axes[0]
    assert [t.get_text() for t in loss_axes.get_legend().get_texts()] == ["train", "eval", "eval_ema"]
    lines = {line.get_label(): line.get_xydata().tolist() for line in loss_axes.get_lines()}
    assert lines["eval"] == [[5, 0.3], [10, 0.2]]
    monkeypatch.undo()
    for fig in figures:
        plt.close(fig)


def test_every_row_carries_peak_memory_and_the_summary_the_final_and_best_values(tmp_path):
    out = tmp_path / "run"
    stdout, _ = train_here(("--config", str(ROOT / "configs" / "default.yaml"), "train.max_steps=40",
                            "train.eval_every=10", "scheduler.kwargs.warmup_steps=5", "train.progress=false",
                            "tracking.wandb=false"), out)
    rows = [r for r in read_metrics(out) if "loss" in r]
    evals = {r["step"]: r["eval/loss"] for r in read_metrics(out) if "eval/loss" in r}
    summary = read_summary(out)
    assert all(r["memory/max_rss_gb"] > 0.05 for r in rows)
    assert summary["memory/max_rss_gb"] == max(r["memory/max_rss_gb"] for r in rows)
    best = min(evals, key=lambda s: evals[s])
    assert (summary["best/eval/loss"], summary["best/eval/loss_step"]) == (evals[best], best)
    assert summary["loss"] == rows[-1]["loss"] and summary["eval/loss"] == evals[40]
    assert f"done: update 40, loss {rows[-1]['loss']:.4g}, eval/loss {evals[40]:.4g}" in stdout
    assert json.loads((out / "summary.json").read_text())["step"] == 40


PROFILED = ("--config", str(ROOT / "configs" / "default.yaml"), "train.max_steps=8", "train.eval_every=4",
            "scheduler.kwargs.warmup_steps=2", "train.progress=false", "tracking.wandb=false", "train.plots=false",
            "train.log_every=1")


def test_a_profiled_window_writes_a_trace_prints_the_top_ops_and_changes_nothing(tmp_path):
    plain, profiled = tmp_path / "plain", tmp_path / "profiled"
    train_here(PROFILED, plain)
    stdout, _ = train_here((*PROFILED, "train.profile={start: 3, steps: 3}"), profiled)
    assert stdout.count("profile of updates 3..5 (rank 0") == 1 and "Self CPU" in stdout
    traces = list((profiled / "profile").glob("rank0.*.pt.trace.json"))
    assert len(traces) == 1 and json.loads(traces[0].read_text())["traceEvents"]
    assert read_summary(profiled)["param_digest"] == read_summary(plain)["param_digest"]  # observation only
    assert comparable_rows(profiled) == comparable_rows(plain)


def test_a_profile_window_past_the_run_is_one_error_line(tmp_path):
    _, stderr = train_here((*PROFILED, "train.profile={start: 6, steps: 5}"), tmp_path / "o", expect=2)
    assert stderr.strip() == "error: train.profile: updates 6..10 reach past train.max_steps=8"
    assert not (tmp_path / "o").exists()
