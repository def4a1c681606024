"""The lr strategy contract: four interchangeable kinds, equal to torch's builtins, resumable mid-schedule."""

from __future__ import annotations

import copy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from template.config import SchedulerConfig
from template.errors import ConfigError
from template.schedules import build_schedule

from schedule_curves import curve, make_optimizer, resumed_curve


def assert_curves_close(a, b, rel=1e-9):
    assert len(a) == len(b)
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        assert x == pytest.approx(y, rel=rel, abs=1e-15), f"update {i + 1}: {x} != {y}"


SETTINGS = settings(max_examples=25, deadline=None)


@SETTINGS
@given(step_size=st.integers(1, 30), gamma=st.floats(0.05, 1.0), lr=st.floats(1e-4, 1.0), steps=st.integers(1, 120))
def test_step_schedules_equal_torch_steplr(step_size, gamma, lr, steps):
    reference = curve(SchedulerConfig("builtin", "StepLR", {"step_size": step_size, "gamma": gamma}), steps, (lr,))
    kw = {"every": step_size, "gamma": gamma}
    assert_curves_close(curve(SchedulerConfig("subclass", "halving", kw), steps, (lr,)), reference)
    assert_curves_close(curve(SchedulerConfig("lambda", "halving", kw), steps, (lr,)), reference)
    expression = SchedulerConfig("lambda", expression="gamma ** (step // every)",
                                 constants={"gamma": gamma, "every": step_size})
    assert_curves_close(curve(expression, steps, (lr,)), reference)
    # the manual rule multiplies repeatedly, as the tutorial does: equal to float rounding
    assert_curves_close(curve(SchedulerConfig("manual", "halving", kw), steps, (lr,)), reference, rel=1e-12)


@SETTINGS
@given(t_max=st.integers(1, 100), eta_ratio=st.floats(0.0, 0.5), lr=st.floats(1e-4, 1.0))
def test_cosine_schedules_equal_torch_cosine(t_max, eta_ratio, lr):
    steps = t_max + 1
    eta_min = lr * eta_ratio
    reference = curve(SchedulerConfig("builtin", "CosineAnnealingLR", {"T_max": t_max, "eta_min": eta_min}),
                      steps, (lr,))
    subclass = SchedulerConfig("subclass", "warmup_cosine",
                               {"warmup_steps": 0, "total_steps": t_max, "min_lr_ratio": eta_ratio})
    manual = SchedulerConfig("manual", "cosine", {"T_max": t_max, "eta_min": eta_min})
    expression = SchedulerConfig("lambda", expression="r + (1 - r) * 0.5 * (1 + cos(pi * min(step, T) / T))",
                                 constants={"r": eta_ratio, "T": t_max})
    for cfg in (subclass, manual, expression):
        assert_curves_close(curve(cfg, steps, (lr,)), reference, rel=1e-6)


def test_per_group_base_lrs_are_scheduled_per_group():
    cfgs = [
        SchedulerConfig("builtin", "StepLR", {"step_size": 2, "gamma": 0.5}),
        SchedulerConfig("lambda", expression="0.5 ** (step // 2)"),
        SchedulerConfig("subclass", "halving", {"every": 2, "gamma": 0.5}),
        SchedulerConfig("manual", "halving", {"every": 2, "gamma": 0.5}),
    ]
    for cfg in cfgs:
        assert curve(cfg, 5, lrs=(0.1, 1.0)) == [[0.1, 1.0], [0.1, 1.0], [0.05, 0.5], [0.05, 0.5],
                                                 [0.025, 0.25]], cfg.strategy


def test_epoch_interval_advances_once_per_epoch():
    cfg = SchedulerConfig("builtin", "StepLR", {"step_size": 1, "gamma": 0.5}, interval="epoch")
    lrs = [row[0] for row in curve(cfg, 9, updates_per_epoch=3)]
    assert lrs == [0.1] * 3 + [0.05] * 3 + [0.025] * 3
    expr = SchedulerConfig("lambda", expression="0.5 ** epoch", interval="epoch")
    assert [row[0] for row in curve(expr, 9, updates_per_epoch=3)] == lrs


def test_lambda_sees_epoch_under_step_interval():
    cfg = SchedulerConfig("lambda", expression="0.5 ** epoch")
    assert [row[0] for row in curve(cfg, 6, updates_per_epoch=2)] == [0.1, 0.1, 0.05, 0.05, 0.025, 0.025]


def test_warmup_then_cosine_composition_from_yaml_shape():
    cfg = SchedulerConfig("builtin", "SequentialLR", {
        "milestones": [5],
        "schedulers": [
            {"name": "LinearLR", "kwargs": {"start_factor": 0.2, "total_iters": 5}},
            {"name": "CosineAnnealingLR", "kwargs": {"T_max": 10}},
        ],
    })
    lrs = [row[0] for row in curve(cfg, 15)]
    assert lrs[:5] == pytest.approx([0.02, 0.036, 0.052, 0.068, 0.084])
    assert lrs[5] == pytest.approx(0.1)
    assert lrs[10] == pytest.approx(0.05)


def test_reduce_on_plateau_is_fed_the_monitored_metric():
    cfg = SchedulerConfig("builtin", "ReduceLROnPlateau", {"patience": 2, "factor": 0.5}, monitor="train/loss")
    # the metric never improves after update 1: lr halves once patience is exceeded
    lrs = [row[0] for row in curve(cfg, 8, metrics=lambda u: {"train/loss": 1.0})]
    assert lrs == [0.1, 0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.025]
    # no metric on an update: the strategy waits (it counts evaluations, not updates)
    assert [row[0] for row in curve(cfg, 8, metrics=lambda u: {})] == [0.1] * 8


def test_manual_plateau_uses_the_metric():
    cfg = SchedulerConfig("manual", "plateau_halving", {"patience": 1}, monitor="eval/loss")
    lrs = [row[0] for row in curve(cfg, 6, metrics=lambda u: {"eval/loss": 1.0})]
    assert lrs == [0.1, 0.1, 0.1, 0.05, 0.05, 0.025]


ROUND_TRIP = [
    SchedulerConfig("builtin", "StepLR", {"step_size": 4, "gamma": 0.5}),
    SchedulerConfig("builtin", "OneCycleLR", {"max_lr": 0.5, "total_steps": 40}),
    SchedulerConfig("builtin", "SequentialLR", {"milestones": [5], "schedulers": [
        {"name": "LinearLR", "kwargs": {"start_factor": 0.1, "total_iters": 5}},
        {"name": "ExponentialLR", "kwargs": {"gamma": 0.9}}]}),
    SchedulerConfig("builtin", "ReduceLROnPlateau", {"patience": 1}),
    SchedulerConfig("lambda", expression="0.5 ** (step // 4)"),
    SchedulerConfig("lambda", "halving", {"every": 4}),
    SchedulerConfig("subclass", "halving", {"every": 4}),
    SchedulerConfig("subclass", "warmup_cosine", {"warmup_steps": 5, "total_steps": 40}),
    SchedulerConfig("manual", "halving", {"every": 4}),
    SchedulerConfig("manual", "cosine", {"T_max": 40}),
    SchedulerConfig("manual", "plateau_halving", {"patience": 1}),
]


@pytest.mark.parametrize("cfg", ROUND_TRIP, ids=lambda c: f"{c.strategy}-{c.expression or c.name}")
def test_state_round_trip_mid_schedule(tmp_path, cfg):
    """Stop at update 13, save as a checkpoint does (weights_only), restore into fresh objects, go on."""
    def metrics(update):
        return {"train/loss": 1.0 / (1 + update % 3)}

    full = curve(cfg, 30, lrs=(0.1, 0.3), metrics=metrics)
    assert resumed_curve(cfg, tmp_path, metrics=metrics) == full[13:]


def test_state_dict_is_plain_data():
    cfg = SchedulerConfig("lambda", expression="0.5 ** (step // 4)")
    schedule = build_schedule(cfg, make_optimizer(), 10)
    state = copy.deepcopy(schedule.state_dict())
    assert state["strategy"]["lr_lambdas"] == [None]  # a closure: nothing pickled from the config


@pytest.mark.parametrize("expression", ["__import__('os').system('echo hi')", "().__class__.__bases__",
                                        "open('/etc/passwd')", "step.real", "[1][0]", "lambda: 1",
                                        "exec('1')", "9 ** 9 ** 9"])
def test_injection_attempts_are_config_errors(expression):
    with pytest.raises(ConfigError) as info:
        build_schedule(SchedulerConfig("lambda", expression=expression), make_optimizer(), 10)
    assert info.value.key == "scheduler.expression"


def test_unknown_names_suggest_the_closest():
    with pytest.raises(ConfigError, match="did you mean 'CosineAnnealingLR'"):
        build_schedule(SchedulerConfig("builtin", "CosineAnealingLR"), make_optimizer(), 10)
    with pytest.raises(ConfigError, match="did you mean 'warmup_cosine'"):
        build_schedule(SchedulerConfig("subclass", "warmup_cosin"), make_optimizer(), 10)


def test_manual_strategy_sets_the_first_updates_lr(monkeypatch):
    """A manual warmup must not take a full-lr first step: step(update=0) runs before update 1."""
    from template.schedules import MANUAL_STRATEGIES, ManualLR

    class Warmup(ManualLR):
        def step(self, update, epoch, metric):
            for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
                group["lr"] = base * min(1.0, (update + 1) / 4)

    monkeypatch.setitem(MANUAL_STRATEGIES._items, "test_warmup", Warmup)  # taken out again after the test
    lrs = [row[0] for row in curve(SchedulerConfig("manual", "test_warmup"), 6)]
    assert lrs == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1, 0.1])
