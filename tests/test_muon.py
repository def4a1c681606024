"""`optimizer.name: muon`: torch's Muon on the hidden matrices and AdamW on the rest, as one optimizer.

Given the same parameters and gradients, its updates are torch's `Muon` and `AdamW` run by hand, step for
step, while an lr schedule moves both parts; its state survives a state_dict round trip; a real run logs
both parts' lr, trains the same on 1 and 2 processes, and a bad Muon selection is one `error:` line.
"""

from __future__ import annotations

import copy
import io
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from template.config import load_config
from template.errors import ConfigError
from template.models import GPT, MLP
from template.optim import build_optimizer
from template.optim.muon import MuonWithAdamW, hidden_matrices
from template.parts import build_parts
from template.schedules import build_schedule
from template.tools.lr_find import base_ratios

from conftest import read_summary, run_train, train_rows
from harness import TINY_MODEL, small_corpus, tiny_args, train, train_here

MUON = ("optimizer.name=muon", "optimizer.kwargs={muon_lr: 0.02, betas: [0.9, 0.95]}")
STEPS = 8
HIDDEN = [f"transformer.h.{i}.{layer}.weight" for i in range(2) for layer in
          ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")]


def gpt_config(*overrides: str):
    """configs/gpt.yaml with the tiny GPT and muon: AdamW groups `adamw` (the tied embedding) and `no_decay`."""
    model = [f"model.kwargs.{k}={v}" for k, v in TINY_MODEL.items()]
    return load_config("configs/gpt.yaml", [*model, *MUON, "optimizer.lr=0.003", *overrides])


def names(model: nn.Module, params: list[torch.Tensor]) -> list[str]:
    by_id = {id(p): n for n, p in model.named_parameters()}
    return [by_id[id(p)] for p in params]


def fake_gradients(model: nn.Module, step: int) -> None:
    generator = torch.Generator().manual_seed(step)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=generator)


# 1. Which parameters go where.

def test_default_split_puts_hidden_linear_weights_in_muon_and_the_rest_in_adamw() -> None:
    cfg = gpt_config()
    torch.manual_seed(0)
    model = GPT(**TINY_MODEL)
    optimizer = build_optimizer(model, cfg.optimizer, cfg.seed)
    assert isinstance(optimizer, MuonWithAdamW)
    assert [g["name"] for g in optimizer.param_groups] == ["adamw", "no_decay", "muon"]
    assert names(model, optimizer.param_groups[2]["params"]) == HIDDEN
    assert names(model, optimizer.param_groups[0]["params"]) == ["transformer.wte.weight"]  # the tied head
    assert all(p.ndim == 1 or n == "transformer.wpe.weight"
               for n, p in zip(names(model, optimizer.param_groups[1]["params"]), optimizer.param_groups[1]["params"],
                               strict=True))
    assert [(g["lr"], g["weight_decay"]) for g in optimizer.param_groups] == [(0.003, 0.1), (0.003, 0.0),
                                                                              (0.02, 0.01)]
    # the groups ARE the inner optimizers' groups: an lr written into one reaches the part that uses it
    assert all(a is b for a, b in zip(optimizer.param_groups,
                                      [*optimizer.adamw.param_groups, *optimizer.muon.param_groups], strict=True))
    # the MLP's input (8 -> 64) and output (64 -> 1) layers stay AdamW's: its one hidden matrix is Muon's
    mlp = MLP()
    assert names(mlp, hidden_matrices(mlp)) == ["net.2.weight"]


def test_name_globs_choose_the_muon_parameters_instead() -> None:
    cfg = gpt_config("optimizer.kwargs.muon_params=['*.mlp.*', '*.wpe.weight']")
    model = GPT(**TINY_MODEL)
    optimizer = build_optimizer(model, cfg.optimizer, cfg.seed)
    muon = names(model, optimizer.param_groups[-1]["params"])
    assert muon == ["transformer.wpe.weight", *[n for n in HIDDEN if ".mlp." in n]]  # 2-D only: biases stay


@pytest.mark.parametrize("overrides,key,fragment", [
    (("optimizer.kwargs.muon_params=['*.c_atn.weight']",), "optimizer.kwargs.muon_params", "'*.c_atn.weight' matches "
     "no 2-D parameter"),
    (("optimizer.kwargs.muon_params=['*.bias']",), "optimizer.kwargs.muon_params", "matches no 2-D parameter"),
    (("optimizer.groups=[{name: attn, params: ['*.attn.c_attn.weight'], lr: 0.001}]",), "optimizer.groups",
     "group 'attn' holds only parameters that Muon updates"),
    (("optimizer.groups=[{name: muon, params: ['*.bias']}]",), "optimizer.groups", "'muon' names a part"),
    (("optimizer.kwargs.muon_lr=0",), "optimizer.kwargs.muon_lr", "must be > 0"),
    (("optimizer.kwargs.momentum=1.0",), "optimizer.kwargs.momentum", "must be in [0, 1)"),
    (("optimizer.kwargs.ns_steps=100",), "optimizer.kwargs.ns_steps", "must be in [1, 99]"),
    (("optimizer.kwargs.nesterv=false",), "optimizer.kwargs", "unexpected keyword argument 'nesterv'"),
])
def test_bad_muon_settings_are_config_errors_naming_the_key(overrides, key, fragment) -> None:
    cfg = gpt_config(*overrides)
    with pytest.raises(ConfigError) as info:
        build_optimizer(GPT(**TINY_MODEL), cfg.optimizer, cfg.seed)
    assert info.value.key == key and fragment in info.value.problem, str(info.value)


def test_a_model_without_hidden_matrices_is_a_config_error() -> None:
    cfg = load_config(None, ["optimizer.name=muon", "model.kwargs.depth=1"])  # the default MLP, one layer less
    with pytest.raises(ConfigError) as info:
        build_parts(cfg)
    assert info.value.key == "optimizer.kwargs.muon_params"
    assert "no hidden nn.Linear weight" in info.value.problem and "net.0.weight, net.2.weight" in info.value.problem


# 2. The update is torch's Muon and AdamW, run by hand on copies of the same parameters.

def by_hand(model: nn.Module, cfg) -> tuple[torch.optim.Muon, torch.optim.AdamW]:
    """The reference: torch's two optimizers, built directly on the split that configs/gpt.yaml + muon asks for."""
    params = dict(model.named_parameters())
    no_decay = [n for n in params if n.endswith(".bias") or "ln_" in n or n == "transformer.wpe.weight"]
    muon = torch.optim.Muon([params[n] for n in HIDDEN], lr=0.02, weight_decay=0.01, momentum=0.95, nesterov=True,
                            ns_steps=5)
    adamw = torch.optim.AdamW([{"params": [params["transformer.wte.weight"]], "weight_decay": 0.1},
                               {"params": [params[n] for n in no_decay], "weight_decay": 0.0}],
                              lr=cfg.optimizer.lr, betas=(0.9, 0.95), eps=1e-10)
    return muon, adamw


def test_updates_equal_torch_muon_and_adamw_by_hand_under_an_lr_schedule() -> None:
    """StepLR halves every group's lr every 2 updates through the composite; by hand, both optimizers' lrs are
    halved the same way. Every parameter is bit-identical after every update."""
    cfg = gpt_config("scheduler.strategy=builtin", "scheduler.name=StepLR", "scheduler.kwargs={step_size: 2, "
                     "gamma: 0.5}")
    torch.manual_seed(0)
    model = GPT(**TINY_MODEL)
    reference, initial = copy.deepcopy(model), copy.deepcopy(model)
    optimizer = build_optimizer(model, cfg.optimizer, cfg.seed)
    schedule = build_schedule(cfg.scheduler, optimizer, updates_per_epoch=100)
    muon, adamw = by_hand(reference, cfg)
    logged = []
    for step in range(1, 7):
        logged.append(schedule.lrs())
        for m in (model, reference):
            fake_gradients(m, step)
        optimizer.step()
        schedule.after_update(step)
        muon.step()
        adamw.step()
        if step % 2 == 0:
            for group in (*muon.param_groups, *adamw.param_groups):
                group["lr"] *= 0.5
        for (name, a), b in zip(model.named_parameters(), reference.parameters(), strict=True):
            assert torch.equal(a, b), f"update {step}: {name} differs"
    assert logged[0] == {"adamw": 0.003, "no_decay": 0.003, "muon": 0.02}
    assert logged[5] == {"adamw": 0.003 / 4, "no_decay": 0.003 / 4, "muon": 0.02 / 4}
    assert all(not torch.equal(a, b) for a, b in zip(model.parameters(), initial.parameters(), strict=True))


def test_state_dict_round_trip_continues_the_same_updates() -> None:
    cfg = gpt_config()
    torch.manual_seed(0)
    model = GPT(**TINY_MODEL)
    optimizer = build_optimizer(model, cfg.optimizer, cfg.seed)
    for step in range(1, 4):
        fake_gradients(model, step)
        optimizer.step()
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    state = saved["optimizer"]["state"]
    assert sum("momentum_buffer" in s for s in state.values()) == len(HIDDEN)
    assert sum("exp_avg" in s for s in state.values()) == len(state) - len(HIDDEN)

    restored = GPT(**TINY_MODEL)
    restored.load_state_dict(saved["model"])
    again = build_optimizer(restored, cfg.optimizer, cfg.seed)
    again.load_state_dict(saved["optimizer"])
    # torch's load replaced the groups and the state: the parts must use the loaded ones
    assert again.muon.state is again.state and again.adamw.state is again.state
    assert all(a is b for a, b in zip(again.param_groups, [*again.adamw.param_groups, *again.muon.param_groups],
                                      strict=True))
    for step in range(4, 7):
        for m in (model, restored):
            fake_gradients(m, step)
        optimizer.step()
        again.step()
    for (name, a), b in zip(model.named_parameters(), restored.parameters(), strict=True):
        assert torch.equal(a, b), name


def test_lr_range_test_keeps_the_muon_part_at_its_own_ratio() -> None:
    cfg = gpt_config("data.kwargs.dir=data/stdlib_bytes")
    parts = build_parts(cfg)
    assert base_ratios(parts.optimizer, cfg.optimizer) == pytest.approx([1.0, 1.0, 0.02 / 0.003])


# 3. Real runs: both lrs logged, 1 == 2 processes, a bad selection from the command line.

@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return small_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def one_process(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("muon") / "one"
    train_here((*tiny_args(corpus, STEPS), *MUON, "train.checkpoint_every=0"), out)
    return out


def lr_columns(out: Path) -> dict[str, list[float]]:
    rows = train_rows(out)
    assert sorted(rows) == list(range(1, STEPS + 1))
    return {key: [rows[s][key] for s in sorted(rows)] for key in ("lr", "lr/adamw", "lr/no_decay", "lr/muon")}


@pytest.mark.e2e
def test_a_run_logs_both_parts_lr_under_the_schedule(one_process: Path) -> None:
    columns = lr_columns(one_process)
    assert columns["lr"] == columns["lr/adamw"] == columns["lr/no_decay"]  # group 0 is AdamW's default group
    warmup = [0.02 * (s + 1) / 4 for s in range(4)]  # tiny_args: warmup over 4 updates, as optimizer.lr
    assert columns["lr/muon"][:4] == pytest.approx(warmup)
    assert columns["lr/muon"] == pytest.approx([lr / 0.002 * 0.02 for lr in columns["lr"]])  # gpt.yaml lr 0.002
    assert columns["lr/muon"][-1] < columns["lr/muon"][4]  # the cosine decays it


def spread(a: Path, b: Path, initial: dict[str, torch.Tensor]) -> dict[str, float]:
    """Per tensor, how far apart two runs' final weights are, as a fraction of how far the training moved it."""
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert set(wa) == set(wb) == set(initial)
    return {n: ((wa[n] - wb[n]).norm() / (wa[n] - initial[n]).norm()).item() for n in wa}


@pytest.mark.e2e
@pytest.mark.ddp
def test_two_processes_train_as_one(one_process: Path, corpus: Path, tmp_path: Path) -> None:
    """The lr column is exact and the loss agrees to float rounding. The weights agree as closely as the same
    1-process run with its gradient summed in another order (grad_accum_steps=2), and no closer: torch's Muon
    orthogonalises in bfloat16 (on every device), and its Newton-Schulz iterations amplify the float32 rounding
    of a gradient sum (measured: both ~4% of the distance the hidden matrices moved in 8 updates, 1e-7 of it
    with adamw)."""
    args = (*tiny_args(corpus, STEPS), *MUON, "train.checkpoint_every=0")
    two, reordered = tmp_path / "two", tmp_path / "accum"
    train(args, two, nproc=2)
    train_here((*args, "train.grad_accum_steps=2"), reordered)
    assert lr_columns(two) == lr_columns(one_process)
    losses = [[train_rows(out)[s]["loss"] for s in range(1, STEPS + 1)] for out in (one_process, two)]
    torch.testing.assert_close(torch.tensor(losses[1]), torch.tensor(losses[0]), rtol=1e-5, atol=0)
    summary = read_summary(two)
    assert summary["world_size"] == 2 and set(summary["replica_digests"]) == {summary["param_digest"]}
    cfg = gpt_config(f"data.kwargs.dir={corpus}")
    initial = build_parts(cfg).model.state_dict()  # the weights every run starts from (seeded)
    apart, noise = spread(one_process, two, initial), spread(one_process, reordered, initial)
    assert max(noise.values()) < 0.1
    assert max(apart.values()) < min(0.1, 3 * max(noise.values())), (apart, noise)


@pytest.mark.e2e
def test_no_hidden_matrix_exits_2_with_one_line(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = run_train("optimizer.name=muon", "model.kwargs.depth=1", f"output_dir={out}", check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: optimizer.kwargs.muon_params: unset, and the model has "
                                                   "no hidden nn.Linear weight"), proc.stderr
    assert not out.exists()


def test_shipped_gpt_muon_config_builds_the_split() -> None:
    cfg = load_config("configs/gpt_muon.yaml")
    model = GPT(**cfg.model.kwargs)
    optimizer = build_optimizer(model, cfg.optimizer, cfg.seed)
    assert [g["name"] for g in optimizer.param_groups] == ["adamw", "no_decay", "muon"]
    assert len(optimizer.param_groups[-1]["params"]) == 4 * cfg.model.kwargs["n_layer"]
