"""The tutorial's numbers (SPEC.md), reproduced by the template's own components."""

from __future__ import annotations

import copy

import pytest
import torch

from template.config import SchedulerConfig
from template.losses import LOSSES, SimpleMSELoss
from template.models import MLP, LinearModel
from template.optim import OPTIMIZERS, RandomScaledSGD
from template.schedules import build_schedule


def tutorial_backward() -> LinearModel:
    """theta=100, b=50, x=3, target 348: y=350, loss 4, grads 12 and 4."""
    model = LinearModel(theta=100, b=50)
    y = model(torch.tensor([3.0]))
    loss = SimpleMSELoss()(y, torch.tensor([348.0]))
    assert y.item() == 350.0
    assert loss.item() == 4.0
    loss.backward()
    return model


def test_linear_model_has_real_parameters():
    # the tutorial's Variables left parameters() empty; ours are registered
    assert [n for n, _ in LinearModel().named_parameters()] == ["theta", "b"]


def test_forward_loss_and_gradients():
    model = tutorial_backward()
    assert model.theta.grad.item() == 12.0
    assert model.b.grad.item() == 4.0


def test_sgd_lr2_step_gives_76_and_42():
    model = tutorial_backward()
    torch.optim.SGD(model.parameters(), lr=2).step()
    assert (model.theta.item(), model.b.item()) == (76.0, 42.0)


def test_custom_optimizer_with_factor_04_gives_90_4_and_46_8():
    model = tutorial_backward()
    RandomScaledSGD(model.parameters(), lr=2, factor=0.4).step()
    assert model.theta.item() == pytest.approx(90.4, abs=1e-5)
    assert model.b.item() == pytest.approx(46.8, abs=1e-5)


@pytest.mark.parametrize("reduction, expected", [("mean", 2.25), ("sum", 9.0), ("none", [4.0, 0.0, 1.0, 4.0])])
def test_simple_mse_reductions(reduction, expected):
    loss = SimpleMSELoss(reduction)(torch.tensor([2.0, 0.0, 1.0, -2.0]), torch.tensor([0.0, 0.0, 0.0, 0.0]))
    assert loss.tolist() == expected


def test_simple_mse_matches_torch_mse():
    a, b = torch.randn(5, 3), torch.randn(5, 3)
    assert torch.allclose(SimpleMSELoss()(a, b), torch.nn.MSELoss()(a, b))
    with pytest.raises(ValueError):
        SimpleMSELoss("avg")


def test_losses_registry_offers_custom_and_torch_losses():
    assert {"simple_mse", "mse", "l1", "huber", "cross_entropy"} <= set(LOSSES)
    assert isinstance(LOSSES.build("simple_mse", reduction="sum"), SimpleMSELoss)


# ---- the custom optimizer, done right --------------------------------------------------------------

def test_random_factor_is_in_unit_interval_and_seeded():
    a = RandomScaledSGD([torch.zeros(1, requires_grad=True)], seed=7)
    b = RandomScaledSGD([torch.zeros(1, requires_grad=True)], seed=7)
    draws = [a.draw_factor() for _ in range(100)]
    assert draws == [b.draw_factor() for _ in range(100)]  # same seed, same factors: ranks agree
    assert all(0.0 <= f < 1.0 for f in draws)
    assert len(set(draws)) > 90


def test_step_uses_the_drawn_factor_and_per_group_lr():
    w1 = torch.nn.Parameter(torch.ones(3))
    w2 = torch.nn.Parameter(torch.ones(2))
    opt = RandomScaledSGD([{"params": [w1], "lr": 0.5}, {"params": [w2], "lr": 2.0}], lr=1.0, seed=3)
    expected_factor = RandomScaledSGD([torch.zeros(1, requires_grad=True)], seed=3).draw_factor()
    w1.grad, w2.grad = torch.full((3,), 0.1), torch.full((2,), 0.1)
    opt.step()
    assert opt.last_factor == expected_factor
    assert torch.allclose(w1, torch.full((3,), 1 - 0.5 * expected_factor * 0.1))
    assert torch.allclose(w2, torch.full((2,), 1 - 2.0 * expected_factor * 0.1))


def test_step_updates_in_place():
    w = torch.nn.Parameter(torch.ones(4))
    storage = w.data_ptr()
    w.grad = torch.ones(4)
    RandomScaledSGD([w], lr=0.1, seed=0).step()
    assert w.data_ptr() == storage


def test_weight_decay_matches_sgd():
    torch.manual_seed(0)
    a, b = torch.nn.Parameter(torch.randn(10)), None
    b = torch.nn.Parameter(a.detach().clone())
    a.grad = torch.randn(10)
    b.grad = a.grad.clone()
    RandomScaledSGD([a], lr=0.1, weight_decay=0.01, factor=0.5).step()
    torch.optim.SGD([b], lr=0.05, weight_decay=0.01).step()
    assert torch.allclose(a, b, atol=1e-7)


def test_closure_is_called_and_its_loss_returned():
    w = torch.nn.Parameter(torch.tensor([2.0]))
    opt = RandomScaledSGD([w], lr=0.1, factor=0.5)

    def closure():
        opt.zero_grad()
        loss = (w**2).sum()
        loss.backward()
        return loss

    assert opt.step(closure).item() == 4.0
    assert w.item() == pytest.approx(2.0 - 0.1 * 0.5 * 4.0)


def test_state_dict_round_trip_continues_the_same_factors():
    def make():
        return RandomScaledSGD([torch.nn.Parameter(torch.ones(2))], lr=0.1, seed=11)

    reference = make()
    for _ in range(5):
        reference.draw_factor()
    saved = copy.deepcopy(reference.state_dict())
    expected = [reference.draw_factor() for _ in range(5)]

    restored = make()
    restored.load_state_dict(saved)
    assert [restored.draw_factor() for _ in range(5)] == expected


def test_state_dict_survives_torch_save_with_weights_only(tmp_path):
    opt = RandomScaledSGD([torch.nn.Parameter(torch.ones(2))], lr=0.1, seed=11)
    opt.draw_factor()
    torch.save(opt.state_dict(), tmp_path / "opt.pt")
    loaded = torch.load(tmp_path / "opt.pt", weights_only=True)
    fresh = RandomScaledSGD([torch.nn.Parameter(torch.ones(2))], lr=0.1, seed=0)
    fresh.load_state_dict(loaded)
    assert fresh.draw_factor() == opt.draw_factor()


def test_optimizer_registry_builds_torch_and_custom():
    params = list(MLP(4, 8, 1).parameters())
    assert isinstance(OPTIMIZERS.build("random_scaled_sgd", params, lr=0.1, seed=1), RandomScaledSGD)
    assert isinstance(OPTIMIZERS.build("adamw", params, lr=0.1, weight_decay=0.1, seed=1), torch.optim.AdamW)


# ---- the lr strategies: the tutorial's printed trajectory -----------------------------------------

TRAJECTORY = {  # update -> (lr used by the update, theta after it), as the tutorial prints (float32)
    1: (0.1, 0.9900000095367432),
    9: (0.1, 0.9100000858306885),
    10: (0.1, 0.9000000953674316),
    11: (0.05, 0.8950001001358032),
    20: (0.05, 0.8500001430511475),
    21: (0.025, 0.8475001454353333),
}

STRATEGIES = {
    "builtin": SchedulerConfig(strategy="builtin", name="StepLR", kwargs={"step_size": 10, "gamma": 0.5}),
    "lambda-expression": SchedulerConfig(strategy="lambda", expression="0.5 ** (step // 10)"),
    "lambda-named": SchedulerConfig(strategy="lambda", name="halving", kwargs={"every": 10, "gamma": 0.5}),
    "subclass": SchedulerConfig(strategy="subclass", name="halving", kwargs={"every": 10, "gamma": 0.5}),
    "manual": SchedulerConfig(strategy="manual", name="halving", kwargs={"every": 10, "gamma": 0.5}),
}


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_each_strategy_reproduces_the_tutorial_trajectory(strategy):
    theta = torch.nn.Parameter(torch.tensor([1.0]))
    optimizer = torch.optim.SGD([theta], lr=0.1)
    schedule = build_schedule(STRATEGIES[strategy], optimizer, updates_per_epoch=100)
    seen = {}
    for update in range(1, 101):
        lr = schedule.lrs()["0"]
        theta.grad = torch.tensor([0.1])
        optimizer.step()
        schedule.after_update(update)  # after optimizer.step(), as the tutorial insists
        optimizer.zero_grad()
        seen[update] = (lr, theta.item())
    for update, (lr, value) in TRAJECTORY.items():
        assert seen[update][0] == pytest.approx(lr, rel=1e-12)
        assert seen[update][1] == value, f"update {update}"
    # and after update 10 the lr "becomes 0.05", as the tutorial prints it
    assert seen[11][0] == 0.05
