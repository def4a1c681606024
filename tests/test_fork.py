"""Fork the template as a user would: copy it, add a loss, an lr strategy and a hook in your own package, train.

README "Extending" promises that a new component is one small file that registers itself plus a config
naming it under `imports:`, and that the trainer never changes. This test does exactly that in a copy of
the repository and checks, from the run's own metrics, that the new loss and the new lr rule were used.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch

import template as package
from template.data import GlobalBatchSampler, synthetic_linear

from conftest import ROOT, clean_env, read_metrics, read_summary

pytestmark = pytest.mark.e2e

PARTS = '''\
"""My project's components: registered by name, selected by the config, no change to the trainer."""

import json
import os
from pathlib import Path

import torch

import template
from template.hooks import HOOKS, Hook
from template.losses import LOSSES
from template.schedules.manual import MANUAL_STRATEGIES, ManualLR


@LOSSES.register("scaled_log_cosh")
class ScaledLogCosh(torch.nn.Module):
    """scale * mean(log(cosh(y - target))): quadratic near 0, linear far away."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, y, target):
        return self.scale * torch.log(torch.cosh(y - target)).mean()


@MANUAL_STRATEGIES.register("linear_decay")
class LinearDecay(ManualLR):
    """lr = base * max(floor, 1 - update / total), written into every param group after each update."""

    def __init__(self, optimizer, total: int, floor: float = 0.0) -> None:
        super().__init__(optimizer)
        self.total = total
        self.floor = floor

    def step(self, update, epoch, metric):
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * max(self.floor, 1 - update / self.total)


@HOOKS.register("loss_trend")
class LossTrend(Hook):
    """Adds `loss_change` (this logged loss minus the previous one) to every training row."""

    def __init__(self) -> None:
        self.previous = None

    def on_log(self, ctx, row):
        row["loss_change"] = 0.0 if self.previous is None else row["loss"] - self.previous
        self.previous = row["loss"]

    def state_dict(self):
        return {"previous": self.previous}

    def load_state_dict(self, state):
        self.previous = state["previous"]


if os.environ.get("FORK_PROBE"):  # test hook: which `template` package did the trainer import?
    Path(os.environ["FORK_PROBE"]).write_text(json.dumps(
        {"file": template.__file__, "marker": getattr(template, "FORK_MARKER", None)}))
'''

CONFIG = """\
seed: 3
output_dir: runs/fork
imports: [myproject.parts]
model: {name: linear, kwargs: {theta: 1.0, b: 0.0}}
data: {name: synthetic_linear, kwargs: {theta: 2.0, b: 1.0, size: 256, eval_size: 32, noise: 0.5}}
loss: {name: scaled_log_cosh, kwargs: {scale: 3.0}}
optimizer: {name: sgd, lr: 0.2}
scheduler: {strategy: manual, name: linear_decay, kwargs: {total: 25, floor: 0.1}}
train: {max_steps: 30, batch_size: 32, log_every: 1, eval_every: 0, checkpoint_every: 0, progress: false}
tracking: {wandb: false}
hooks: [{name: loss_trend}]
"""
BASE_LR, TOTAL, FLOOR, SCALE, STEPS, SEED, BATCH = 0.2, 25, 0.1, 3.0, 30, 3, 32
PACKAGE = package.__name__  # `template` as shipped; a fork's own name after scripts/new_project.py


def repository_files() -> list[Path]:
    """What a fork starts from: tracked files plus new ones not ignored (no runs/, caches, .git)."""
    try:
        listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                                capture_output=True, check=True, timeout=60).stdout.decode().split("\0")
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: everything but the usual junk
        skip = {".git", "runs", "outputs", "wandb", "__pycache__", ".pytest_cache", ".ruff_cache", ".mypy_cache",
                ".hypothesis", ".benchmarks"}
        listed = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*")
                  if p.is_file() and not skip & set(p.relative_to(ROOT).parts)]
    return [Path(name) for name in listed if name and (ROOT / name).is_file()]


def expected_run() -> dict[int, tuple[float, float]]:
    """An independent replay of the fork's run: step -> (lr used, loss), from the formulas, not the fork's code.

    Same data (synthetic_linear, seed 3), same batches (the global batch sampler: update u takes batch u of a
    seeded permutation), theta=1, b=0, plain SGD.
    """
    train, _ = synthetic_linear(SEED, theta=2.0, b=1.0, size=256, eval_size=32, noise=0.5)
    x_all, y_all = train.tensors
    theta = torch.nn.Parameter(torch.tensor([1.0]))
    b = torch.nn.Parameter(torch.tensor([0.0]))
    optimizer = torch.optim.SGD([theta, b], lr=BASE_LR)
    batches = iter(GlobalBatchSampler(len(train), BATCH, 1, 1, 0, SEED))
    rows = {}
    for step in range(1, STEPS + 1):
        lr = BASE_LR * max(FLOOR, 1 - (step - 1) / TOTAL)  # what update `step` uses: set after update step-1
        optimizer.param_groups[0]["lr"] = lr
        index = next(batches)
        loss = SCALE * torch.log(torch.cosh(theta * x_all[index] + b - y_all[index])).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        rows[step] = (lr, loss.item())
    return rows


@pytest.fixture(scope="module")
def fork(tmp_path_factory):
    """Copy the repo, add myproject/ and a config, train in the copy with the copy's own template."""
    root = tmp_path_factory.mktemp("fork") / "myrepo"
    for name in repository_files():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, root / name)
    marker = uuid.uuid4().hex
    with (root / PACKAGE / "__init__.py").open("a", encoding="utf-8") as f:
        f.write(f'\nFORK_MARKER = "{marker}"  # only this copy has it\n')
    (root / "myproject").mkdir()
    (root / "myproject" / "__init__.py").write_text("")
    (root / "myproject" / "parts.py").write_text(PARTS.replace("template", PACKAGE))  # every mention: the package
    (root / "configs" / "fork.yaml").write_text(CONFIG)
    probe = root.parent / "probe.json"
    env = clean_env(PYTHONPATH=str(root), FORK_PROBE=str(probe))
    proc = subprocess.run([sys.executable, "scripts/train.py", "--config", "configs/fork.yaml"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return root, marker, json.loads(probe.read_text()), proc


def test_fork_copies_the_template_and_leaves_the_trainer_alone(fork):
    root, *_ = fork
    for name in (*(f"{PACKAGE}/{part}" for part in ("trainer.py", "losses.py", "schedules/manual.py", "hooks/base.py")),
                 "scripts/train.py"):
        assert (root / name).read_bytes() == (ROOT / name).read_bytes(), name
    assert not (root / ".git").exists()
    assert not (ROOT / "myproject").exists()


def test_fork_run_imports_the_copy_of_the_template(fork):
    root, marker, probe, _ = fork
    assert probe["marker"] == marker  # the installed (or original) template has no marker
    assert Path(probe["file"]).resolve() == (root / PACKAGE / "__init__.py").resolve()


def test_fork_run_writes_into_the_copy(fork):
    root, *_ = fork
    out = root / "runs" / "fork"
    assert read_summary(out)["step"] == STEPS
    assert (out / "model.safetensors").is_file()
    assert "scaled_log_cosh" in (out / "config.yaml").read_text()


def test_fork_run_used_the_new_lr_strategy_and_the_new_loss(fork):
    root, *_ = fork
    rows = {r["step"]: r for r in read_metrics(root / "runs" / "fork") if "loss" in r}
    assert sorted(rows) == list(range(1, STEPS + 1))
    expected = expected_run()
    for step, (lr, loss) in expected.items():
        assert rows[step]["lr"] == pytest.approx(lr, rel=1e-12), f"lr at update {step}"
        assert rows[step]["loss"] == pytest.approx(loss, rel=1e-5), f"loss at update {step}"
    # not a coincidence with a shipped loss: plain MSE on the first batch gives another number
    train, _ = synthetic_linear(SEED, theta=2.0, b=1.0, size=256, eval_size=32, noise=0.5)
    first = next(iter(GlobalBatchSampler(len(train), BATCH, 1, 1, 0, SEED)))
    x, y = train.tensors[0][first], train.tensors[1][first]
    assert rows[1]["loss"] != pytest.approx(torch.nn.functional.mse_loss(x * 1.0, y).item(), rel=1e-3)
    assert rows[1]["loss"] == pytest.approx(SCALE * torch.log(torch.cosh(x - y)).mean().item(), rel=1e-6)


def test_fork_hook_added_values_to_every_row(fork):
    root, *_ = fork
    rows = {r["step"]: r for r in read_metrics(root / "runs" / "fork") if "loss" in r}
    assert rows[1]["loss_change"] == 0.0
    for step in range(2, STEPS + 1):
        assert rows[step]["loss_change"] == pytest.approx(rows[step]["loss"] - rows[step - 1]["loss"], abs=1e-12)


def test_fork_component_typo_is_a_config_error(fork):
    root, *_ = fork
    env = clean_env(PYTHONPATH=str(root))
    proc = subprocess.run([sys.executable, "scripts/train.py", "--config", "configs/fork.yaml",
                           "loss.name=scaled_log_cosj", "output_dir=runs/typo"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1
    assert "loss.name" in proc.stderr and "did you mean 'scaled_log_cosh'" in proc.stderr
    assert not (root / "runs" / "typo").exists()
