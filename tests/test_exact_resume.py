"""Exact resume for every source of randomness: a killed run, resumed, gives the uninterrupted run's bits.

The hardest case: the GPT with dropout 0.1 (masks drawn from each rank's global torch generator every
forward) and a hook that draws from Python's `random`, NumPy and torch after every update and logs the draws;
killed mid-run and resumed, on 1 process, on 2, and with 2 DataLoader workers. A resume that restored the
generators at the wrong moment, or let setup draw after restoring them, changes the masks, the weights and
the logged draws.
"""

from __future__ import annotations

import random
import re
import time
from pathlib import Path

import pytest

from harness import Launched, assert_same_training, small_corpus, tiny_args, train, train_here, wait_for_step

RANDOM = ("model.kwargs.dropout=0.1", "imports=[plugins.random_draws, plugins.pace]", "hooks=[{name: random_draws}]",
          "train.checkpoint_every=5", "train.eval_every=10")
STEPS = 24


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return small_corpus(tmp_path_factory.mktemp("corpus"))


def kill_and_resume(args: tuple[str, ...], out: Path, nproc: int, kill_after: int) -> None:
    """kill -9 of the launcher and every rank just after update `kill_after` logs, plus a random delay: anywhere
    in forward, backward, the all-reduce or a checkpoint write; then the same command."""
    run = Launched(args, out, nproc, FT_PACE_S="0.02")
    reached = wait_for_step(run, kill_after)
    time.sleep(random.Random(kill_after * 10 + nproc).uniform(0, 0.05))
    run.kill_group()
    run.finish()
    assert reached < STEPS, "the run ended before it could be killed"
    if nproc == 1:
        stdout, _ = train_here(args, out)
    else:
        stdout, _ = train(args, out, nproc=nproc)
    resumed = re.search(r"resumed from \S+ at update (\d+)", stdout)
    assert resumed and int(resumed.group(1)) < STEPS, stdout  # a resume mid-run, not after the end


@pytest.mark.parametrize("nproc,workers,optimizer", [(1, 0, "adamw"), (1, 2, "adamw"),
                                                     pytest.param(2, 0, "adamw", marks=pytest.mark.ddp),
                                                     (1, 0, "muon")])  # muon: Muon's momentum + AdamW's moments
def test_dropout_and_global_draws_resume_bit_exactly(corpus, tmp_path, nproc, workers, optimizer):
    args = (*tiny_args(corpus, STEPS), *RANDOM, f"data.num_workers={workers}", f"optimizer.name={optimizer}")
    reference = tmp_path / "straight"
    if nproc == 1:
        train_here(args, reference)
    else:
        train(args, reference, nproc=nproc)
    rows = [r for r in (reference / "metrics.jsonl").read_text().splitlines() if '"draw/rank0/torch"' in r]
    assert len(rows) == STEPS and all(f'"draw/rank{nproc - 1}/numpy"' in r for r in rows)
    out = tmp_path / "resumed"
    kill_and_resume(args, out, nproc, kill_after=12)
    assert_same_training(reference, out)
