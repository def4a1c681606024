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
    """lr.png and loss.png from the logged training rows (last row per step wins)."""
    by_step = {int(r["step"]): r for r in rows if "loss" in r}
    steps = sorted(by_step)
    out = Path(output_dir)
    paths = {"lr": out / "lr.png", "loss": out / "loss.png"}
    for key, path in paths.items():
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.plot(steps, [by_step[s][key] for s in steps])
        ax.set_xlabel("update")
        ax.set_ylabel(key)
        if key == "loss" and all(by_step[s][key] > 0 for s in steps):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
    return paths
