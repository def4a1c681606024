"""FSDP with the custom optimizer (RandomScaledSGD): what runs where, and the pieces the trainer relies on.

Where FSDP runs (torch 2.13, Accelerate 1.15):
- torch FSDP1 (`FullyShardedDataParallel`) refuses CPU: "FSDP needs a non-CPU accelerator device".
- torch FSDP2 (`fully_shard`) runs on CPU over gloo: parameters become DTensor shards.
- Accelerate selects DistributedType.FSDP only from a GPU-type launch. On CPU, `accelerate launch
  --use_fsdp` / `--config_file configs/accelerate_fsdp.yaml` gives MULTI_CPU, i.e. DDP over gloo, the
  same unsharded training (Accelerator(cpu=False) there sees world size 1 and the trainer refuses).
So the end-to-end run through Accelerate needs >= 2 GPUs (`test_fsdp_through_accelerate_matches_ddp`
skips otherwise), and on CPU this file runs FSDP2 itself, under torchrun, on the template's own model
and optimizer, with the state-dict calls Accelerate makes for FSDP2 (`get_model_state_dict` full for
model.safetensors, sharded `get_optimizer_state_dict` + torch.distributed.checkpoint for checkpoints).

This file is also the worker: `torchrun --nproc_per_node 2 tests/test_fsdp.py OUT_DIR`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
UPDATES, RESUME_AT = 12, 6
EXIT_DRAIN_S = 0.05  # the same pause as template.runtime.distributed._drain_gloo_at_exit
GLOBAL_BATCH, IN_FEATURES = 16, 4


def _worker(out: Path) -> None:
    """2 ranks: FSDP2-sharded MLP + RandomScaledSGD vs an unsharded replica trained on the global batch."""
    import copy

    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    sys.path.insert(0, str(ROOT))
    from template.models import MLP
    from template.optim import RandomScaledSGD
    from template.runtime import nonfinite
    from template.runtime.distributed import param_digest

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    data = torch.Generator().manual_seed(0)
    xs = torch.randn(UPDATES, GLOBAL_BATCH, IN_FEATURES, generator=data)
    ys = torch.randn(UPDATES, GLOBAL_BATCH, 1, generator=data)
    per_rank = GLOBAL_BATCH // world
    mine = slice(rank * per_rank, (rank + 1) * per_rank)

    def sharded(seed: int) -> torch.nn.Module:
        torch.manual_seed(seed)
        model = MLP(in_features=IN_FEATURES, hidden=16, depth=2)
        for layer in model.net:
            if isinstance(layer, torch.nn.Linear):
                fully_shard(layer)
        return fully_shard(model)

    def update(model: torch.nn.Module, opt: torch.optim.Optimizer, i: int, rows: slice) -> None:
        torch.nn.functional.mse_loss(model(xs[i, rows]), ys[i, rows]).backward()  # FSDP2 averages grads
        opt.step()
        opt.zero_grad(set_to_none=True)

    torch.manual_seed(0)
    reference = MLP(in_features=IN_FEATURES, hidden=16, depth=2)  # what DDP / 1 process computes
    model = sharded(0)
    assert all(isinstance(p, DTensor) for p in model.parameters())
    ref_opt = RandomScaledSGD(reference.parameters(), lr=0.1, seed=1234)
    opt = RandomScaledSGD(model.parameters(), lr=0.1, seed=1234)
    sd_options = StateDictOptions()  # sharded, as Accelerate's save_fsdp_optimizer with SHARDED_STATE_DICT
    factors = []
    for i in range(UPDATES):
        update(reference, ref_opt, i, slice(None))
        update(model, opt, i, mine)
        factors.append(opt.last_factor)
        if i + 1 == RESUME_AT:
            optim_state = get_optimizer_state_dict(model, opt, options=sd_options)
            # the factor count and seed travel in the sharded optimizer state itself
            states = list(optim_state["state"].values())
            counter_saved = bool(states) and all(s == {"step": RESUME_AT, "seed": 1234} for s in states)
            # torch's _init_optim_state runs optimizer.step() (zero grads, lr 0) when optimizer.state is empty:
            # RandomScaledSGD keeps state from its construction, so saving draws no factor
            counter_untouched = opt.draws == RESUME_AT
            dcp.save({"model": get_model_state_dict(model, options=sd_options), "optim": optim_state},
                     checkpoint_id=str(out / "ckpt"))

    nonfinite.assert_finite(model)  # every rank: a DTensor check is a collective
    digest = param_digest(model)  # DTensor shards -> full parameters (collective)
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True,
                                                                cpu_offload=True))  # accelerator.get_state_dict

    def resumed() -> dict[str, torch.Tensor]:
        model2 = sharded(99)  # different init: everything must come from the checkpoint
        opt2 = RandomScaledSGD(model2.parameters(), lr=0.1, seed=77)  # another seed, not at the saved count
        opt2.draw_factor()
        state = {"model": get_model_state_dict(model2, options=sd_options),
                 "optim": get_optimizer_state_dict(model2, opt2, options=sd_options)}
        dcp.load(state, checkpoint_id=str(out / "ckpt"))
        set_model_state_dict(model2, state["model"], options=sd_options)
        set_optimizer_state_dict(model2, opt2, state["optim"], options=sd_options)
        for i in range(RESUME_AT, UPDATES):
            update(model2, opt2, i, mine)
        return {k: v.full_tensor() for k, v in copy.copy(model2.state_dict()).items()}

    continued = {k: v.full_tensor() for k, v in model.state_dict().items()}
    restored = resumed()
    result: dict[str, Any] = {
        "rank": rank, "digest": digest, "factors": factors, "counter_saved": counter_saved,
        "counter_untouched": counter_untouched,
        "full_names": sorted(full), "full_shapes": {k: list(v.shape) for k, v in full.items()},
        "expected_names": sorted(MLP(in_features=IN_FEATURES, hidden=16, depth=2).state_dict()),
        "max_diff_vs_reference": max((full[k] - v).abs().max().item() for k, v in reference.state_dict().items())
        if full else None,
        "full_digest": param_digest(_load(MLP(in_features=IN_FEATURES, hidden=16, depth=2), full)) if full else None,
        "resume_exact": all(torch.equal(continued[k], restored[k]) for k in continued),
    }
    (out / f"rank{rank}.json").write_text(json.dumps(result))
    dist.barrier()
    # as template.runtime.distributed does at exit: let gloo's worker threads drop their tensors before the
    # interpreter tears down (an upstream race that otherwise aborts ~1 run in 8 with SIGABRT)
    time.sleep(EXIT_DRAIN_S)
    dist.destroy_process_group()
    time.sleep(EXIT_DRAIN_S)


def _load(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    module.load_state_dict(state)
    return module


@pytest.fixture(scope="module")
def fsdp2(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """One 2-rank torchrun of the worker above (~6 s on 2 cores); skipped where FSDP2 is unavailable."""
    from conftest import clean_env, free_port

    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available on this platform: no FSDP2 on CPU")
    out = tmp_path_factory.mktemp("fsdp2")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(free_port()), str(Path(__file__).resolve()), str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=180)
    if proc.returncode != 0 and "fully_shard" in proc.stderr and "ImportError" in proc.stderr:
        pytest.skip(f"torch FSDP2 (fully_shard) is unavailable here: {proc.stderr.strip().splitlines()[-1]}")
    assert proc.returncode == 0, proc.stderr[-6000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


@pytest.mark.ddp
@pytest.mark.e2e
def test_fsdp2_sharded_random_scaled_sgd_matches_the_unsharded_training(fsdp2: list[dict[str, Any]]) -> None:
    rank0, rank1 = fsdp2
    assert rank0["factors"] == rank1["factors"]  # the seeded generator draws the same factor on every rank
    assert rank0["max_diff_vs_reference"] is not None and rank0["max_diff_vs_reference"] < 1e-6
    # model.safetensors under FSDP: full tensors, the unwrapped model's names, on rank 0 only
    assert rank0["full_names"] == rank0["expected_names"]
    assert rank1["full_names"] == []
    assert rank0["full_shapes"]["net.2.weight"] == [16, 16]


@pytest.mark.ddp
@pytest.mark.e2e
def test_fsdp2_digest_is_of_the_full_parameters_and_equal_on_every_rank(fsdp2: list[dict[str, Any]]) -> None:
    rank0, rank1 = fsdp2
    assert rank0["digest"] == rank1["digest"]  # summary.json's replica_digests: equal, not per-shard
    assert rank0["digest"] == rank0["full_digest"]  # the digest of the gathered, unsharded weights


@pytest.mark.ddp
@pytest.mark.e2e
def test_fsdp2_optimizer_checkpoint_keeps_the_random_factor_count(fsdp2: list[dict[str, Any]]) -> None:
    """The count of factors drawn and the seed are optimizer state: torch's sharded FSDP2 optimizer checkpoint
    (what Accelerate writes) carries them, and a resume continues the factor sequence exactly."""
    for rank in fsdp2:
        assert rank["counter_saved"]
        assert rank["resume_exact"]


@pytest.mark.ddp
@pytest.mark.e2e
def test_fsdp2_optimizer_checkpoint_does_not_advance_the_random_factor(fsdp2: list[dict[str, Any]]) -> None:
    """get/set_optimizer_state_dict run an lr-0 step() on optimizers without state; RandomScaledSGD has state
    from its construction, so a checkpoint consumes no factor."""
    for rank in fsdp2:
        assert rank["counter_untouched"]


@pytest.mark.ddp
@pytest.mark.e2e
@pytest.mark.gpu
def test_fsdp_through_accelerate_matches_ddp(tmp_path: Path) -> None:
    """`accelerate launch --config_file configs/accelerate_fsdp.yaml` on 2 GPUs vs the DDP run."""
    if torch.cuda.device_count() < 2:
        pytest.skip(f"needs >= 2 GPUs (found {torch.cuda.device_count()}): Accelerate 1.15 selects FSDP only from a "
                    "GPU launch; on CPU --use_fsdp runs as MULTI_CPU (DDP), and FSDP1 refuses CPU")
    from safetensors.torch import load_file

    from conftest import clean_env, free_port, read_summary, run_train, train_rows

    common = ("--config", "configs/seed_builtin.yaml", "model.name=mlp", "model.kwargs={in_features: 1, hidden: 64}",
              "train.max_steps=30", "train.checkpoint_every=10", "train.progress=false", "train.plots=false",
              "train.mixed_precision=no")
    ddp = run_train(*common, f"output_dir={tmp_path / 'ddp'}", launcher="accelerate", nproc=2)
    assert ddp.returncode == 0
    fsdp_cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                str(ROOT / "configs" / "accelerate_fsdp.yaml"), "--num_processes", "2", "--mixed_precision", "no",
                "--main_process_port", str(free_port()), str(ROOT / "scripts" / "train.py"), *common]
    for extra in ((f"output_dir={tmp_path / 'fsdp'}",), (f"output_dir={tmp_path / 'fsdp'}", "train.max_steps=40")):
        proc = subprocess.run([*fsdp_cmd, *extra], cwd=ROOT, env=clean_env(), capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, proc.stderr[-6000:]
        if len(extra) == 1:
            a, b = load_file(tmp_path / "ddp" / "model.safetensors"), load_file(tmp_path / "fsdp" / "model.safetensors")
            assert set(a) == set(b)
            for k in a:
                torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5)
            assert [r["lr"] for r in train_rows(tmp_path / "fsdp").values()] == \
                   [r["lr"] for r in train_rows(tmp_path / "ddp").values()]
        summary = read_summary(tmp_path / "fsdp")
        assert set(summary["replica_digests"]) == {summary["param_digest"]}
    assert "resumed from" in proc.stdout + proc.stderr


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
