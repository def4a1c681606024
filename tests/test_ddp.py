"""Distributed correctness with real 2-process gloo runs on CPU: the same training on 1 or N processes,
the lr equal on every rank, and the checks that catch it when a forker's code breaks that.

Each 2-process launch costs ~5 s on 2 cores, so every run goes through the module-scoped `runs`
cache: a run is made once, on first use, and shared by all the assertions that need it.
Evidence that the OTHER ranks agree (rank 0 alone writes metrics.jsonl) comes from three places:
the lr sync check run at every update with action `error` (a mismatch would have failed the run),
equal `replica_digests` (ranks that used different lrs end with different weights), and the
`plugins.lr_probe` module, which makes every rank write the lr each update used.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from template.runtime.distributed import (
    LaunchError,
    check_launch_env,
    launcher_world_size,
    make_accelerator,
    param_digest,
)

from conftest import ROOT, TRAIN, clean_env, free_port, read_summary, run_here, run_train, train_rows

STEPS = 30  # three lr plateaus of the tutorial's schedule: 0.1, 0.05, 0.025
STRATEGIES = ("builtin", "lambda", "subclass", "manual")
TUTORIAL_LRS = [0.1 * 0.5 ** ((step - 1) // 10) for step in range(1, STEPS + 1)]  # halving is exact in binary
FAST = ("train.progress=false", "train.plots=false", "train.checkpoint_every=0")
TESTS = Path(__file__).resolve().parent
MULTINODE_CONFIG = ROOT / "configs" / "accelerate_multinode.yaml"


def seed_config(strategy: str) -> str:
    return f"configs/seed_{strategy}.yaml"


def plugin_env(probe_dir: Path | None = None) -> dict[str, str]:
    """The launched processes' environment: tests/ importable (for `imports: [plugins.x]`), probe dir."""
    extra = {"PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))}
    if probe_dir is not None:
        extra["LR_PROBE_DIR"] = str(probe_dir)
    return clean_env(**extra)


class Runs:
    """Memoized training runs: `runs(config, *overrides, launcher=, nproc=, plugins=)` -> its output_dir.

    Every run has STEPS updates, one metrics row per update, the lr sync check at every update (action
    `error` unless overridden) and the lr probe; `plugins` are further modules of tests/plugins to import.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.done: dict[tuple[Any, ...], Path] = {}

    def __call__(self, config: str, *overrides: str, launcher: str = "python", nproc: int = 1,
                 plugins: tuple[str, ...] = ()) -> Path:
        key = (config, overrides, launcher, nproc, plugins)
        if key not in self.done:
            out = self.root / f"run{len(self.done):02d}"
            probe = ("lr_probe",) if nproc > 1 else ()  # 1 process: its metrics rows are all the ranks there are
            args = ("--config", config, f"output_dir={out}", f"train.max_steps={STEPS}", "train.log_every=1", *FAST,
                    "distributed.sync_check_every=1", "distributed.sync_check_action=error",
                    f"imports=[{','.join(f'plugins.{name}' for name in (*probe, *plugins))}]", *overrides)
            if launcher == "python":  # a plain 1-process run: in this process (conftest.run_here)
                run_here(*args, env=plugin_env())
            else:  # every rank writes the lr it used into <out>-probe (probe_rows)
                probe_dir = out.with_name(out.name + "-probe")
                probe_dir.mkdir()
                run_train(*args, launcher=launcher, nproc=nproc, env=plugin_env(probe_dir))
            self.done[key] = out
        return self.done[key]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    return Runs(tmp_path_factory.mktemp("ddp"))


def lr_column(out: Path) -> list[float]:
    rows = train_rows(out)
    assert sorted(rows) == list(range(1, STEPS + 1)), "log_every=1: one row per update"
    return [rows[s]["lr"] for s in range(1, STEPS + 1)]


def loss_column(out: Path) -> list[float]:
    rows = train_rows(out)
    return [rows[s]["loss"] for s in range(1, STEPS + 1)]


def probe_rows(out: Path, rank: int) -> list[dict[str, Any]]:
    path = out.with_name(out.name + "-probe") / f"rank{rank}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def assert_replicas_agree(out: Path, world: int = 2) -> dict[str, Any]:
    summary = read_summary(out)
    assert summary["world_size"] == world
    assert summary["step"] == STEPS
    assert len(summary["replica_digests"]) == world
    assert set(summary["replica_digests"]) == {summary["param_digest"]}
    return summary


def assert_same_weights(a: Path, b: Path, rtol: float = 1e-5, atol: float = 1e-6) -> None:
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert set(wa) == set(wb)
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], rtol=rtol, atol=atol, msg=lambda m, n=name: f"{n}: {m}")


# 1. The four seed strategies: the tutorial's lr at every update, on 1 and on 2 processes.

@pytest.mark.ddp
@pytest.mark.e2e
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_seed_strategy_lr_is_the_same_on_1_and_2_processes(runs: Runs, strategy: str) -> None:
    single = runs(seed_config(strategy))
    double = runs(seed_config(strategy), launcher="accelerate", nproc=2)
    assert lr_column(single) == TUTORIAL_LRS
    assert lr_column(double) == TUTORIAL_LRS  # not 0.025 after 10 updates: the scheduler is stepped once
    assert_replicas_agree(double)
    for rank in (0, 1):  # every rank, every update (the sync check at every update agreed as well)
        assert [r["lrs"]["default"] for r in probe_rows(double, rank)] == TUTORIAL_LRS


@pytest.mark.e2e
@pytest.mark.parametrize("nproc", [1, pytest.param(2, marks=pytest.mark.ddp)])
def test_the_four_seed_configs_give_one_training(runs: Runs, nproc: int) -> None:
    """The four seed configs differ only in their scheduler section: the same lr column, and on 1 process
    as on 2 the whole training is bit-identical too (the 1-process runs are the ones the test above made)."""
    launch = {"launcher": "accelerate", "nproc": 2} if nproc == 2 else {}
    outs = [runs(seed_config(s), **launch) for s in STRATEGIES]
    columns = [lr_column(out) for out in outs]
    assert all(column == columns[0] for column in columns) and columns[0] == TUTORIAL_LRS
    assert len({json.dumps(loss_column(out)) for out in outs}) == 1
    assert len({read_summary(out)["param_digest"] for out in outs}) == 1


# 2. Global batch semantics: 1 process, 2 processes, and gradient accumulation give one training.

EQUIVALENT = {
    "2-processes": ((), "accelerate", 2),
    "2-processes-accum-2": (("train.grad_accum_steps=2",), "accelerate", 2),
    "1-process-accum-2": (("train.grad_accum_steps=2",), "python", 1),
}


@pytest.mark.ddp
@pytest.mark.e2e
@pytest.mark.parametrize("variant", list(EQUIVALENT))
def test_same_config_trains_the_same_on_1_and_2_processes(runs: Runs, variant: str) -> None:
    overrides, launcher, nproc = EQUIVALENT[variant]
    reference = runs(seed_config("manual"))
    other = runs(seed_config("manual"), *overrides, launcher=launcher, nproc=nproc)
    assert lr_column(other) == lr_column(reference) == TUTORIAL_LRS
    torch.testing.assert_close(torch.tensor(loss_column(other)), torch.tensor(loss_column(reference)),
                               rtol=1e-5, atol=1e-6)
    assert_same_weights(reference, other)
    assert_replicas_agree(other, nproc)
    assert loss_column(reference)[-1] < loss_column(reference)[0] / 10  # it did learn something


# 3. torchrun launches the same script into the same training.

@pytest.mark.ddp
@pytest.mark.e2e
def test_torchrun_2_processes(runs: Runs) -> None:
    torchrun = runs(seed_config("manual"), launcher="torchrun", nproc=2)
    accelerate = runs(seed_config("manual"), launcher="accelerate", nproc=2)
    assert lr_column(torchrun) == TUTORIAL_LRS
    summary = assert_replicas_agree(torchrun)
    assert summary["param_digest"] == read_summary(accelerate)["param_digest"]  # same 2-rank gloo run
    assert_same_weights(torchrun, runs(seed_config("manual")))


# 4. A metric-driven strategy: each rank's loss is local, the strategy sees the reduced one.

PLATEAU = {
    "manual-plateau_halving": ("scheduler.strategy=manual", "scheduler.name=plateau_halving",
                               "scheduler.kwargs={patience: 1, gamma: 0.5}"),
    "builtin-ReduceLROnPlateau": ("scheduler.strategy=builtin", "scheduler.name=ReduceLROnPlateau",
                                  "scheduler.kwargs={patience: 1, factor: 0.5}"),
}


@pytest.mark.ddp
@pytest.mark.e2e
@pytest.mark.parametrize("strategy", list(PLATEAU))
def test_metric_driven_strategy_sees_the_reduced_loss_on_every_rank(runs: Runs, strategy: str) -> None:
    out = runs(seed_config("manual"), *PLATEAU[strategy], "scheduler.monitor=train/loss",
               launcher="accelerate", nproc=2)  # passing the lr sync check at every update
    assert_replicas_agree(out)
    logged = train_rows(out)
    ranks = [probe_rows(out, rank) for rank in (0, 1)]
    assert ranks[0] == ranks[1]  # same lr used and same metric fed, update by update, on both ranks
    assert [r["step"] for r in ranks[0]] == list(range(1, STEPS + 1))
    for row in ranks[0]:  # the metric fed is the loss averaged over ranks, as logged by rank 0
        assert row["metric"] == logged[row["step"]]["loss"]
        assert row["lrs"]["default"] == logged[row["step"]]["lr"]
    assert len(set(lr_column(out))) >= 2, "the plateau rule never fired: the test would prove nothing"


# 5a. A strategy that gives rank 1 its own lr: caught at the next check, or resynced from rank 0.

SKEWED = ("scheduler.name=rank_skewed_halving", "scheduler.kwargs={every: 10, gamma: 0.5, skew_at: 5, skew: 3.0}")


@pytest.mark.ddp
@pytest.mark.e2e
def test_rank_dependent_lr_fails_the_sync_check(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = run_train("--config", seed_config("manual"), f"output_dir={out}", *FAST, *SKEWED,
                     "imports=[plugins.rank_skew]", f"train.max_steps={STEPS}", "distributed.sync_check_every=1",
                     "distributed.sync_check_action=error",
                     launcher="accelerate", nproc=2, check=False, env=plugin_env())
    assert proc.returncode != 0
    assert f"lr out of sync: group 'default' is {0.1 * 3.0!r} on rank 1 but 0.1 on rank 0" in proc.stderr
    assert sorted(train_rows(out)) == [1, 2, 3, 4]  # stopped by the check right after update 5
    assert not (out / "model.safetensors").exists() and not (out / "summary.json").exists()


@pytest.mark.ddp
@pytest.mark.e2e
def test_rank_dependent_lr_is_resynced_from_rank_0(runs: Runs) -> None:
    out = runs(seed_config("manual"), *SKEWED, "distributed.sync_check_action=resync",
               launcher="accelerate", nproc=2, plugins=("rank_skew",))
    assert lr_column(out) == TUTORIAL_LRS
    for rank in (0, 1):  # rank 1 used rank 0's lr at every update...
        assert [r["lrs"]["default"] for r in probe_rows(out, rank)] == TUTORIAL_LRS
    assert_replicas_agree(out)  # ...so the replicas never drifted
    # bit-identical to the unskewed 2-process run: no update ever used the skewed lr
    assert read_summary(out)["param_digest"] == read_summary(
        runs(seed_config("manual"), launcher="accelerate", nproc=2))["param_digest"]


# 5b. An optimizer that moves rank 1's weights: the final check names the parameter, writes no model.

@pytest.mark.ddp
@pytest.mark.e2e
def test_drifted_replicas_fail_the_run_and_name_the_parameter(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = run_train("--config", seed_config("manual"), f"output_dir={out}", *FAST, "train.max_steps=10",
                     "imports=[plugins.drift]", "optimizer.name=rank1_perturbing_sgd",
                     "optimizer.kwargs={seed: 1234, perturb_at: 3, amount: 0.001, index: 0}",
                     launcher="accelerate", nproc=2, check=False, env=plugin_env())
    assert proc.returncode != 0
    # theta (perturbed) sorts after b (not perturbed): the first DIFFERING parameter, not the first name
    assert "replicas drifted: parameter 'theta' differs between ranks" in proc.stderr
    assert not (out / "model.safetensors").exists()
    digests = read_summary(out)["replica_digests"]
    assert len(digests) == 2 and digests[0] != digests[1]


# 6. Launches that cannot be what they claim: one `error:` line, exit 2, nothing written.

def assert_launch_error(proc: subprocess.CompletedProcess[str], out: Path, needle: str) -> None:
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert errors and all(needle in line for line in errors), proc.stderr[-3000:]
    assert not out.exists()


@pytest.mark.e2e
def test_stray_world_size_without_a_launcher_is_a_launch_error(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = run_here("--config", seed_config("manual"), f"output_dir={out}", check=False, env=clean_env(WORLD_SIZE="2"))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]  # one line...
    assert_launch_error(proc, out, "WORLD_SIZE=2 is set but RANK and MASTER_ADDR are not")
    assert "Traceback" not in proc.stderr  # ...and no traceback


@pytest.mark.ddp
@pytest.mark.e2e
def test_world_size_1_per_process_under_a_2_process_launch_is_a_launch_error(tmp_path: Path) -> None:
    """The CPU trap for real: `Accelerator()` without cpu=True under a 2-process launch sees world size 1."""
    out = tmp_path / "out"
    proc = run_train("--config", seed_config("manual"), f"output_dir={out}", launcher="accelerate", nproc=2,
                     check=False, script=TESTS / "plugins" / "plain_accelerator_train.py")
    assert_launch_error(proc, out, "the launcher started 2 processes but Accelerate sees 1")
    # every rank that gets to print says it in one line; the launcher may kill the second rank first
    assert 1 <= len([line for line in proc.stderr.splitlines() if line.startswith("error: ")]) <= 2
    assert len(re.findall(r"exitcode\s*:\s*2\b", proc.stderr)) >= 1  # the launcher's report: status 2
    assert "LaunchError" not in proc.stderr  # no traceback from the workers (the launcher prints its own)


@pytest.mark.e2e
@pytest.mark.skipif(torch.cuda.is_available(), reason="with GPUs accelerate launch turns --multi_gpu on by itself")
def test_accelerate_simple_launcher_asked_for_2_processes_warns(tmp_path: Path) -> None:
    """Without --multi_gpu (or a config file) on a CPU machine, accelerate starts ONE process: say so."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", str(TRAIN), "--config", seed_config("manual"),
           f"output_dir={out}", "train.max_steps=3", *FAST]
    proc = subprocess.run(cmd, cwd=ROOT, env=clean_env(HF_HOME=str(tmp_path / "hf")), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "RuntimeWarning: accelerate launch was asked for several processes" in proc.stderr
    assert read_summary(out)["world_size"] == 1


def test_launcher_world_size_reads_the_launchers_variables() -> None:
    assert launcher_world_size({}) == 1
    assert launcher_world_size({"WORLD_SIZE": "4", "PMI_SIZE": "2"}) == 4
    assert launcher_world_size({"OMPI_COMM_WORLD_SIZE": "3"}) == 3
    with pytest.raises(LaunchError, match="WORLD_SIZE='two' in the environment is not an integer"):
        launcher_world_size({"WORLD_SIZE": "two"})
    check_launch_env({"WORLD_SIZE": "2", "RANK": "1", "MASTER_ADDR": "10.0.0.1"})  # a real launch
    check_launch_env({"WORLD_SIZE": "1"})
    with pytest.raises(LaunchError, match="WORLD_SIZE=2 is set but MASTER_ADDR is not"):
        check_launch_env({"WORLD_SIZE": "2", "RANK": "0"})


def test_make_accelerator_refuses_a_world_size_the_launcher_did_not_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """The GPU form of the trap (WORLD_SIZE set, LOCAL_RANK not: Accelerate falls back to 1 process)."""

    class OneProcess:  # what Accelerate gives in that case, without touching the real process state
        num_processes = 1
        distributed_type = "NO"

        def __init__(self, **kwargs: Any) -> None:
            pass

    monkeypatch.setattr(f"{make_accelerator.__module__}.Accelerator", OneProcess)
    for key, value in {"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(LaunchError, match="the launcher started 2 processes but Accelerate sees 1"):
        make_accelerator()


def test_param_digest_covers_scalar_parameters_and_not_buffers() -> None:
    model = torch.nn.Module()
    model.theta = torch.nn.Parameter(torch.tensor(100.0))  # 0-dim, like the tutorial's theta
    model.norm = torch.nn.BatchNorm1d(3)  # running stats: buffers, rank-local after the last forward
    before = param_digest(model)
    model.norm.running_mean += 1.0
    assert param_digest(model) == before
    with torch.no_grad():
        model.theta += 1.0
    assert param_digest(model) != before


# 7. Two "machines" of one process each, on loopback, through configs/accelerate_multinode.yaml.

@pytest.mark.ddp
@pytest.mark.e2e
def test_two_machines_on_loopback(runs: Runs, tmp_path: Path) -> None:
    out, port = tmp_path / "out", free_port()
    procs = []
    for machine in (0, 1):
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(MULTINODE_CONFIG),
               "--num_machines", "2", "--num_processes", "2", "--machine_rank", str(machine),
               "--main_process_ip", "127.0.0.1", "--main_process_port", str(port),
               "--mixed_precision", "no", str(TRAIN), "--config", seed_config("manual"), f"output_dir={out}",
               f"train.max_steps={STEPS}", "distributed.sync_check_every=1", *FAST]
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=clean_env(), stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    results = []
    for proc in procs:
        try:
            results.append(proc.communicate(timeout=300))
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
    for machine, (proc, (_, stderr)) in enumerate(zip(procs, results, strict=True)):
        assert proc.returncode == 0, f"machine {machine}:\n{stderr[-4000:]}"
    assert_replicas_agree(out)
    assert lr_column(out) == lr_column(runs(seed_config("manual"))) == TUTORIAL_LRS
    assert read_summary(out)["param_digest"] == read_summary(
        runs(seed_config("manual"), launcher="accelerate", nproc=2))["param_digest"]


FAKE_SRUN = """#!/usr/bin/env bash
# Stand-in for srun on one machine: run the command once per node of the (fake) allocation,
# concurrently, with that node's SLURM_NODEID / SLURM_PROCID; fail if any of them fails.
while [[ $# -gt 0 && "$1" == --* ]]; do shift; done
pids=()
for ((node = 0; node < SLURM_JOB_NUM_NODES; node++)); do
    SLURM_NODEID=$node SLURM_PROCID=$node "$@" &
    pids+=("$!")
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit "$status"
"""
FAKE_SCONTROL = """#!/usr/bin/env bash
[[ "$1 $2" == "show hostnames" ]] && printf 'localhost\\nlocalhost\\n'
"""


def test_slurm_script_is_valid_bash() -> None:
    subprocess.run(["bash", "-n", str(ROOT / "scripts" / "slurm_train.sh")], check=True)


@pytest.mark.ddp
@pytest.mark.e2e
def test_slurm_script_on_two_fake_nodes(runs: Runs, tmp_path: Path) -> None:
    """scripts/slurm_train.sh with srun/scontrol stand-ins: 2 "nodes" x 1 "GPU" on loopback (not SLURM itself)."""
    bin_dir, out = tmp_path / "bin", tmp_path / "out"
    bin_dir.mkdir()
    for name, text in {"srun": FAKE_SRUN, "scontrol": FAKE_SCONTROL}.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    # the shipped config with fp32 instead of bf16 (CPU here), passed through the script's ACCELERATE_CONFIG knob
    accelerate_config = tmp_path / "accelerate.yaml"
    accelerate_config.write_text(MULTINODE_CONFIG.read_text().replace("mixed_precision: bf16", "mixed_precision: 'no'"))
    env = clean_env(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", SLURM_JOB_NODELIST="node[1-2]",
                    SLURM_JOB_NUM_NODES="2", SLURM_JOB_ID="4242", GPUS_PER_NODE="1", MAIN_PORT=str(free_port()),
                    PYTHON=sys.executable, REPO_DIR=str(ROOT), ACCELERATE_CONFIG=str(accelerate_config))
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "slurm_train.sh"), "--config", seed_config("manual"),
                           f"output_dir={out}", f"train.max_steps={STEPS}", *FAST],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "2 node(s) x 1 GPU(s) = 2 processes; rendezvous at 127.0.0.1:" in proc.stderr
    assert_replicas_agree(out)
    assert lr_column(out) == TUTORIAL_LRS
    assert read_summary(out)["param_digest"] == read_summary(
        runs(seed_config("manual"), launcher="accelerate", nproc=2))["param_digest"]
