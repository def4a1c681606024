"""The missing runs (issue #25, item 3): end-to-end runs of claims that only unit tests covered before.

1. Kill -9 and resume with gradient accumulation AND the samples lr clock (2 lr steps per update), on 1 and
   on 2 processes, the kill before an epoch boundary that the resumed run crosses: bit-identical to one
   uninterrupted run.
2. configs/default.yaml on 1 and on 2 processes over 3.5 epochs: weights within float tolerance, the `lr`,
   `samples` and `epoch` columns exactly equal.
3. The GPT (compile off) on 1 and on 2 processes: weights within float tolerance, the lr column exact.
4. A batch-size change on resume (samples clock) with a dataset that records what it serves
   (tests/plugins/recording_data.py): the resumed run trains on the uninterrupted run's samples, in its order.
5. The named schedules through the trainer, with two param groups of their own lrs: every update's
   `lr/<group>` is what `transformers.get_scheduler` gives with the same arguments after s - 1 steps.

Runs are shared between assertions through module-scoped fixtures; 1-process runs that end on their own run
in this process (`train_here`), killed and 2-process ones are real launches.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import read_summary, train_rows
from harness import Launched, assert_same_training, small_corpus, tiny_args, train, train_here, wait_for_step
from plugins.recording_data import served

pytestmark = pytest.mark.e2e
QUIET = ("train.progress=false", "train.plots=false", "tracking.wandb=false")


def assert_close_weights(a: Path, b: Path, rtol: float = 1e-5, atol: float = 1e-6) -> None:
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert sorted(wa) == sorted(wb)
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], rtol=rtol, atol=atol, msg=lambda m, n=name: f"{n}: {m}")


def column(out: Path, key: str) -> list:
    rows = train_rows(out)
    assert sorted(rows) == list(range(1, len(rows) + 1)), "train.log_every=1: one row per update"
    return [rows[s][key] for s in sorted(rows)]


def assert_one_replica(out: Path, world: int) -> None:
    summary = read_summary(out)
    assert summary["world_size"] == world and set(summary["replica_digests"]) == {summary["param_digest"]}


# ------------------------------------------------------------------------------------------------
# 1. kill and resume: grad_accum_steps=2 with the samples clock, 1 and 2 processes, across epochs
# ------------------------------------------------------------------------------------------------

EPOCH = 10  # updates per epoch: 160 samples, global batch 16
ACCUM = ("--config", "configs/default.yaml", "imports=[plugins.pace]", *QUIET, "data.kwargs.size=160",
         "train.batch_size=16", "train.grad_accum_steps=2", "scheduler.clock=samples",
         "scheduler.reference_batch=8",  # an lr step per 8 samples: 2 per update
         "train.max_steps=48",  # counted in reference batches: 24 updates = 2.4 epochs
         "train.log_every=1", "train.checkpoint_every=4", "train.eval_every=0")
ACCUM_UPDATES = 24


@pytest.fixture(scope="module")
def accum_reference(tmp_path_factory: pytest.TempPathFactory):
    """nproc -> the uninterrupted run's output_dir, made on first use."""
    root, made = tmp_path_factory.mktemp("accum"), {}

    def get(nproc: int) -> Path:
        if nproc not in made:
            out = root / f"straight{nproc}"
            if nproc == 1:
                train_here(ACCUM, out)
            else:
                train(ACCUM, out, nproc=nproc, timeout=120)
            made[nproc] = out
        return made[nproc]

    return get


@pytest.mark.parametrize("nproc", [1, pytest.param(2, marks=pytest.mark.ddp)])
def test_kill_and_resume_with_accumulation_and_samples_clock_across_epochs(accum_reference, tmp_path, nproc):
    reference = accum_reference(nproc)
    rows = train_rows(reference)
    assert max(rows) == ACCUM_UPDATES and rows[ACCUM_UPDATES]["samples"] == ACCUM_UPDATES * 16
    assert rows[ACCUM_UPDATES]["epoch"] > 2  # two epoch boundaries inside the run
    out = tmp_path / "killed"
    run = Launched(ACCUM, out, nproc, FT_PACE_S="0.1")
    reached = wait_for_step(run, 6, timeout=120)  # the checkpoint of update 4 is written
    assert run.alive(), "the run ended before it could be killed"
    run.kill_group()
    run.finish()
    assert reached < EPOCH
    stdout, _ = train_here(ACCUM, out) if nproc == 1 else train(ACCUM, out, nproc=nproc, timeout=120)
    match = re.search(r"resumed from \S+ at update (\d+)", stdout)
    assert match, stdout
    assert 4 <= int(match.group(1)) < EPOCH  # resumed inside epoch 0: the resumed part crosses two boundaries
    assert_same_training(reference, out)
    assert_one_replica(out, nproc)


# ------------------------------------------------------------------------------------------------
# 2. configs/default.yaml on 1 and on 2 processes, over several epochs
# ------------------------------------------------------------------------------------------------

DEFAULT = ("--config", "configs/default.yaml", *QUIET, "data.kwargs.size=384",  # 6 updates of 64 per epoch
           "train.max_steps=24", "train.log_every=1", "train.checkpoint_every=0")  # 20 of them warm-up


@pytest.mark.ddp
def test_default_config_on_1_and_2_processes_over_several_epochs(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    train_here(DEFAULT, one)
    train(DEFAULT, two, nproc=2, timeout=120)
    assert column(one, "epoch")[-1] == 4  # 4 epochs: 3 boundaries crossed
    for key in ("lr", "samples", "epoch"):
        assert column(two, key) == column(one, key), key
    assert len(set(column(one, "lr"))) > 20  # warm-up then cosine: the lr moved at (nearly) every update
    torch.testing.assert_close(torch.tensor(column(two, "loss")), torch.tensor(column(one, "loss")),
                               rtol=1e-5, atol=1e-6)
    assert_close_weights(one, two)
    assert_one_replica(two, 2)


# ------------------------------------------------------------------------------------------------
# 3. the GPT, compile off, on 1 and on 2 processes
# ------------------------------------------------------------------------------------------------


@pytest.mark.ddp
def test_gpt_on_1_and_2_processes(tmp_path):
    corpus = small_corpus(tmp_path / "corpus")
    args = tiny_args(corpus, 12, "train.compile=false", "train.checkpoint_every=0", "train.eval_every=6")
    one, two = tmp_path / "one", tmp_path / "two"
    train_here(args, one)
    train(args, two, nproc=2, timeout=120)
    assert column(two, "lr") == column(one, "lr")
    assert len(set(column(one, "lr"))) == 11  # 4 warm-up updates to the peak, held at update 5, the cosine
    torch.testing.assert_close(torch.tensor(column(two, "loss")), torch.tensor(column(one, "loss")),
                               rtol=1e-4, atol=1e-5)
    assert_close_weights(one, two, rtol=1e-4, atol=1e-5)
    assert_one_replica(two, 2)
    assert read_summary(two)["compiled"] is False


# ------------------------------------------------------------------------------------------------
# 4. another batch size on resume: the samples served
# ------------------------------------------------------------------------------------------------

N, B = 96, 8  # 12 updates of 8 per epoch; 6 of 16; 24 of 4
TOTAL = 24  # reference batches of 8: 2 epochs


def recording_args(log: Path, batch: int, max_steps: int) -> tuple[str, ...]:
    return ("--config", "configs/default.yaml", *QUIET, "imports=[plugins.recording_data]", "data.name=recording",
            f"data.kwargs={{log: {log}, size: {N}}}", f"train.batch_size={batch}", "scheduler.clock=samples",
            "scheduler.strategy=lambda", "scheduler.name=constant", "scheduler.kwargs={}",
            f"train.max_steps={max_steps}", "train.log_every=1", "train.eval_every=0", "train.checkpoint_every=100")


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory):
    """(stop, new batch) -> (micro-batches served, output_dir) of a batch-8 run stopped after `stop` updates and
    resumed at the new batch up to TOTAL batches of 8; (0, 8) is the uninterrupted batch-8 run."""
    root, made = tmp_path_factory.mktemp("recorded"), {}

    def get(stop: int, batch: int) -> tuple[list[list[int]], Path]:
        if (stop, batch) not in made:
            out, log = root / f"run_{stop}_{batch}", root / f"served_{stop}_{batch}.txt"
            if stop:
                train_here(recording_args(log, B, stop), out)  # its last update is checkpointed
                stdout, _ = train_here(recording_args(log, batch, TOTAL), out)
                assert f"at update {stop}" in stdout
            else:
                train_here(recording_args(log, B, TOTAL), out)
            made[stop, batch] = served(log), out
        return made[stop, batch]

    return get


def epochs(order: list[int]) -> list[list[int]]:
    return [order[i:i + N] for i in range(0, len(order), N)]


@pytest.mark.parametrize("stop,batch", [(4, 16), (5, 4), (4, 4)])
def test_a_new_batch_on_resume_serves_the_uninterrupted_order(recorded, stop, batch):
    straight, _ = recorded(0, B)
    assert [len(b) for b in straight] == [B] * TOTAL
    order = [i for b in straight for i in b]
    assert [sorted(e) for e in epochs(order)] == [list(range(N))] * 2  # each epoch: every sample once
    assert epochs(order)[0] != epochs(order)[1]  # reshuffled
    batches, out = recorded(stop, batch)
    assert [len(b) for b in batches] == [B] * stop + [batch] * ((TOTAL - stop) * B // batch)
    assert [i for b in batches for i in b] == order  # the same samples in the same order: none twice, none skipped
    assert column(out, "samples") == [B * s for s in range(1, stop + 1)] + list(range(stop * B + batch, TOTAL * B + 1,
                                                                                     batch))


def test_a_new_batch_that_overhangs_the_epoch_end_drops_only_that_tail(recorded):
    """Stopped at sample 40 of 96, resumed at batch 16: 3 batches fit (up to 88), the last 8 samples of the
    epoch are no whole batch and are dropped, as every epoch's incomplete tail is; nothing is served twice."""
    straight, _ = recorded(0, B)
    order = [i for b in straight for i in b]
    batches, _ = recorded(5, 16)
    got = [i for b in batches for i in b]
    assert [len(b) for b in batches] == [B] * 5 + [16] * 10  # (192 - 40) / 16 -> 10 updates
    assert got[:88] == order[:88]  # epoch 0 up to its tail
    assert got[88:88 + N] == order[N:2 * N]  # epoch 1 whole, from its start
    assert len(set(got[:88])) == 88 and len(set(got[88:88 + N])) == N


def test_the_epoch_column_follows_the_samples_after_a_batch_change(recorded):
    """Update 5 after 4 updates of 8 and one of 16 (48 of 96 samples) is at epoch 0.5, whatever the batch."""
    _, straight = recorded(0, B)
    epoch_at = {row["samples"]: row["epoch"] for row in train_rows(straight).values()}
    _, out = recorded(4, 16)
    assert {row["samples"]: row["epoch"] for row in train_rows(out).values()} == {
        samples: epoch_at[samples] for samples in column(out, "samples")}


# ------------------------------------------------------------------------------------------------
# 5. named schedules through the trainer, two param groups, against transformers.get_scheduler
# ------------------------------------------------------------------------------------------------

STEPS = 14
LR, HEAD_LR = 0.2, 0.05  # optimizer.lr (group 'default') and group 'head' (the MLP's output layer)
NAMED = {
    "linear": {"num_warmup_steps": 3, "num_training_steps": 12},  # 2 updates past the end: lr 0
    "cosine": {"num_warmup_steps": 3, "num_training_steps": STEPS, "num_cycles": 0.5, "min_lr_ratio": 0.1},
    "cosine_with_restarts": {"num_warmup_steps": 2, "num_training_steps": STEPS, "num_cycles": 3},
    "polynomial": {"num_warmup_steps": 2, "num_training_steps": 12, "lr_end": 0.01, "power": 2.0},
    "constant": {},
    "constant_with_warmup": {"num_warmup_steps": 4},
    "inverse_sqrt": {"num_warmup_steps": 3, "timescale": 5},
    "warmup_stable_decay": {"num_warmup_steps": 3, "num_training_steps": STEPS, "decay_ratio": 0.3,
                            "decay_type": "1-sqrt", "min_lr_ratio": 0.05},
    "cosine_with_min_lr": {"num_warmup_steps": 2, "num_training_steps": STEPS, "min_lr": 0.01},
    "cosine_warmup_with_min_lr": {"num_warmup_steps": 3, "num_training_steps": STEPS, "min_lr_rate": 0.1},
}
# lr_end and min_lr are absolute lrs: the template takes every group from its own base lr there (a
# documented choice, tests/test_named_schedules.py::test_absolute_end_lrs_are_reached_by_every_group), where
# transformers makes them ratios of optimizer.defaults["lr"]; group 'head' of these is HF's curve from 0.05.
ABSOLUTE_ENDS = ("polynomial", "cosine_with_min_lr")


def hf_lrs(name: str, kwargs: dict, lrs: tuple[float, ...]) -> list[list[float]]:
    """Per update 1..STEPS, each group's lr from `transformers.get_scheduler` after s - 1 steps."""
    get_scheduler = pytest.importorskip("transformers").get_scheduler
    kw = dict(kwargs)
    if name == "cosine" and "min_lr_ratio" in kw:  # the template's floor is HF's cosine_with_min_lr
        name, kw["min_lr_rate"] = "cosine_with_min_lr", kw.pop("min_lr_ratio")
    if "decay_ratio" in kw:
        kw["num_decay_steps"] = round(kw.pop("decay_ratio") * kw["num_training_steps"])
    warmup, total = kw.pop("num_warmup_steps", 0), kw.pop("num_training_steps", None)
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in lrs]
    optimizer = torch.optim.SGD(groups, lr=lrs[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scheduler = get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total,
                                  scheduler_specific_kwargs=kw)
        out = []
        for _ in range(STEPS):
            out.append([group["lr"] for group in optimizer.param_groups])
            optimizer.step()
            scheduler.step()
    return out


def yaml_map(kwargs: dict) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in kwargs.items()) + "}"


@pytest.mark.parametrize("strategy", ["subclass", "lambda"])
@pytest.mark.parametrize("name", list(NAMED))
def test_named_schedule_in_the_trainer_equals_transformers_for_each_group(tmp_path, name, strategy):
    kwargs = NAMED[name]
    out = tmp_path / "run"
    train_here(("--config", "configs/default.yaml", *QUIET, "data.kwargs.size=256", f"train.max_steps={STEPS}",
                "train.log_every=1", "train.checkpoint_every=0", "train.eval_every=0", f"optimizer.lr={LR}",
                f"optimizer.groups=[{{name: head, params: ['net.4.*'], lr: {HEAD_LR}}}]",
                f"scheduler.strategy={strategy}", f"scheduler.name={name}", f"scheduler.kwargs={yaml_map(kwargs)}"),
               out)
    want = hf_lrs(name, kwargs, (LR, HEAD_LR))
    head = [row[0] for row in hf_lrs(name, kwargs, (HEAD_LR,))] if name in ABSOLUTE_ENDS else [r[1] for r in want]
    assert column(out, "lr/default") == [row[0] for row in want]
    assert column(out, "lr/head") == head
    assert column(out, "lr") == column(out, "lr/default")
    assert len(set(head)) > 1 or name == "constant"  # not vacuous: the schedule moved
