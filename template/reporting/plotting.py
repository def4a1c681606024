"""PNG curves: the lr a config will produce (before training) and lr/loss after it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def plot_lr_curves(curves: Mapping[str, tuple[Sequence[int], Sequence[float]]], path: str | Path,
                   title: str = "learning rate per update") -> Path:
    """Overlay several (steps, lrs) curves in one figure with a legend."""
    fig, ax = plt.subplots(figsize=(7, 4))
    styles = ["-", "--", ":", "-."]
    for i, (label, (steps, lrs)) in enumerate(curves.items()):
        # identical curves (the four seed strategies) must stay visible on top of each other
        ax.plot(steps, lrs, label=label, drawstyle="steps-post", linestyle=styles[i % 4], linewidth=2.5 - 0.4 * (i % 4))
    ax.set_xlabel("update")
    ax.set_ylabel("lr")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_training_curves(rows: Sequence[Mapping[str, float]], output_dir: str | Path) -> dict[str, Path]:
    """lr.png and loss.png from the logged rows (last row per step wins); loss.png draws every eval value
    (eval/loss, eval/loss_ema, ...) over the training loss, with a legend."""
    by_step = {int(r["step"]): r for r in rows if "loss" in r}
    evals: dict[str, dict[int, float]] = {}
    for row in rows:
        for key, value in row.items():
            if key.startswith("eval/") and "loss" in key:
                evals.setdefault(key, {})[int(row["step"])] = value
    steps = sorted(by_step)
    out = Path(output_dir)
    paths = {"lr": out / "lr.png", "loss": out / "loss.png"}
    for key, path in paths.items():
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.plot(steps, [by_step[s][key] for s in steps], label="train" if key == "loss" else key)
        values = [by_step[s][key] for s in steps]
        if key == "loss":
            for name, points in sorted(evals.items()):
                at = sorted(points)
                label = name.removeprefix("eval/").replace("loss", "eval", 1)  # eval/loss_ema -> eval_ema
                ax.plot(at, [points[s] for s in at], marker="o", label=label)
                values += list(points.values())
            if evals:
                ax.legend()
        ax.set_xlabel("update")
        ax.set_ylabel(key)
        if key == "loss" and all(v > 0 for v in values):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
    return paths


def plot_lr_find(lrs: Sequence[float], losses: Sequence[float], smoothed: Sequence[float],
                 steepest: float | None, min_over_10: float | None, path: str | Path) -> Path:
    """The lr range test: raw and smoothed loss against lr on a log axis, the two suggestions marked."""
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(lrs, losses, color="0.7", linewidth=1, label="loss")
    ax.plot(lrs, smoothed, color="C0", linewidth=2, label="smoothed loss")
    for lr, label, color in ((steepest, "steepest", "C3"), (min_over_10, "minimum / 10", "C2")):
        if lr is not None:
            ax.axvline(lr, color=color, linestyle="--", label=f"{label}: {lr:.3g}")
    ax.set_xscale("log")
    if smoothed:  # the raw loss of the last updates can be orders of magnitude above: keep the curve readable
        low = min(min(losses), min(smoothed))
        high = max(smoothed)
        ax.set_ylim(low - 0.05 * (high - low), high + 0.1 * (high - low) + 1e-12)
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("training loss")
    ax.set_title("lr range test")
    ax.legend()
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
