"""`train.micro_batch_size`: `auto` finds the largest per-process micro-batch that fits and trains as the
hand-set accumulation does; an out-of-memory error mid-run halves it and redoes the update; the ranks agree.

Memory runs out on demand: `plugins.oom`'s model raises `torch.OutOfMemoryError` for a forward of more rows
than its `fits` (from update `from_update` on: `then_fits`), on the ranks listed in `ranks`. The runs are the
default MLP on a few hundred samples, a global batch of 16 (32 for the 2-process runs), 6 updates, one row
each; each is made once (module-scoped) and shared by the assertions.
"""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from template.runtime.batch_size import halving

from conftest import ROOT, launch_command, read_summary, run_here, train_rows
from harness import WALL_CLOCK_KEYS, Launched, plugin_env

STEPS = 6
BASE = ("imports=[plugins.oom]", "model.name=oom_mlp", "hooks=[{name: oom_clock}]", "data.kwargs.size=512",
        "data.kwargs.eval_size=64", "train.batch_size=16", f"train.max_steps={STEPS}",
        "scheduler.kwargs.warmup_steps=2", f"scheduler.kwargs.total_steps={STEPS}", "train.log_every=1",
        "train.eval_every=0", "train.checkpoint_every=0", "tracking.wandb=false", "train.progress=false",
        "train.plots=false")
MID_RUN = ("train.micro_batch_size=auto", "model.kwargs.fits=8", "model.kwargs.from_update=3",
           "model.kwargs.then_fits=4")  # 8 of 16 fit (accumulation 2); from update 3 on, 4 (accumulation 4)


class Runs:
    """Memoized in-process runs by name."""

    def __init__(self, root: Path) -> None:
        self.root, self.done = root, dict[str, Path]()
        self.stdout: dict[str, str] = {}

    def __call__(self, name: str, *args: str) -> Path:
        if name not in self.done:
            out = self.root / name
            proc = run_here(*BASE, *args, f"output_dir={out}")
            self.done[name], self.stdout[name] = out, proc.stdout
        return self.done[name]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    return Runs(tmp_path_factory.mktemp("micro"))


def weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "model.safetensors")


def assert_close_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], rtol=1e-5, atol=1e-6, msg=name)


def lrs(out: Path) -> list[float]:
    return [row["lr"] for _, row in sorted(train_rows(out).items())]


def test_halving_walks_the_divisors() -> None:
    assert halving(16, 16) == [16, 8, 4, 2, 1]
    assert halving(24, 24) == [24, 12, 6, 3, 1]
    assert halving(20, 20) == [20, 10, 5, 2, 1]
    assert halving(12, 4) == [4, 2, 1]


def test_auto_finds_the_largest_fitting_micro_batch_and_trains_as_hand_set(runs: Runs) -> None:
    auto = runs("auto", "train.micro_batch_size=auto", "model.kwargs.fits=4")
    hand = runs("accum4", "train.grad_accum_steps=4")
    assert "micro-batch: 4 per process x 4 accumulation steps" in runs.stdout["auto"]
    assert "16, 8 ran out of memory" in runs.stdout["auto"]
    rows = train_rows(auto)
    assert rows[1]["micro_batch_size"] == 4 and all("micro_batch_size" not in rows[s] for s in range(2, STEPS + 1))
    assert lrs(auto) == lrs(hand)
    # the same micro-batches as the hand-set accumulation: the same bits (the trials left no trace)
    assert read_summary(auto)["param_digest"] == read_summary(hand)["param_digest"]
    assert [r["loss"] for r in rows.values()] == [r["loss"] for r in train_rows(hand).values()]
    summary = read_summary(auto)
    assert (summary["micro_batch_size"], summary["grad_accum_steps"], summary["micro_batch_halved_at"]) == (4, 4, [])
    assert "micro_batch_size" not in read_summary(hand)  # null: nothing new in a run that does not use it


def test_a_number_sets_the_micro_batch(runs: Runs) -> None:
    hand = runs("micro4", "train.micro_batch_size=4")
    accum4 = runs("accum4", "train.grad_accum_steps=4")
    assert read_summary(hand)["param_digest"] == read_summary(accum4)["param_digest"]
    assert read_summary(hand)["grad_accum_steps"] == 4


def test_out_of_memory_mid_run_halves_and_redoes_the_update(runs: Runs) -> None:
    mid = runs("mid", *MID_RUN)
    accum2, accum4 = runs("accum2", "train.grad_accum_steps=2"), runs("accum4", "train.grad_accum_steps=4")
    out = runs.stdout["mid"]
    assert "micro-batch: 8 per process x 2 accumulation steps" in out
    notes = [line for line in out.splitlines() if "ran out of memory with micro-batch" in line]
    assert len(notes) == 1 and notes[0].startswith("note: update 3 ") and "micro-batch 4 x 4 accumulation" in notes[0]
    rows = train_rows(mid)
    assert [rows[s].get("micro_batch_size") for s in range(1, STEPS + 1)] == [8, None, 4, None, None, None]
    assert (read_summary(mid)["micro_batch_size"], read_summary(mid)["micro_batch_halved_at"]) == (4, [3])
    assert lrs(mid) == lrs(accum2) == lrs(accum4)
    # updates 1-2 are accumulation 2's bit for bit; the rest differ from either only in the grouping of the sum
    for step in (1, 2):
        assert rows[step]["loss"] == train_rows(accum2)[step]["loss"]
    for step in range(3, STEPS + 1):
        assert math.isclose(rows[step]["loss"], train_rows(accum4)[step]["loss"], rel_tol=1e-5)
    assert_close_weights(mid, accum4)
    assert rows[3]["samples"] == 48  # the redone update counted once


def test_a_resume_keeps_the_micro_batch_it_had(runs: Runs, tmp_path: Path) -> None:
    mid = runs("mid", *MID_RUN)
    out = tmp_path / "resumed"
    run_here(*BASE, *MID_RUN, "train.max_steps=4", "train.checkpoint_every=4", f"output_dir={out}")
    # the model's memory is whole again after the restart (its update count starts over): no search, no halving
    proc = run_here(*BASE, *MID_RUN, "train.checkpoint_every=4", f"output_dir={out}")
    assert "micro-batch: 4 per process x 4 accumulation steps (train.micro_batch_size: auto, the checkpoint's)" \
        in proc.stdout
    assert "ran out of memory" not in proc.stdout
    assert (read_summary(out)["micro_batch_size"], read_summary(out)["micro_batch_halved_at"]) == (4, [3])
    rows, reference = train_rows(out), train_rows(mid)
    assert rows[5]["micro_batch_size"] == 4  # the resumed process's first row says what it uses
    for step in (5, 6):
        same = WALL_CLOCK_KEYS | {"micro_batch_size"}
        assert {k: v for k, v in rows[step].items() if k not in same} == \
            {k: v for k, v in reference[step].items() if k not in same}
    assert read_summary(out)["param_digest"] == read_summary(mid)["param_digest"]


# ------------------------------------------------------------------------------------------------
# Two processes: one rank's memory is short, both agree
# ------------------------------------------------------------------------------------------------

TWO = ("train.batch_size=32", "train.micro_batch_size=auto", "model.kwargs.ranks=[1]",
       "distributed.sync_check_every=1")
CASES = {
    # rank 1 fits 8 of its 16 (rank 0 all 16): 8 on both; from update 3 rank 1 fits 4: its first micro-batch fails,
    # the ranks agree before the last micro-batch's forward
    "first": ("model.kwargs.fits=8", "model.kwargs.from_update=3", "model.kwargs.then_fits=4"),
    # both fit all 16 (accumulation 1); from update 3 rank 1 fits 8: its only forward, the synchronizing one,
    # fails; the ranks agree before its backward, and rank 0's DDP, which ran that forward, is reset
    "last": ("model.kwargs.from_update=3", "model.kwargs.then_fits=8"),
}


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    root = tmp_path_factory.mktemp("two")
    launched = {name: Launched((*BASE, *TWO, *args), root / name, nproc=2) for name, args in CASES.items()}
    results = {}
    for name, run in launched.items():
        rc, stdout, stderr = run.finish(timeout=240)
        assert rc == 0, stderr[-4000:]
        results[name] = (run.out, stdout)
    return results


@pytest.mark.parametrize("case", list(CASES))
def test_two_processes_agree_and_train_as_one(runs: Runs, two: dict[str, tuple[Path, str]], case: str) -> None:
    out, stdout = two[case]
    reference = runs("one32", "train.batch_size=32", "train.grad_accum_steps=4")
    summary = read_summary(out)
    assert summary["world_size"] == 2 and len(set(summary["replica_digests"])) == 1
    first, then = (8, 4) if case == "first" else (16, 8)
    assert f"micro-batch: {first} per process x {32 // 2 // first} accumulation steps" in stdout
    assert f"note: update 3 ran out of memory with micro-batch {first} on rank 1; redoing it with micro-batch " \
           f"{then}" in stdout
    rows = train_rows(out)
    assert rows[1]["micro_batch_size"] == first and rows[3]["micro_batch_size"] == then
    assert (summary["micro_batch_size"], summary["micro_batch_halved_at"]) == (then, [3])
    assert lrs(out) == lrs(reference)
    assert_close_weights(out, reference)


# ------------------------------------------------------------------------------------------------
# Bad input: exit 2, one line naming the key (real processes)
# ------------------------------------------------------------------------------------------------

BAD = {
    "nothing fits": (("train.micro_batch_size=auto", "model.kwargs.fits=0"),
                     "auto: no micro-batch fits: the smallest, 1 sample(s) per process, ran out of memory"),
    "not an integer": (("train.micro_batch_size=2.5",), "incompatible"),
    "not a divisor": (("train.micro_batch_size=5",), "5 does not divide the per-process batch 16"),
    "another word": (("train.micro_batch_size=max",), "must be a positive integer or auto"),
    "inconsistent": (("train.micro_batch_size=2", "train.grad_accum_steps=4"),
                     "2 per process makes 8 accumulation steps on 1 process, but train.grad_accum_steps is 4"),
}
SUBPROCESS = ("nothing fits", "not an integer")  # real interpreters, side by side; the rest in this one


def test_bad_micro_batch_exits_2_with_one_line(tmp_path: Path) -> None:
    outs = {name: tmp_path / name.replace(" ", "_") for name in BAD}
    started = {name: subprocess.Popen([*launch_command("python", 1), *BASE, *BAD[name][0], f"output_dir={outs[name]}"],
                                      env=plugin_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True) for name in SUBPROCESS}
    results = {name: run_here(*BASE, *BAD[name][0], f"output_dir={outs[name]}", check=False)
               for name in BAD if name not in SUBPROCESS}
    for name, proc in started.items():
        _, stderr = proc.communicate(timeout=180)
        results[name] = subprocess.CompletedProcess(proc.args, proc.returncode, "", stderr)
    for name, result in results.items():
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode == 2, (name, result.stderr[-3000:])
        assert len(lines) == 1 and lines[0].startswith("error: train.micro_batch_size: "), (name, result.stderr)
        assert BAD[name][1] in lines[0], (name, lines[0])
        assert not (outs[name] / "config.yaml").exists() and not (outs[name] / "metrics.jsonl").exists()


# ------------------------------------------------------------------------------------------------
# A real out-of-memory error, on a GPU (bash scripts/gpu_check.sh)
# ------------------------------------------------------------------------------------------------

# 50M parameters (0.4 GiB with their gradients) and ~128 kB of activations per sample: the whole batch of
# 8192 (~1 GiB of activations) cannot fit under a cap of 0.8 GiB, a micro-batch of 1024 can
WIDE = ("--config", "configs/default.yaml", "model.kwargs={in_features: 8, hidden: 4096, depth: 4}",
        "data.kwargs={size: 16384, eval_size: 64, in_features: 8}", "train.batch_size=8192", "train.max_steps=3",
        "scheduler.kwargs.warmup_steps=1", "train.log_every=1", "train.eval_every=0", "train.checkpoint_every=0",
        "tracking.wandb=false", "train.progress=false", "train.plots=false", "imports=[plugins.memory_cap]")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none here)")
def test_auto_on_a_gpu_finds_a_micro_batch_under_a_memory_cap(tmp_path: Path) -> None:
    env = plugin_env(MEMORY_CAP_GB="0.8")
    auto = subprocess.run([*launch_command("python", 1), *WIDE, "train.micro_batch_size=auto",
                           f"output_dir={tmp_path / 'auto'}"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert auto.returncode == 0, auto.stderr[-4000:]
    size = read_summary(tmp_path / "auto")["micro_batch_size"]
    assert 1 <= size < 8192 and "8192" in auto.stdout and "ran out of memory" in auto.stdout, auto.stdout
    hand = subprocess.run([*launch_command("python", 1), *WIDE, f"train.micro_batch_size={size}",
                           f"output_dir={tmp_path / 'hand'}"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert hand.returncode == 0, hand.stderr[-4000:]
    assert lrs(tmp_path / "auto") == lrs(tmp_path / "hand")
    assert_close_weights(tmp_path / "auto", tmp_path / "hand")
