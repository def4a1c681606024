"""The lr range test (scripts/find_lr.py): its arithmetic on curves with known answers, a suggestion inside
an lr range measured to train well, the same curve on 1 and 2 processes, and weights left untouched."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from template.config import load_config
from template.data import GlobalBatchSampler, make_loader
from template.errors import ConfigError
from template.parts import build_parts
from template.runtime.distributed import make_accelerator, param_digest
from template.tools.lr_find import (
    DIVERGED,
    NONFINITE,
    LRFindResult,
    LRFindSettings,
    base_ratios,
    lr_at,
    range_test,
    skip_begin_for,
    smooth,
    suggest,
)
from template.trainer import UpdateStep

from conftest import ROOT, run_here, run_train

FIND_LR = ROOT / "scripts" / "find_lr.py"

# configs/default.yaml (MLP on synthetic regression, RandomScaledSGD, clip 1.0) trains well from 0.018 to
# 1.0. Measured 2026-11-26: 300 updates at a constant lr (scheduler.strategy=lambda, scheduler.name=constant),
# 17 lrs log-spaced from 1e-3 to 10; final eval loss 0.0265 at best (lr 0.316); within 2x of it (<= 0.053):
# 0.0178 (0.050) ... 1.0 (0.037); outside: 0.01 (0.095) and 1.78 (0.071). The bounds are the outermost
# lrs measured good.
GOOD_LR = (0.0178, 1.0)
# overrides before and after the script's own flags, as people type them
RANGE_ARGS = ("--config", "configs/default.yaml", "tracking.wandb=false", "--min-lr", "1e-4", "--max-lr", "10",
              "--num-steps", "100")


# --- the arithmetic, on curves with known answers ---------------------------------------------------------

def test_the_lr_grows_exponentially_from_min_to_max() -> None:
    s = LRFindSettings(min_lr=1e-4, max_lr=1.0, num_steps=5)
    assert [lr_at(i, s) for i in range(5)] == pytest.approx([1e-4, 1e-3, 1e-2, 1e-1, 1.0], rel=1e-12)


def test_smoothing_is_a_bias_corrected_moving_average() -> None:
    assert smooth([3.0] * 20, 0.98) == pytest.approx([3.0] * 20)  # no pull towards the average's start at 0
    # beta 0.5: (0.5 * 1) / 0.5 = 1, then (0.5 * 0.5 + 0.5 * 2) / (1 - 0.25) = 5/3
    assert smooth([1.0, 2.0], 0.5) == pytest.approx([1.0, 5 / 3])
    assert smooth([1.0, 2.0, 4.0], 0.0) == [1.0, 2.0, 4.0]


def test_steepest_descent_and_minimum_over_10_on_a_known_curve() -> None:
    lrs = np.logspace(-4, 0, 41)  # 1e-2 is point 20
    drop = 1 - 0.9 / (1 + np.exp(-3 * (np.log10(lrs) + 2)))  # falls fastest (in log lr) at exactly 1e-2
    curve = drop + np.where(lrs > 0.1, (np.log10(lrs) + 1) ** 2, 0)  # and turns up after 0.1
    steepest, minimum = suggest(lrs.tolist(), curve.tolist())
    assert steepest == pytest.approx(1e-2, rel=1e-9)
    assert minimum == pytest.approx(lrs[int(np.argmin(curve))] / 10)


def test_the_steepest_search_skips_the_noisy_start_of_the_smoothing() -> None:
    assert skip_begin_for(100, 0.98) == 33  # 0.98 ** 34 < 1/2 <= 0.98 ** 33: the half-life, a third at most
    assert skip_begin_for(300, 0.98) == 35
    assert skip_begin_for(100, 0.0) == 10  # no smoothing: Lightning's 10 of 100
    lrs = np.logspace(-4, 0, 100).tolist()
    flat_with_an_early_dip = [1.0] * 100
    flat_with_an_early_dip[15] = 0.5
    for i in range(60, 100):
        flat_with_an_early_dip[i] = 1.0 - 0.01 * (i - 59)
    assert suggest(lrs, flat_with_an_early_dip)[0] > lrs[59]


def test_too_short_a_curve_gives_no_steepest_suggestion() -> None:
    assert suggest([1e-3, 1e-2], [1.0, 0.5]) == (None, pytest.approx(1e-3))
    lrs = np.logspace(-3, 0, 7).tolist()  # 2 skipped at the start, 1 at the end: 4 left for a slope
    assert suggest(lrs, [1.0, 0.9, 0.8, 0.6, 0.3, 0.2, 0.5])[0] is None
    assert suggest([], []) == (None, None)


def test_bad_settings_name_the_flag() -> None:
    for settings, flag in [(LRFindSettings(min_lr=0), "--min-lr"), (LRFindSettings(min_lr=1, max_lr=0.5), "--max-lr"),
                           (LRFindSettings(num_steps=1), "--num-steps"), (LRFindSettings(beta=1.0), "--beta"),
                           (LRFindSettings(diverge=1.0), "--diverge")]:
        with pytest.raises(ConfigError) as err:
            settings.check()
        assert err.value.key == flag


def test_param_groups_keep_their_ratio_to_optimizer_lr() -> None:
    cfg = load_config(None, ["optimizer.lr=0.2", "optimizer.groups=[{name: head, params: ['net.4.*'], lr: 0.05}]"])
    parts = build_parts(cfg)
    assert base_ratios(parts.optimizer, cfg.optimizer) == pytest.approx([1.0, 0.25])


# --- in process: weights untouched, the two ways of stopping ----------------------------------------------

def prepared_range_test(config: Path, settings: LRFindSettings) -> tuple[LRFindResult, dict[str, Any]]:
    """Build a config's parts as find_lr does, run `range_test`, and say what changed (`before`/`after`)."""
    cfg = load_config(config)
    parts = build_parts(cfg)
    accelerator = make_accelerator()
    model, optimizer = accelerator.prepare(parts.model, parts.optimizer)
    t = cfg.train
    sampler = GlobalBatchSampler(len(parts.train_set), t.batch_size, 1, 1, 0, cfg.seed)  # type: ignore[arg-type]
    update = UpdateStep(accelerator, model, optimizer, parts.loss_fn, 1, t.clip_grad_norm, skip_nonfinite=False)
    before = (param_digest(model), json.dumps(parts.optimizer.state_dict(), default=str))
    rng = torch.random.get_rng_state()
    result = range_test(accelerator, model, optimizer, update, iter(make_loader(parts.train_set, sampler, 0, False)),
                        base_ratios(parts.optimizer, cfg.optimizer), settings)
    after = (param_digest(model), json.dumps(parts.optimizer.state_dict(), default=str))
    return result, {"before": before, "after": after, "rng_kept": torch.equal(rng, torch.random.get_rng_state())}


def test_a_diverging_test_stops_early_and_leaves_weights_and_optimizer_untouched() -> None:
    settings = LRFindSettings(min_lr=1e-3, max_lr=1e3, num_steps=60)
    result, state = prepared_range_test(ROOT / "configs" / "default.yaml", settings)
    assert result.stopped_reason == DIVERGED
    assert result.stop_step == len(result.losses) < 60
    assert result.smoothed[-1] > 4 * min(result.smoothed[:-1])
    # parameters bit for bit; the optimizer's state (RandomScaledSGD's draws count) and its groups' lr (what the
    # warmup schedule set at construction, not the range test's last lr)
    assert state["before"] == state["after"]
    assert state["rng_kept"]


def test_a_non_finite_loss_stops_the_test_and_the_weights_come_back() -> None:
    # the tutorial's linear model without clipping; lr up to 1e12 overflows to inf, and `diverge` is set
    # too high to stop it first
    result, state = prepared_range_test(ROOT / "configs" / "seed_builtin.yaml",
                                        LRFindSettings(min_lr=1e-2, max_lr=1e12, num_steps=40, diverge=1e300))
    assert result.stopped_reason == NONFINITE
    assert result.stop_step == len(result.losses) + 1 < 40
    assert all(math.isfinite(v) for v in result.losses)
    assert state["before"] == state["after"]


# --- the script: a known good range, 1 vs 2 processes --------------------------------------------------------

@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[int, tuple[Path, str]]:
    """scripts/find_lr.py on configs/default.yaml, by 1 process and by 2 (accelerate launch, gloo)."""
    found = {}
    for nproc, launcher in ((1, "python"), (2, "accelerate")):
        out = tmp_path_factory.mktemp(f"lr_find_{nproc}")
        args = (*RANGE_ARGS, f"output_dir={out}")
        proc = run_here(*args, script=FIND_LR) if nproc == 1 else run_train(*args, launcher=launcher, nproc=nproc,
                                                                               script=FIND_LR)
        found[nproc] = (out, proc.stdout)
    return found


def read_curve(out: Path) -> dict[str, Any]:
    return json.loads((out / "lr_find.json").read_text())


@pytest.mark.e2e
def test_the_suggestion_falls_in_the_measured_good_range(runs: dict[int, tuple[Path, str]]) -> None:
    out, stdout = runs[1]
    curve = read_curve(out)
    printed = [line for line in stdout.splitlines() if line.startswith("suggested lr: ")]
    assert len(printed) == 1
    assert float(printed[0].split(": ")[1]) == pytest.approx(curve["suggestion_steepest"], rel=1e-2)
    assert GOOD_LR[0] <= curve["suggestion_steepest"] <= GOOD_LR[1]
    assert GOOD_LR[0] <= curve["suggestion_min_over_10"] <= GOOD_LR[1]
    assert curve["stopped_reason"] == DIVERGED  # 10 is past where this config blows up
    assert sorted(p.name for p in out.iterdir()) == ["lr_find.json", "lr_find.png"]  # no checkpoint, no weights


@pytest.mark.e2e
@pytest.mark.ddp
def test_one_and_two_processes_give_the_same_curve(runs: dict[int, tuple[Path, str]]) -> None:
    one, two = read_curve(runs[1][0]), read_curve(runs[2][0])
    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert one["stop_step"] == two["stop_step"]
    assert one["stopped_reason"] == two["stopped_reason"]
    assert two["lrs"] == one["lrs"]
    assert two["losses"] == pytest.approx(one["losses"], rel=1e-5)
    assert two["suggestion_steepest"] == pytest.approx(one["suggestion_steepest"], rel=1e-5)
    assert sum(line.startswith("suggested lr: ") for line in runs[2][1].splitlines()) == 1  # rank 0 only
    assert sorted(p.name for p in runs[2][0].iterdir()) == ["lr_find.json", "lr_find.png"]


@pytest.mark.e2e
def test_bad_flags_are_one_error_line_and_exit_2(tmp_path: Path) -> None:
    proc = run_here("--max-lr", "1e-9", f"output_dir={tmp_path / 'out'}", script=FIND_LR, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: --max-lr: must be finite and above --min-lr (1e-06), got 1e-09"]
    assert not (tmp_path / "out").exists()
