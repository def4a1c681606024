"""scripts/plot_schedule.py: the lr curve of configs, overlaid, without training."""

from __future__ import annotations

import pytest

from template.config import load_config
from template.schedules.preview import preview_lr_curve

from conftest import ROOT, run_here

pytestmark = pytest.mark.e2e
SCRIPT = ROOT / "scripts" / "plot_schedule.py"


def plot(*args):
    return run_here(*map(str, args), script=SCRIPT, check=False)


def test_overlays_the_four_seed_strategies(tmp_path):
    out = tmp_path / "lr.png"
    configs = [a for s in ("builtin", "lambda", "subclass", "manual") for a in ("--config", f"configs/seed_{s}.yaml")]
    proc = plot(*configs, "train.max_steps=40", "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_preview_equals_what_training_logs():
    steps, lrs = preview_lr_curve(load_config(ROOT / "configs" / "seed_builtin.yaml"))
    assert steps == list(range(1, 51))
    assert lrs[:21] == [0.1] * 10 + [0.05] * 10 + [0.025]


def test_bad_config_is_exit_2(tmp_path):
    proc = plot("--config", "configs/seed_builtin.yaml", "scheduler.name=StepLRR", "--out", tmp_path / "x.png")
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("error: scheduler.name: unknown torch scheduler 'StepLRR' "
                                   "(did you mean 'StepLR'?)")
    assert not (tmp_path / "x.png").exists()
