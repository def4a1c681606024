"""The lr clock in samples: a job resumed with another batch keeps the lr as a function of the data seen.

Unit tests of `template.runtime.clock.Clock` and of the sampler's data position, and one real pair of runs: a
batch-64 run, and the same run resumed from its update-10 checkpoint at batch 32 (a job moved from 8 GPUs
to 4), which must log, at every sample count, the lr the uninterrupted batch-64 run had there.
"""

from __future__ import annotations

import math

import pytest
import torch

from template.config import load_config
from template.data import GlobalBatchSampler
from template.errors import ConfigError
from template.runtime.clock import Clock

from conftest import read_summary, run_here, train_rows


def test_updates_clock_counts_applied_updates():
    clock = Clock(batch=64, reference=64)
    assert [list(clock.advance(applied)) for applied in (True, False, True)] == [[1], [], [2]]
    assert (clock.step, clock.skipped, clock.samples, clock.lr_steps) == (3, 1, 192, 2)


@pytest.mark.parametrize(("batch", "expected"), [(32, [[], [1], [], [2]]), (128, [[1, 2], [3, 4], [5, 6], [7, 8]]),
                                                 (48, [[], [1], [2], [3]])])
def test_samples_clock_steps_once_per_reference_batch_of_applied_samples(batch, expected):
    clock = Clock(batch=batch, reference=64, by_samples=True)
    assert [list(clock.advance(True)) for _ in range(4)] == expected
    assert clock.lr_steps == 4 * batch // 64


def test_last_step_counts_the_samples_earlier_processes_consumed():
    # 10 updates of 64 done, now at batch 32: 40 reference steps = 2560 samples -> 60 more updates
    clock = Clock(batch=32, reference=64, by_samples=True, step=10, samples=640, applied_samples=640)
    assert clock.last_step(None, 40) == 70
    assert clock.last_step(1000, 40) == 10 + math.ceil((1000 - 640) / 32)
    assert Clock(batch=32, reference=32).last_step(None, 40) == 40  # the updates clock: max_steps as before


def consumed(sampler: GlobalBatchSampler, updates: int) -> list[int]:
    it = sampler.index_tensors()
    return torch.cat([next(it) for _ in range(updates * sampler.accum)]).tolist()


@pytest.mark.parametrize("new_batch", [32, 48, 128])
def test_a_new_batch_continues_at_the_next_unseen_sample(new_batch):
    """64-sample updates, then another batch from the saved position: the same order, nothing replayed."""
    n, seed = 1000, 7
    first = GlobalBatchSampler(n, 64, 1, 1, 0, seed)
    seen = consumed(first, 5)
    then = GlobalBatchSampler(n, new_batch, 1, 1, 0, seed, start_position=first.position(5))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003)).tolist()
    following = consumed(then, 3)
    assert seen + following == order[: 320 + 3 * new_batch]
    # past the epoch's end it moves on to the next epoch's order, as the sampler always does
    assert then.position(100)[0] >= 1


def test_position_agrees_with_start_update_for_the_same_batch():
    for updates in (0, 3, 15, 16, 40):
        by_update = GlobalBatchSampler(1000, 64, 2, 2, 1, 3, start_update=updates)
        by_position = GlobalBatchSampler(1000, 64, 2, 2, 1, 3, start_position=GlobalBatchSampler(
            1000, 64, 2, 2, 1, 3).position(updates))
        assert consumed(by_update, 20) == consumed(by_position, 20)


def test_max_samples_sets_max_steps_and_the_schedule_horizon():
    cfg = load_config(None, ["train.max_samples=3200", "train.batch_size=64"])
    assert cfg.train.max_steps == 50 and cfg.scheduler.kwargs["total_steps"] == 50  # `${train.max_steps}`
    cfg = load_config(None, ["train.max_samples=3200", "train.batch_size=32", "scheduler.clock=samples",
                             "scheduler.reference_batch=64"])
    assert cfg.train.max_steps == 50  # counted in reference batches


@pytest.mark.parametrize(("override", "key"), [("scheduler.clock=tokens", "scheduler.clock"),
                                               ("scheduler.reference_batch=0", "scheduler.reference_batch"),
                                               ("train.max_samples=0", "train.max_samples")])
def test_bad_clock_settings_name_their_key(override, key):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert err.value.key == key


def test_samples_clock_with_epoch_interval_is_refused():
    with pytest.raises(ConfigError, match="interval"):
        load_config(None, ["scheduler.clock=samples", "scheduler.interval=epoch"])


@pytest.fixture(scope="module")
def batch_change(tmp_path_factory):
    """(uninterrupted batch-64 rows, rows of the run resumed from its update 10 at batch 32)."""
    root = tmp_path_factory.mktemp("clock")
    args = ("train.max_steps=40", "train.log_every=1", "train.eval_every=0", "train.progress=false",
            "train.plots=false", "tracking.wandb=false", "scheduler.clock=samples", "train.batch_size=64")
    run_here(*args, "train.checkpoint_every=10", "train.keep_checkpoints=4", f"output_dir={root / 'b64'}")
    resume = root / "b64" / "checkpoints" / "step_00000010"
    run_here(*args, "train.batch_size=32", "train.checkpoint_every=0", f"train.resume={resume}",
             "scheduler.reference_batch=64", f"output_dir={root / 'b32'}")
    return train_rows(root / "b64"), train_rows(root / "b32"), read_summary(root / "b32")


def test_resumed_at_half_the_batch_the_lr_follows_the_samples_seen(batch_change):
    full, halved, summary = batch_change
    lr_at = {row["samples"]: row["lr"] for row in full.values()}  # lr of the update that ends at that count
    resumed = {s: r for s, r in halved.items() if s > 10}
    assert min(resumed) == 11 and max(resumed) == 70 == summary["step"]  # 10 x 64 + 60 x 32 = 40 x 64 samples
    assert resumed[70]["samples"] == full[40]["samples"] == 2560
    for row in resumed.values():
        # an update at batch 32 uses the lr of the batch-64 update whose samples it covers
        assert row["lr"] == lr_at[math.ceil(row["samples"] / 64) * 64], row
    # not vacuous: the lr moved (20 warm-up steps then cosine) over the resumed part
    assert len({row["lr"] for row in resumed.values()}) > 20
