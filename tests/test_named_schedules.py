"""Hugging Face's named schedules: update by update, the lr `transformers.get_scheduler` gives.

The reference formulas below are Hugging Face's lambdas as written in transformers/optimization.py (v5.x),
kept verbatim so that this file needs no transformers: update s must use base_lr * reference(s - 1), the
lr a LambdaLR built by `get_scheduler` holds after s - 1 steps, through the trainer's interface
(`LRSchedule`: `lrs()` before update s, `after_update(s)` after it), from both the lambda and the subclass
strategy. Where transformers is importable, one more test drives its real schedulers side by side.
"""

from __future__ import annotations

import math
import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from template.config import SchedulerConfig, load_config
from template.errors import ConfigError
from template.schedules import (
    LAMBDAS,
    NAMED_SCHEDULES,
    SUBCLASS_SCHEDULERS,
    Formula,
    build_schedule,
    check_schedule,
    named_schedule,
)
from template.schedules.preview import preview_lr_curve

from conftest import ROOT, run_here
from schedule_curves import curve, make_optimizer, resumed_curve

NAMES = ["linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
         "inverse_sqrt", "warmup_stable_decay", "cosine_with_min_lr", "cosine_warmup_with_min_lr"]
STRATEGIES = ("lambda", "subclass")


# -- Hugging Face's lambdas, verbatim (current_step = scheduler steps taken) -------------------------------


def hf_constant_with_warmup(current_step, *, num_warmup_steps):
    if current_step < num_warmup_steps:
        return float(current_step) / float(max(1.0, num_warmup_steps))
    return 1.0


def hf_linear(current_step, *, num_warmup_steps, num_training_steps):
    if current_step < num_warmup_steps:
        return float(current_step) / float(max(1, num_warmup_steps))
    return max(0.0, float(num_training_steps - current_step) / float(max(1, num_training_steps - num_warmup_steps)))


def hf_cosine(current_step, *, num_warmup_steps, num_training_steps, num_cycles, min_lr_rate=0.0):
    if current_step < num_warmup_steps:
        return float(current_step) / float(max(1, num_warmup_steps))
    progress = float(current_step - num_warmup_steps) / float(max(1, num_training_steps - num_warmup_steps))
    factor = 0.5 * (1.0 + math.cos(math.pi * float(num_cycles) * 2.0 * progress))
    factor = factor * (1 - min_lr_rate) + min_lr_rate
    return max(0, factor)


def hf_cosine_with_hard_restarts(current_step, *, num_warmup_steps, num_training_steps, num_cycles):
    if current_step < num_warmup_steps:
        return float(current_step) / float(max(1, num_warmup_steps))
    progress = float(current_step - num_warmup_steps) / float(max(1, num_training_steps - num_warmup_steps))
    if progress >= 1.0:
        return 0.0
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * ((float(num_cycles) * progress) % 1.0))))


def hf_polynomial(current_step, *, num_warmup_steps, num_training_steps, lr_end, power, lr_init):
    if current_step < num_warmup_steps:
        return float(current_step) / float(max(1, num_warmup_steps))
    elif current_step > num_training_steps:
        return lr_end / lr_init
    else:
        lr_range = lr_init - lr_end
        decay_steps = num_training_steps - num_warmup_steps
        pct_remaining = 1 - (current_step - num_warmup_steps) / decay_steps
        decay = lr_range * pct_remaining**power + lr_end
        return decay / lr_init


def hf_inverse_sqrt(current_step, *, num_warmup_steps, timescale=None):
    if current_step < num_warmup_steps:
        return float(current_step) / float(max(1, num_warmup_steps))
    shift = timescale - num_warmup_steps
    decay = 1.0 / math.sqrt((current_step + shift) / timescale)
    return decay


def hf_cosine_warmup_with_min_lr(current_step, *, num_warmup_steps, num_training_steps, num_cycles, min_lr_rate=0.0,
                                 warmup_lr_rate=None):
    current_step = float(current_step)
    num_warmup_steps = float(num_warmup_steps)
    num_training_steps = float(num_training_steps)
    if current_step < num_warmup_steps:
        if warmup_lr_rate is None:
            return (current_step + 1.0) / max(1.0, num_warmup_steps)
        else:
            warmup_lr_rate = float(warmup_lr_rate)
            return warmup_lr_rate + (1.0 - warmup_lr_rate) * (current_step) / (max(1, num_warmup_steps - 1))
    progress = (current_step - num_warmup_steps + 1.0) / (max(1.0, num_training_steps - num_warmup_steps))
    factor = 0.5 * (1.0 + math.cos(math.pi * num_cycles * 2.0 * progress))
    factor = factor * (1 - min_lr_rate) + min_lr_rate
    return max(0, factor)


def hf_wsd(current_step, *, num_warmup_steps, num_stable_steps, num_decay_steps, warmup_type, decay_type,
           min_lr_ratio, num_cycles):
    if current_step < num_warmup_steps:
        progress = float(current_step) / float(max(1, num_warmup_steps))
        if warmup_type == "linear":
            factor = progress
        elif warmup_type == "cosine":
            factor = 0.5 * (1.0 - math.cos(math.pi * progress))
        elif warmup_type == "1-sqrt":
            factor = 1.0 - math.sqrt(1.0 - progress)
        factor = factor * (1.0 - min_lr_ratio) + min_lr_ratio
        return max(0.0, factor)
    if current_step < num_warmup_steps + num_stable_steps:
        return 1.0
    if current_step < num_warmup_steps + num_stable_steps + num_decay_steps:
        progress = float(current_step - num_warmup_steps - num_stable_steps) / float(max(1, num_decay_steps))
        if decay_type == "linear":
            factor = 1.0 - progress
        elif decay_type == "cosine":
            factor = 0.5 * (1.0 + math.cos(math.pi * float(num_cycles) * 2.0 * progress))
        elif decay_type == "1-sqrt":
            factor = 1.0 - math.sqrt(progress)
        factor = factor * (1.0 - min_lr_ratio) + min_lr_ratio
        return max(0.0, factor)
    return min_lr_ratio


def reference(name: str, kwargs: dict, lr_init: float):
    """HF's multiplier for `name` as `get_scheduler` sets it up (its defaults and argument handling)."""
    kw = dict(kwargs)
    w = kw.pop("num_warmup_steps", 0)
    t = kw.pop("num_training_steps", None)
    if name == "constant":
        return lambda s: 1
    if name == "constant_with_warmup":
        return lambda s: hf_constant_with_warmup(s, num_warmup_steps=w)
    if name == "linear":
        return lambda s: hf_linear(s, num_warmup_steps=w, num_training_steps=t)
    if name == "cosine":  # min_lr_ratio, the template's addition, is cosine_with_min_lr's min_lr_rate
        return lambda s: hf_cosine(s, num_warmup_steps=w, num_training_steps=t, num_cycles=kw.get("num_cycles", 0.5),
                                   min_lr_rate=kw.get("min_lr_ratio", 0.0))
    if name in ("cosine_with_min_lr", "cosine_warmup_with_min_lr"):
        rate = kw["min_lr"] / lr_init if "min_lr" in kw else kw["min_lr_rate"]
        extra = {"warmup_lr_rate": kw.get("warmup_lr_rate")} if name == "cosine_warmup_with_min_lr" else {}
        fn = hf_cosine if name == "cosine_with_min_lr" else hf_cosine_warmup_with_min_lr
        return lambda s: fn(s, num_warmup_steps=w, num_training_steps=t, num_cycles=kw.get("num_cycles", 0.5),
                            min_lr_rate=rate, **extra)
    if name == "cosine_with_restarts":
        return lambda s: hf_cosine_with_hard_restarts(s, num_warmup_steps=w, num_training_steps=t,
                                                      num_cycles=kw.get("num_cycles", 1))
    if name == "polynomial":
        return lambda s: hf_polynomial(s, num_warmup_steps=w, num_training_steps=t, lr_end=kw.get("lr_end", 1e-7),
                                       power=kw.get("power", 1.0), lr_init=lr_init)
    if name == "inverse_sqrt":
        timescale = kw.get("timescale") or w or 10_000
        return lambda s: hf_inverse_sqrt(s, num_warmup_steps=w, timescale=timescale)
    assert name == "warmup_stable_decay"
    d = kw["num_decay_steps"] if "num_decay_steps" in kw else round(kw["decay_ratio"] * t)
    stable = kw["num_stable_steps"] if "num_stable_steps" in kw else t - w - d
    return lambda s: hf_wsd(s, num_warmup_steps=w, num_stable_steps=stable, num_decay_steps=d,
                            warmup_type=kw.get("warmup_type", "linear"), decay_type=kw.get("decay_type", "cosine"),
                            min_lr_ratio=kw.get("min_lr_ratio", 0), num_cycles=kw.get("num_cycles", 0.5))


# -- driving a schedule as the trainer does ------------------------------------------------------------------






def expected(name: str, kwargs: dict, steps: int, lrs=(0.1,)):
    fns = [reference(name, kwargs, lr) for lr in lrs]
    return [[lr * fn(s - 1) for lr, fn in zip(lrs, fns, strict=True)] for s in range(1, steps + 1)]


# -- hypothesis: each name's arguments, including runs longer than the schedule -------------------------------


@st.composite
def warmup_and_end(draw):
    w = draw(st.integers(0, 20))
    t = draw(st.integers(w + 1, w + 50))
    return w, t, t + draw(st.integers(0, 15))  # steps: past the horizon too, where HF's curves go on


def maybe(draw, key, strategy):
    return {key: draw(strategy)} if draw(st.booleans()) else {}


@st.composite
def named_case(draw, name):
    """(kwargs, steps, base lr) for `name`; optional arguments left out half the time (HF's defaults)."""
    lr = draw(st.floats(1e-4, 1.0))
    w, t, steps = draw(warmup_and_end())
    kw = {"num_warmup_steps": w, "num_training_steps": t}
    fraction = st.floats(0.0, 1.0)
    if name == "constant":
        kw = kw if draw(st.booleans()) else {}
        kw.pop("num_warmup_steps", None)  # its ignored warmup is tested on its own
    elif name == "constant_with_warmup":
        kw = {"num_warmup_steps": w}
    elif name == "cosine":
        kw |= maybe(draw, "num_cycles", st.floats(0.1, 2.5)) | maybe(draw, "min_lr_ratio", fraction)
    elif name == "cosine_with_restarts":
        kw |= maybe(draw, "num_cycles", st.integers(1, 5))
    elif name == "polynomial":
        kw |= maybe(draw, "lr_end", st.floats(0.0, 0.9).map(lambda r: r * lr)) | maybe(draw, "power", st.floats(0.1, 3))
    elif name == "inverse_sqrt":
        kw = {"num_warmup_steps": w} | maybe(draw, "timescale", st.integers(1, 100))
    elif name in ("cosine_with_min_lr", "cosine_warmup_with_min_lr"):
        kw |= maybe(draw, "num_cycles", st.floats(0.1, 2.5))
        kw |= {"min_lr_rate": draw(fraction)} if draw(st.booleans()) else {"min_lr": draw(fraction) * lr}
        if name == "cosine_warmup_with_min_lr":
            kw |= maybe(draw, "warmup_lr_rate", fraction)
    elif name == "warmup_stable_decay":
        d = draw(st.integers(0, t - w))
        if draw(st.booleans()):
            kw = {"num_warmup_steps": w, "num_stable_steps": draw(st.integers(0, 30)), "num_decay_steps": d}
        elif draw(st.booleans()) and d > 0:
            kw |= {"decay_ratio": d / t}
        else:
            kw |= {"num_decay_steps": d}
        shapes = st.sampled_from(["linear", "cosine", "1-sqrt"])
        kw |= maybe(draw, "warmup_type", shapes) | maybe(draw, "decay_type", shapes)
        kw |= maybe(draw, "min_lr_ratio", fraction) | maybe(draw, "num_cycles", st.floats(0.1, 2.5))
    return kw, steps, lr


SETTINGS = settings(max_examples=30, deadline=None)


@pytest.mark.parametrize("name", NAMES)
@SETTINGS
@given(data=st.data())
def test_update_s_uses_the_reference_lr_after_s_minus_1_steps(name, data):
    kwargs, steps, lr = data.draw(named_case(name))
    want = expected(name, kwargs, steps, (lr,))
    for strategy in STRATEGIES:
        got = curve(SchedulerConfig(strategy, name, dict(kwargs)), steps, (lr,))
        assert got == want, (strategy, kwargs)  # the same arithmetic: equal, not close


def test_every_name_is_registered_in_both_strategies():
    for name in NAMES:
        assert name in LAMBDAS and name in SUBCLASS_SCHEDULERS, name
    for old in ("halving", "warmup_cosine"):  # the shipped ones stay
        assert old in SUBCLASS_SCHEDULERS
    assert "halving" in LAMBDAS


def test_a_formula_of_your_own_is_usable_from_both_strategies(monkeypatch):
    """Registered after the package was imported: both wrappers pick it up."""
    for registry in (NAMED_SCHEDULES, LAMBDAS, SUBCLASS_SCHEDULERS):  # registered for this test only
        monkeypatch.setattr(registry, "_items", dict(registry._items))

    @named_schedule("test_step_down")
    def step_down(*, at: int) -> Formula:
        return Formula("test_step_down", lambda count, base_lr: 1.0 if count < at else 0.1)

    for strategy in STRATEGIES:
        lrs = [row[0] for row in curve(SchedulerConfig(strategy, "test_step_down", {"at": 2}), 4)]
        assert lrs == pytest.approx([0.1, 0.1, 0.01, 0.01])


def test_the_tutorial_numbers_of_hugging_faces_warmup():
    """linear, 2 warmup updates of 5, base lr 0.1: update 1 uses 0 (what HF's warmups start from)."""
    cfg = {"num_warmup_steps": 2, "num_training_steps": 5}
    for strategy in STRATEGIES:
        lrs = [row[0] for row in curve(SchedulerConfig(strategy, "linear", cfg), 6)]
        assert lrs == pytest.approx([0.0, 0.05, 0.1, 0.1 * 2 / 3, 0.1 / 3, 0.0])
        assert lrs[0] == 0.0


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_absolute_end_lrs_are_reached_by_every_group(strategy):
    """polynomial's lr_end and cosine_with_min_lr's min_lr are lrs, not ratios: each group gets there
    from its own base lr (group 0, at the optimizer's default lr, is exactly HF's curve)."""
    lrs = (0.1, 1.0)
    poly = {"num_warmup_steps": 2, "num_training_steps": 10, "lr_end": 1e-3, "power": 2.0}
    got = curve(SchedulerConfig(strategy, "polynomial", poly), 14, lrs)
    assert got == expected("polynomial", poly, 14, lrs)
    assert got[-1] == pytest.approx([1e-3, 1e-3])
    cos = {"num_warmup_steps": 0, "num_training_steps": 10, "min_lr": 0.01}
    got = curve(SchedulerConfig(strategy, "cosine_with_min_lr", cos), 11, lrs)
    assert got == expected("cosine_with_min_lr", cos, 11, lrs)
    assert got[-1] == pytest.approx([0.01, 0.01])
    # ratio-based schedules scale each group's own base lr
    lin = {"num_warmup_steps": 2, "num_training_steps": 4}
    assert curve(SchedulerConfig(strategy, "linear", lin), 4, lrs) == [[0.0, 0.0], [0.05, 0.5], [0.1, 1.0],
                                                                       [0.05, 0.5]]


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("name,kwargs", [
    ("cosine", {"num_warmup_steps": 5, "num_training_steps": 40, "min_lr_ratio": 0.1}),
    ("polynomial", {"num_warmup_steps": 5, "num_training_steps": 40, "lr_end": 0.01, "power": 2.0}),
    ("warmup_stable_decay", {"num_warmup_steps": 5, "num_training_steps": 40, "decay_ratio": 0.25,
                             "decay_type": "1-sqrt"}),
])
def test_state_round_trip_mid_schedule(tmp_path, strategy, name, kwargs):
    """Stop at update 13, save as a checkpoint does (weights_only), restore into fresh objects, go on."""
    cfg = SchedulerConfig(strategy, name, kwargs)
    assert resumed_curve(cfg, tmp_path) == curve(cfg, 30, lrs=(0.1, 0.3))[13:]


def test_epoch_interval_counts_epochs():
    cfg = SchedulerConfig("subclass", "linear", {"num_warmup_steps": 1, "num_training_steps": 3}, interval="epoch")
    assert [row[0] for row in curve(cfg, 8, updates_per_epoch=2)] == pytest.approx(
        [0.0, 0.0, 0.1, 0.1, 0.05, 0.05, 0.0, 0.0])


def test_constant_keeps_the_old_lambda_and_takes_hf_arguments():
    assert curve(SchedulerConfig("lambda", "constant"), 3) == [[0.1]] * 3
    ported = SchedulerConfig("lambda", "constant", {"num_warmup_steps": 5, "num_training_steps": 20})
    assert curve(ported, 3) == [[0.1]] * 3  # HF's get_scheduler('constant') ignores the warmup: so does this
    assert check_schedule(ported, 20, {"default": 0.1}) == [
        "scheduler.kwargs.num_warmup_steps: 'constant' ignores it, as transformers does; "
        "use 'constant_with_warmup' for a warmup"]


# -- bad arguments: config errors naming the key, from either strategy ----------------------------------------


BAD = [
    ("linear", {"num_warmup_steps": 10, "num_training_steps": 10}, "scheduler.kwargs.num_warmup_steps",
     "must be below num_training_steps"),
    ("cosine", {"num_warmup_steps": 50, "num_training_steps": 10}, "scheduler.kwargs.num_warmup_steps", "below"),
    ("constant_with_warmup", {"num_warmup_steps": -1}, "scheduler.kwargs.num_warmup_steps", ">= 0"),
    ("linear", {"num_warmup_steps": 0, "num_training_steps": -5}, "scheduler.kwargs.num_training_steps", ">= 1"),
    ("linear", {"num_warmup_steps": 2.5, "num_training_steps": 10}, "scheduler.kwargs.num_warmup_steps", "integer"),
    ("linear", {"num_warmup_steps": 2}, "scheduler.kwargs.num_training_steps", "required by 'linear'"),
    ("linear", {"num_warmup_step": 2, "num_training_steps": 9}, "scheduler.kwargs.num_warmup_step",
     "did you mean 'num_warmup_steps'"),
    ("cosine", {"num_training_steps": 10, "min_lr_ratio": 1.5}, "scheduler.kwargs.min_lr_ratio", "<= 1"),
    ("cosine_with_restarts", {"num_training_steps": 10, "num_cycles": 0}, "scheduler.kwargs.num_cycles", "> 0"),
    ("polynomial", {"num_training_steps": 10, "lr_end": 0.5}, "scheduler.kwargs.lr_end",
     "below the base lr of param group 'g0' (0.1)"),
    ("polynomial", {"num_training_steps": 10, "power": -1}, "scheduler.kwargs.power", "> 0"),
    ("inverse_sqrt", {"timescale": 0}, "scheduler.kwargs.timescale", ">= 1"),
    ("cosine_with_min_lr", {"num_training_steps": 10}, "scheduler.kwargs", "exactly one of min_lr, min_lr_rate"),
    ("warmup_stable_decay", {"num_warmup_steps": 5, "num_training_steps": 10, "num_decay_steps": 6},
     "scheduler.kwargs.num_decay_steps", "exceed num_training_steps"),
    ("warmup_stable_decay", {"num_training_steps": 10, "num_decay_steps": 2, "decay_type": "cosin"},
     "scheduler.kwargs.decay_type", "did you mean 'cosine'"),
    ("warmup_stable_decay", {"num_decay_steps": 2}, "scheduler.kwargs", "num_training_steps or num_stable_steps"),
    ("warmup_stable_decay", {"num_training_steps": 10}, "scheduler.kwargs", "one of num_decay_steps, decay_ratio"),
    ("warmup_stable_decay", {"num_training_steps": 10, "decay_ratio": 0.01}, "scheduler.kwargs.decay_ratio",
     "no decay step"),
]


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("name,kwargs,key,problem", BAD, ids=[f"{b[0]}-{b[2].rsplit('.', 1)[-1]}" for b in BAD])
def test_bad_arguments_are_config_errors_naming_the_key(strategy, name, kwargs, key, problem):
    with pytest.raises(ConfigError) as info:
        build_schedule(SchedulerConfig(strategy, name, kwargs), make_optimizer(), 10)
    assert info.value.key == key
    assert problem in info.value.problem


# -- what the trainer asks before update 1 --------------------------------------------------------------------


def test_a_horizon_shorter_than_the_run_is_one_warning_line():
    cfg = SchedulerConfig("subclass", "linear", {"num_training_steps": 50})
    assert check_schedule(cfg, 50, {"default": 0.1}) == []
    assert check_schedule(cfg, 80, {"default": 0.1}) == [
        "scheduler.kwargs.num_training_steps: 'linear' ends after update 50 but train.max_steps is 80: for the last "
        "30 updates the lr stays at 0"]
    cosine = SchedulerConfig("lambda", "cosine", {"num_training_steps": 50})
    assert "rises again" in check_schedule(cosine, 80)[0]
    wsd = SchedulerConfig("lambda", "warmup_stable_decay", {"num_stable_steps": 10, "num_decay_steps": 5})
    assert check_schedule(wsd, 80)[0].startswith("scheduler.kwargs.num_stable_steps: 'warmup_stable_decay' ends "
                                                 "after update 15")
    epochs = SchedulerConfig("lambda", "linear", {"num_training_steps": 5}, interval="epoch")
    assert check_schedule(epochs, 50, updates_per_epoch=10) == []
    assert len(check_schedule(epochs, 51, updates_per_epoch=10)) == 1
    assert check_schedule(epochs, 51, updates_per_epoch=None) == []  # unknown epoch length: not guessed
    assert check_schedule(SchedulerConfig("lambda", "inverse_sqrt", {"num_warmup_steps": 5}), 10**6) == []


def test_lr_zero_on_update_1_warns_for_hugging_faces_warmups_and_refuses_elsewhere():
    named = SchedulerConfig("subclass", "cosine", {"num_warmup_steps": 10, "num_training_steps": 100})
    first = dict(zip(["default"], curve(named, 1)[0], strict=True))
    assert first == {"default": 0.0}
    assert check_schedule(named, 100, first) == [
        "scheduler.kwargs.num_warmup_steps: update 1 uses lr 0 in param group 'default': 'cosine' warms up from 0 "
        "as Hugging Face's schedules do, so the first update changes nothing"]
    with pytest.raises(ConfigError, match="only update would use lr 0"):
        check_schedule(named, 1, first)
    no_warmup = SchedulerConfig("subclass", "cosine", {"num_training_steps": 100})
    assert check_schedule(no_warmup, 100, dict(zip(["default"], curve(no_warmup, 1)[0], strict=True))) == []
    # nothing asked for a zero: a warmup written step / W, an lr scaled to nothing
    expression = SchedulerConfig("lambda", expression="min(1, step / 10)")
    with pytest.raises(ConfigError) as info:
        check_schedule(expression, 100, {"default": 0.0, "bias": 0.0})
    assert info.value.key == "scheduler.expression"
    assert "param group 'default', 'bias'" in info.value.problem
    with pytest.raises(ConfigError) as info:
        check_schedule(SchedulerConfig("builtin", "ConstantLR", {"factor": 0.0}), 100, {"default": 0.0})
    assert info.value.key == "scheduler.kwargs"
    assert check_schedule(SchedulerConfig("builtin", "ConstantLR"), 100, {"default": 0.03}) == []


def test_preview_draws_the_named_schedules():
    cfg = load_config(ROOT / "configs" / "default.yaml", [
        "scheduler.strategy=lambda", "scheduler.name=warmup_stable_decay", "train.max_steps=60",
        "scheduler.kwargs={num_warmup_steps: 10, num_training_steps: 60, decay_ratio: 0.2, decay_type: 1-sqrt}"])
    steps, lrs = preview_lr_curve(cfg)
    kwargs = {"num_warmup_steps": 10, "num_training_steps": 60, "decay_ratio": 0.2, "decay_type": "1-sqrt"}
    assert steps == list(range(1, 61))
    assert lrs == [row[0] for row in expected("warmup_stable_decay", kwargs, 60, (cfg.optimizer.lr,))]


def test_the_shipped_config_is_hugging_faces_cosine():
    cfg = load_config(ROOT / "configs" / "hf_schedule.yaml")
    _, lrs = preview_lr_curve(cfg)
    assert lrs == [row[0] for row in expected("cosine", dict(cfg.scheduler.kwargs), 300, (0.2,))]
    assert cfg.scheduler.kwargs["num_training_steps"] == cfg.train.max_steps == 300
    assert len(check_schedule(cfg.scheduler, cfg.train.max_steps, {"default": lrs[0]})) == 1  # the lr-0 line


@pytest.mark.e2e
def test_plot_schedule_draws_a_named_schedule_and_warns(tmp_path):
    out = tmp_path / "lr.png"
    proc = run_here("--config", "configs/default.yaml", "scheduler.strategy=subclass", "scheduler.name=cosine",
                    "train.max_steps=150", "scheduler.kwargs={num_warmup_steps: 10, num_training_steps: 100}",
                    "--out", str(out), script=ROOT / "scripts" / "plot_schedule.py", check=False)
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert proc.stderr.splitlines() == [
        "warning: default: scheduler.kwargs.num_training_steps: 'cosine' ends after update 100 but train.max_steps "
        "is 150: for the last 50 updates the lr rises again (the cosine goes on past its end)",
        "warning: default: scheduler.kwargs.num_warmup_steps: update 1 uses lr 0 in param group 'default': 'cosine' "
        "warms up from 0 as Hugging Face's schedules do, so the first update changes nothing"]


# -- against transformers itself, where it is installed ---------------------------------------------------------


def hf_call(name: str, kwargs: dict):
    """`get_scheduler` arguments for a template config; the template's two additions in HF's spelling."""
    kw = dict(kwargs)
    if name == "cosine" and "min_lr_ratio" in kw:
        name, kw["min_lr_rate"] = "cosine_with_min_lr", kw.pop("min_lr_ratio")
    if "decay_ratio" in kw:
        kw["num_decay_steps"] = round(kw.pop("decay_ratio") * kw["num_training_steps"])
    return name, kw.pop("num_warmup_steps", 0), kw.pop("num_training_steps", None), kw


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=10, deadline=None)
@given(data=st.data())
def test_equal_to_transformers_get_scheduler(name, data):
    get_scheduler = pytest.importorskip("transformers").get_scheduler
    kwargs, steps, lr = data.draw(named_case(name))
    hf_name, w, t, specific = hf_call(name, kwargs)
    optimizer = make_optimizer((lr,))
    with warnings.catch_warnings():  # HF warns when WSD gets both num_training_steps and num_stable_steps
        warnings.simplefilter("ignore")
        scheduler = get_scheduler(hf_name, optimizer, num_warmup_steps=w, num_training_steps=t,
                                  scheduler_specific_kwargs=specific)
        want = []
        for _ in range(steps):
            want.append([optimizer.param_groups[0]["lr"]])
            optimizer.step()
            scheduler.step()
    for strategy in STRATEGIES:
        assert curve(SchedulerConfig(strategy, name, dict(kwargs)), steps, (lr,)) == want, (strategy, kwargs)
