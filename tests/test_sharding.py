"""`distributed.shard: fsdp2` through the trainer itself: 2 sharded CPU processes over gloo train what 1 plain
process trains, checkpoints are written in shards and resume on the same, fewer or more processes, and a
plain (DDP) checkpoint resumes sharded.

Runs are few and shared (module-scoped `runs`): the default config (the custom random_scaled_sgd) and a tiny
GPT with AdamW and weight-decay groups, gradient accumulation, clipping, non-finite skipping and the EMA hook
all on. Each 2-process launch costs ~15 CPU-s here; single-process runs are in-process. The 2 -> 1 resume also
compiles each block (torchtitan's order: activation checkpointing, compile per block, then sharding).
"""

from __future__ import annotations

import json
import re
import shutil
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from template.runtime.checkpoint import complete_checkpoints

from conftest import read_summary, run_here, train_rows
from harness import Launched, plugin_env, small_corpus, tiny_args, train, train_here, wait_for_step

pytestmark = [pytest.mark.e2e]
SHARD = "distributed.shard=fsdp2"
FAST = ("train.progress=false", "train.plots=false", "tracking.wandb=false", "train.log_every=1")
# the default config's MLP and random_scaled_sgd on points with a NaN target at sample 5: one update's gradients
# are non-finite (on whichever rank the sample lands), and train.nonfinite=skip must skip it on every rank
DEFAULT = (*FAST, "train.max_steps=12", "train.checkpoint_every=6", "train.eval_every=6",
           "scheduler.kwargs.warmup_steps=2", "imports=[plugins.poisoned_data]", "data.name=poisoned_linear",
           "data.kwargs={poison: [5]}", "model.kwargs.in_features=1", "train.nonfinite=skip")
GPT_STEPS = 8
GPT_EXTRA = ("train.checkpoint_every=4", "train.eval_every=4", "train.grad_accum_steps=2", "train.clip_grad_norm=0.5",
             "train.nonfinite=skip", "hooks=[{name: ema, kwargs: {decay: 0.9}}]", "distributed.sync_check_every=1")
ATOL = 2e-5  # 2 ranks sum the gradients in another order than 1 process: float rounding, not a different training


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return small_corpus(tmp_path_factory.mktemp("corpus"))


class Runs:
    """Memoized runs by name: each is made once, on first use, for every assertion that needs it."""

    def __init__(self, root: Path, corpus: Path) -> None:
        self.root, self.corpus, self.done = root, corpus, {}

    def gpt(self, *extra: str) -> tuple[str, ...]:
        return (*tiny_args(self.corpus, GPT_STEPS), *GPT_EXTRA, *extra)

    def get(self, name: str) -> Path:
        if name in self.done:
            return self.done[name]
        out = self.root / name
        kind, _, how = name.partition("-")
        args = self.gpt() if kind == "gpt" else DEFAULT
        if how == "plain":  # 1 process, unsharded: the reference
            train_here((*args, f"output_dir={out}"), out)
        elif how == "sharded1":
            train_here((*args, SHARD, f"output_dir={out}"), out)
        elif how == "sharded2":
            train((*args, SHARD, f"output_dir={out}"), out, nproc=2)
        elif how == "killed2":  # kill -9 of both ranks after update 5 (the checkpoint of update 4 written), rerun
            paced = (*args, SHARD, "imports=[plugins.pace]", f"output_dir={out}")
            run = Launched(paced, out, 2, FT_PACE_S="0.1")
            assert wait_for_step(run, 5) < GPT_STEPS, "the run ended before it could be killed"
            run.kill_group()
            run.finish()
            stdout, _ = train(paced, out, nproc=2)
            assert re.search(r"resumed from \S+ at update [1-7]\b", stdout), stdout
        else:  # resume-<from>-<nproc>: the <from> run's first checkpoint, continued on <nproc> sharded processes
            source, nproc = how.removeprefix("resume-").rsplit("-", 1)
            interrupted(self.get(f"{kind}-{source}"), out)
            if nproc == "1":  # and compiled per block (a resume may switch it): compile works sharded
                train_here((*args, SHARD, "train.compile=true", f"output_dir={out}"), out)
            else:
                train((*args, SHARD, f"output_dir={out}"), out, nproc=int(nproc))
        self.done[name] = out
        return out


def interrupted(finished: Path, out: Path) -> None:
    """`finished` as a kill after its first checkpoint would have left it: later checkpoints and results gone."""
    shutil.copytree(finished, out)
    for later in complete_checkpoints(out)[1:]:
        shutil.rmtree(later)
    for name in ("summary.json", "model.safetensors", "model_ema.safetensors"):
        (out / name).unlink(missing_ok=True)
    first = int(complete_checkpoints(out)[0].name.split("_")[1])
    rows = [line for line in (out / "metrics.jsonl").read_text().splitlines() if json.loads(line)["step"] <= first]
    (out / "metrics.jsonl").write_text("\n".join(rows) + "\n")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, corpus: Path) -> Runs:
    return Runs(tmp_path_factory.mktemp("sharding"), corpus)


def lrs(out: Path) -> dict[int, dict[str, float]]:
    return {step: {k: v for k, v in row.items() if k.startswith("lr")} for step, row in train_rows(out).items()}


def assert_close_training(reference: Path, out: Path, weights: str = "model.safetensors") -> None:
    """The same lr column exactly, losses and full weights (plain names) within float tolerance."""
    assert lrs(out) == lrs(reference)
    ref_rows, rows = train_rows(reference), train_rows(out)
    assert rows.keys() == ref_rows.keys()
    for step in rows:
        assert rows[step]["loss"] == pytest.approx(ref_rows[step]["loss"], rel=1e-4, abs=1e-6, nan_ok=True), step
    expected, got = load_file(str(reference / weights)), load_file(str(out / weights))
    assert got.keys() == expected.keys()
    for name, tensor in expected.items():
        assert got[name].shape == tensor.shape, name
        torch.testing.assert_close(got[name], tensor, atol=ATOL, rtol=1e-4, msg=name)


@pytest.mark.ddp
@pytest.mark.parametrize("kind", ["default", "gpt"])
def test_two_sharded_processes_train_what_one_plain_process_trains(runs: Runs, kind: str) -> None:
    plain, sharded = runs.get(f"{kind}-plain"), runs.get(f"{kind}-sharded2")
    assert_close_training(plain, sharded)
    summary = read_summary(sharded)
    assert summary["world_size"] == 2 and len(set(summary["replica_digests"])) == 1  # full parameters, digested
    if kind == "default":  # the poisoned update was skipped alike
        assert train_rows(sharded)[12]["skipped_updates"] == train_rows(plain)[12]["skipped_updates"] == 1
    if kind == "gpt":  # the EMA kept sharded shadows and wrote the full average; clipping saw every shard
        assert_close_training(plain, sharded, "model_ema.safetensors")
        assert summary["ema_updates"] == read_summary(plain)["ema_updates"] == GPT_STEPS
        assert all(row["grad_norm"] > 0 for row in train_rows(sharded).values())
        for step, row in train_rows(plain).items():
            assert train_rows(sharded)[step]["grad_norm"] == pytest.approx(row["grad_norm"], rel=1e-4)


def test_one_sharded_process_is_bit_identical_to_plain(runs: Runs) -> None:
    plain, sharded = runs.get("default-plain"), runs.get("default-sharded1")
    assert read_summary(sharded)["param_digest"] == read_summary(plain)["param_digest"]
    assert (sharded / "model.safetensors").read_bytes() == (plain / "model.safetensors").read_bytes()


@pytest.mark.ddp
def test_checkpoints_are_written_in_shards_by_every_rank(runs: Runs) -> None:
    checkpoint = complete_checkpoints(runs.get("gpt-sharded2"))[-1]
    shards = sorted(p.name for p in (checkpoint / "sharded").iterdir())
    assert shards == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    assert not (checkpoint / "model.safetensors").exists() and not (checkpoint / "optimizer.bin").exists()
    trainer = torch.load(checkpoint / "trainer.pt", weights_only=True)
    assert "__shard__" in json.dumps(trainer["hooks"], default=str)  # the EMA's tensors went with the shards
    sums = json.loads((checkpoint / "checksums.json").read_text())
    assert {"sharded/.metadata", "sharded/__0_0.distcp", "sharded/__1_0.distcp"} <= sums.keys()


@pytest.mark.ddp
def test_a_killed_sharded_run_resumes_bit_identically_on_the_same_processes(runs: Runs) -> None:
    full, resumed = runs.get("gpt-sharded2"), runs.get("gpt-killed2")
    assert read_summary(resumed)["param_digest"] == read_summary(full)["param_digest"]
    assert read_summary(resumed)["ema_digest"] == read_summary(full)["ema_digest"]
    assert train_rows(resumed).keys() == train_rows(full).keys()
    assert lrs(resumed) == lrs(full)
    assert (resumed / "model_ema.safetensors").read_bytes() == (full / "model_ema.safetensors").read_bytes()
    assert not list((resumed / "checkpoints").glob(".tmp-*"))


@pytest.mark.ddp
@pytest.mark.parametrize("source, nproc", [("sharded2", 1), ("sharded1", 2), ("plain", 2)],
                         ids=["2-to-1", "1-to-2", "plain-ddp-to-sharded"])
def test_a_checkpoint_reshards_onto_another_number_of_processes(runs: Runs, source: str, nproc: int) -> None:
    kind = "default" if source == "sharded1" else "gpt"
    resumed = runs.get(f"{kind}-resume-{source}-{nproc}")
    assert read_summary(resumed)["world_size"] == nproc
    assert read_summary(resumed)["compiled"] == (nproc == 1)
    assert_close_training(runs.get(f"{kind}-plain"), resumed)
    if kind == "gpt":
        assert_close_training(runs.get("gpt-plain"), resumed, "model_ema.safetensors")


@pytest.mark.ddp
def test_each_rank_holds_about_half_of_the_parameters_and_optimizer_state(runs: Runs) -> None:
    whole = read_summary(runs.get("gpt-plain"))["memory/state_bytes_per_rank"]
    halves = read_summary(runs.get("gpt-sharded2"))["memory/state_bytes_per_rank"]
    assert len(whole) == 1 and len(halves) == 2
    for part in halves:  # FSDP2 pads each parameter's dim 0 to a multiple of the world size
        assert part == pytest.approx(whole[0] / 2, rel=0.05)
    assert read_summary(runs.get("gpt-sharded2"))["memory/max_rss_gb_per_rank"][1] > 0


def test_a_kill_while_shards_are_written_leaves_the_previous_checkpoint_to_resume_from(runs: Runs,
                                                                                    tmp_path: Path) -> None:
    args = (*DEFAULT, SHARD, "imports=[plugins.poisoned_data,plugins.crash_in_save]", "train.checkpoint_every=3",
            f"output_dir={tmp_path}")
    train(args, tmp_path, expect=-signal.SIGKILL, FT_CRASH="save_sharded:6")
    half = tmp_path / "checkpoints" / ".tmp-step_00000006"
    assert (half / "sharded").is_dir() and not (half / "trainer.pt").exists()
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["step_00000003"]
    stdout, _ = train(args, tmp_path)
    assert "resumed from" in stdout and "step_00000003 at update 3" in stdout
    assert read_summary(tmp_path)["param_digest"] == read_summary(runs.get("default-plain"))["param_digest"]


@pytest.mark.parametrize("overrides, key", [
    (("distributed.shard_units=[nothing.*]",), "distributed.shard_units"),
    (("model.name=linear", "model.kwargs={}"), "distributed.shard_units"),
    (("distributed.shard=zero3",), "distributed.shard"),
    (("optimizer.name=muon",), "optimizer.name"),
])
def test_bad_sharding_input_is_one_line_naming_the_key(tmp_path: Path, overrides: tuple[str, ...], key: str) -> None:
    proc = run_here(*FAST, SHARD, *overrides, f"output_dir={tmp_path}", check=False, env=plugin_env())
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: {key}:")
