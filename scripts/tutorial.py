#!/usr/bin/env python
"""The tutorial, step by step, with the template's own components: each number beside the one it printed.

`python scripts/tutorial.py [--out tutorial_theta.png]` prints one line per number with ✓ or ✗, plots
theta over 100 updates for the four lr strategies, and exits 1 if any number differs from the tutorial.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from template.config import SchedulerConfig
from template.losses import SimpleMSELoss
from template.models import LinearModel
from template.optim import RandomScaledSGD
from template.schedules import build_schedule

UPDATES = 100
# "start at 0.1, halve every 10 updates", in each of the four strategies the trainer can drive
STRATEGIES = {
    "builtin (StepLR)": SchedulerConfig(strategy="builtin", name="StepLR", kwargs={"step_size": 10, "gamma": 0.5}),
    "lambda (LambdaLR)": SchedulerConfig(strategy="lambda", expression="0.5 ** (step // 10)"),
    "subclass (HalvingLR)": SchedulerConfig(strategy="subclass", name="halving", kwargs={"every": 10, "gamma": 0.5}),
    "manual (param_group['lr'])": SchedulerConfig(strategy="manual", name="halving",
                                                  kwargs={"every": 10, "gamma": 0.5}),
}
# update (1-based) -> (lr the tutorial printed AFTER that update's scheduler step, theta after the update)
TUTORIAL_TRAJECTORY = {
    1: (0.1, 0.9900000095367432),
    2: (0.1, 0.9800000190734863),
    9: (0.1, 0.9100000858306885),
    10: (0.05, 0.9000000953674316),
    11: (0.05, 0.8950001001358032),
    19: (0.05, 0.8550001382827759),
    20: (0.025, 0.8500001430511475),
    21: (0.025, 0.8475001454353333),
}


class Report:
    """Prints `what: ours  (tutorial: theirs)  ✓/✗` lines and remembers whether all matched."""

    def __init__(self) -> None:
        self.failures = 0
        self.checks = 0

    def check(self, what: str, ours: float, theirs: float, tol: float = 0.0) -> None:
        ok = abs(ours - theirs) <= tol
        self.checks += 1
        self.failures += not ok
        print(f"  {'✓' if ok else '✗'} {what:<52} ours {ours!r:<22} tutorial {theirs!r}")

    def check_row(self, what: str, values: list[tuple[str, float, float | None, float, str]]) -> None:
        """One line for several numbers: `name ours (source theirs)`; a None `theirs` is shown, not checked."""
        ok = all(theirs is None or abs(ours - theirs) <= tol for _, ours, theirs, tol, _ in values)
        self.checks += 1
        self.failures += not ok
        cells = [f"{name} {ours!r}" + ("" if theirs is None else f" ({source}: {theirs!r})")
                 for name, ours, theirs, tol, source in values]
        print(f"  {'✓' if ok else '✗'} {what}: " + ", ".join(cells))

    def section(self, title: str) -> None:
        print(f"\n{title}")


def tutorial_backward(report: Report | None = None) -> LinearModel:
    """theta=100, b=50, x=3, target 348: forward, the custom loss, backward."""
    model = LinearModel(theta=100, b=50)
    y = model(torch.tensor([3.0]))
    loss = SimpleMSELoss()(y, torch.tensor([348.0]))
    loss.backward()
    if report is not None:
        report.check("y = theta*x + b", y.item(), 350.0)
        report.check("loss = (y - y_hat)**2  [SimpleMSELoss]", loss.item(), 4.0)
        report.check("theta.grad", model.theta.grad.item(), 12.0)
        report.check("b.grad", model.b.grad.item(), 4.0)
    return model


def run_strategy(cfg: SchedulerConfig) -> list[tuple[float, float, float]]:
    """The tutorial's loop: gradient fixed at 0.1, theta from 1, 100 updates, the lr step after optimizer.step().

    Returns, per update, (lr the update used, lr after the scheduler step, theta after the update).
    """
    theta = torch.nn.Parameter(torch.tensor([1.0]))
    optimizer = torch.optim.SGD([theta], lr=0.1)
    schedule = build_schedule(cfg, optimizer, updates_per_epoch=UPDATES)
    rows = []
    for update in range(1, UPDATES + 1):
        used = schedule.lrs()["0"]
        theta.grad = torch.tensor([0.1])
        optimizer.step()
        schedule.after_update(update)
        optimizer.zero_grad()
        rows.append((used, schedule.lrs()["0"], theta.item()))
    return rows


def plot(trajectories: dict[str, list[tuple[float, float, float]]], out: Path) -> Path:
    fig, (ax_theta, ax_lr) = plt.subplots(1, 2, figsize=(11, 4))
    styles = ["-", "--", ":", "-."]
    updates = range(1, UPDATES + 1)
    for (label, rows), style in zip(trajectories.items(), styles, strict=True):
        ax_theta.plot(updates, [r[2] for r in rows], style, label=label)
        ax_lr.plot(updates, [r[0] for r in rows], style, label=label, drawstyle="steps-mid")
    ax_theta.set(xlabel="update", ylabel="theta", title="theta per update, grad fixed at 0.1 (the 4 curves coincide)")
    ax_lr.set(xlabel="update", ylabel="lr used by the update", yscale="log", title="lr (what metrics.jsonl logs)")
    for ax in (ax_theta, ax_lr):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("tutorial_theta.png"), help="PNG of theta per update")
    args = parser.parse_args(argv)
    report = Report()

    report.section("1. y = theta*x + b (theta=100, b=50, x=3, y_hat=348), LinearModel with real nn.Parameters")
    print(f"    parameters: {[n for n, _ in LinearModel().named_parameters()]}  "
          "(the tutorial's Variables left model.parameters() empty)")
    tutorial_backward(report)

    report.section("2. torch.optim.SGD(lr=2).step()")
    model = tutorial_backward()
    torch.optim.SGD(model.parameters(), lr=2).step()
    report.check("theta", model.theta.item(), 76.0)
    report.check("b", model.b.item(), 42.0)

    report.section("3. custom optimizer RandomScaledSGD(lr=2, factor=0.4): lr x random factor, forced to 0.4")
    model = tutorial_backward()
    RandomScaledSGD(model.parameters(), lr=2, factor=0.4).step()
    # the tutorial printed tensor([90.4000]): float32, 4 decimals
    report.check("theta", model.theta.item(), 90.4, tol=5e-5)
    report.check("b", model.b.item(), 46.8, tol=5e-5)

    report.section(f"4. lr strategies: 0.1 halved every 10 updates, grad 0.1, theta from 1, {UPDATES} updates")
    print("    Note: the tutorial prints the lr AFTER update i's scheduler step, so its 'update 10' line says\n"
          "    0.05 although update 10 itself used 0.1. The template's metrics.jsonl logs, as 'lr' for step i,\n"
          "    the lr USED BY update i: updates 1-10 use 0.1, update 11 is the first to use 0.05. Same schedule,\n"
          "    read one step apart; each line below checks both: 'lr after step' against the tutorial's print\n"
          "    of update i, 'lr used' against its print of update i-1 (shown unchecked where it printed none).")
    trajectories = {label: run_strategy(cfg) for label, cfg in STRATEGIES.items()}
    for label, rows in trajectories.items():
        report.section(f"   {label}")
        for update, (lr_after, theta) in TUTORIAL_TRAJECTORY.items():
            used, after, value = rows[update - 1]
            # what update i used is what the tutorial printed after update i-1 (0.1 before any step)
            used_expected = 0.1 if update == 1 else TUTORIAL_TRAJECTORY.get(update - 1, (None,))[0]
            report.check_row(f"update {update:>2}", [
                ("lr after step", after, lr_after, 1e-12, "tutorial"),
                ("theta", value, theta, 0.0, "tutorial"),
                ("lr used", used, used_expected, 1e-12,
                 "optimizer's initial lr" if update == 1 else f"tutorial's lr at update {update - 1}"),
            ])
    first = next(iter(trajectories.values()))
    same = all(rows == first for rows in trajectories.values())
    report.section("   all four strategies")
    report.check(f"the same lr and theta at all {UPDATES} updates (1 = yes)", float(same), 1.0)

    path = plot(trajectories, args.out)
    print(f"\n5. theta over the updates, four strategies: {path}")
    print(f"\n{report.checks - report.failures}/{report.checks} lines match the tutorial")
    return 1 if report.failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
