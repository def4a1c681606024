"""W&B logging a dashboard can trust: real wandb, offline, its run files read back (no mocks).

The e2e tests run scripts/train.py for real and decode the `run-*.wandb` files with tests/wandb_offline.py:
the W&B history must equal metrics.jsonl step by step (exact floats), the config and labels must be
there, secrets must be nowhere under output_dir, a 2-process training must make one run, and a resumed
training (clean, or after a kill -9 past its checkpoint) must continue the same run with each step once.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from template.config import load_config
from template.reporting.redaction import REDACTED, is_secret_name, redact, redact_argv, secret_values
from template.reporting.tracking import run_labels, wandb_mode

from conftest import ROOT, TRAIN, clean_env, read_metrics, read_summary, run_train, train_rows

SWEEP = ROOT / "configs" / "sweep.yaml"
FAST = ("train.log_every=1", "train.progress=false", "train.checkpoint_every=0")
WARMUP = "scheduler.kwargs.warmup_steps=5"  # the default's 20 needs max_steps > 20
SECRETS = {  # fake credentials in the environment of the runs that check for leaks
    "WANDB_API_KEY": "wandbkey-" + "0123456789abcdef" * 2,
    "HF_TOKEN": "hf_sekritTokenValue42",
    "MY_SERVICE_PASSWORD": "hunter2-sekrit-pw",
}


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------


def segments(out: Path) -> list[Any]:
    """Every offline run directory of the training in out, oldest first (one per process that ran)."""
    from wandb_offline import read_runs

    return read_runs(out / "wandb")


def steps_of(run: Any) -> list[int]:
    return [row["step"] for row in run.history if "step" in row]


def by_step(runs: list[Any]) -> dict[int, dict[str, Any]]:
    """The histories combined by `step`: a later segment's row replaces an earlier one's."""
    combined: dict[int, dict[str, Any]] = {}
    for run in runs:
        for row in run.history:
            combined[row["step"]] = row
    return combined


def assert_matches_metrics(history: dict[int, dict[str, Any]], out: Path) -> None:
    """lr, every lr/<group>, loss (and grad_norm, eval/loss) of each step equal metrics.jsonl's, exactly."""
    expected = train_rows(out)
    assert sorted(s for s, row in history.items() if "loss" in row) == sorted(expected)
    for step, row in expected.items():
        got = history[step]
        for key in [k for k in row if k in ("lr", "loss", "grad_norm", "epoch") or k.startswith("lr/")]:
            assert got[key] == row[key], (step, key, got[key], row[key])  # exact float equality
    evals = {r["step"]: r["eval/loss"] for r in read_metrics(out) if "eval/loss" in r}
    assert {s: history[s]["eval/loss"] for s in evals} == evals


def assert_in_order(run: Any) -> None:
    """Within one process's file: strictly increasing steps, W&B's own _step equal to the update."""
    steps = steps_of(run)
    assert steps == sorted(set(steps)), steps
    assert all(row["_step"] == row["step"] for row in run.history)


def files_containing(root: Path, needles: list[str]) -> dict[str, list[str]]:
    hits: dict[str, list[str]] = {}
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            found = [n for n in needles if n.encode() in data]
            if found:
                hits[str(path.relative_to(root))] = found
    return hits


KILL_WRAPPER = """
import os, runpy, signal, sys
sys.path.insert(0, {root!r})
from template.reporting import tracking

after = int(os.environ["KILL_AFTER_STEP"])
original = tracking.Tracker.log

def log(self, row):
    original(self, row)
    if row.get("step") == after and "loss" in row:
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup at all, as a preemption or the OOM killer

tracking.Tracker.log = log
sys.argv[0] = {train!r}
runpy.run_path({train!r}, run_name="__main__")
"""


# ------------------------------------------------------------------------------------------------
# fast checks (no training)
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "secret"), [
    ("HF_TOKEN", True), ("WANDB_API_KEY", True), ("apiKey", True), ("db_password", True),
    ("AWS_SECRET_ACCESS_KEY", True), ("private_key", True), ("GITHUB_PAT", True),
    ("tokenizer", False), ("max_tokens", False), ("TOKENIZERS_PARALLELISM", False), ("patience", False),
    ("monitor", False), ("author", False),
])
def test_secret_names(name, secret):
    assert is_secret_name(name) is secret


def test_redact_keys_and_environment_values():
    values = secret_values({"HF_TOKEN": "hf_abcdefgh123", "TOKENIZERS_PARALLELISM": "false", "X_TOKEN": "1"})
    assert values == ["hf_abcdefgh123"]
    tree = {"a": {"api_key": "k", "tokenizer": "gpt2"}, "b": ["x-hf_abcdefgh123-y", 3], "c": None}
    assert redact(tree, values) == {"a": {"api_key": REDACTED, "tokenizer": "gpt2"},
                                   "b": [f"x-{REDACTED}-y", 3], "c": None}
    argv = ["--config", "c.yaml", "model.kwargs.hf_token=abc", "--api-key", "k2", "--token=k3",
            "name=hf_abcdefgh123", "train.max_steps=5"]
    assert redact_argv(argv, values) == ["--config", "c.yaml", f"model.kwargs.hf_token={REDACTED}", "--api-key",
                                         REDACTED, f"--token={REDACTED}", f"name={REDACTED}", "train.max_steps=5"]


def test_offline_unless_a_login_is_configured(tmp_path, monkeypatch):
    for key in [k for k in os.environ if k.startswith("WANDB_")]:
        monkeypatch.delenv(key)
    netrc = tmp_path / "netrc"
    monkeypatch.setenv("NETRC", str(netrc))
    assert wandb_mode() == "offline"  # no netrc file
    netrc.write_text("machine example.com login user password pw\n")
    assert wandb_mode() == "offline"  # a netrc without the W&B host
    netrc.write_text("machine api.wandb.ai login user password " + "a" * 40 + "\n")
    netrc.chmod(0o600)
    assert wandb_mode() is None  # logged in: wandb decides (online)
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert wandb_mode() is None  # WANDB_MODE always wins
    monkeypatch.delenv("WANDB_MODE")
    netrc.unlink()
    monkeypatch.setenv("WANDB_API_KEY", "b" * 40)
    assert wandb_mode() is None


def test_run_labels_come_from_the_config():
    cfg = load_config("configs/seed_builtin.yaml", ["tracking.tags=[x]", "optimizer.lr=0.3", "seed=4"])
    assert run_labels(cfg) == {"name": "random_scaled_sgd-builtin:StepLR-lr0.3-seed4", "group": "builtin:StepLR",
                               "tags": ["x", "strategy:builtin", "optimizer:random_scaled_sgd"]}


def test_sweep_config_parses_and_every_trial_is_a_valid_config(monkeypatch):
    """Every grid point, turned into arguments exactly as `wandb agent` does, loads and builds; the four
    strategies give the same lr curve for the same lr."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    from template.schedules.preview import preview_lr_curve

    sweep = yaml.safe_load(SWEEP.read_text())
    assert sweep["method"] == "grid" and (ROOT / sweep["program"]).is_file()
    command = sweep["command"]
    assert command[-1] == "${args_no_hyphens}" and "${program}" in command
    fixed = command[command.index("${program}") + 1:-1]
    config = fixed[fixed.index("--config") + 1]
    fixed = [a for a in fixed if a not in ("--config", config)]
    monkeypatch.setenv("WANDB_SWEEP_ID", "sweep1")
    monkeypatch.setenv("WANDB_RUN_ID", "run1")
    names = list(sweep["parameters"])
    strategies = set()
    curves: dict[float, set[tuple[float, ...]]] = {}
    for combo in itertools.product(*(sweep["parameters"][n]["values"] for n in names)):
        args = create_sweep_command_args({"args": {n: {"value": v} for n, v in zip(names, combo, strict=True)}})
        cfg = load_config(ROOT / config, [*fixed, *args["args_no_hyphens"]])  # raises on a bad key or value
        assert cfg.tracking.wandb and cfg.output_dir == "runs/sweeps/sweep1/run1"
        strategies.add(cfg.scheduler.strategy)
        curves.setdefault(cfg.optimizer.lr, set()).add(tuple(preview_lr_curve(cfg)[1]))
    assert strategies == {"builtin", "lambda", "subclass", "manual"}
    assert len(curves) > 1 and all(len(c) == 1 for c in curves.values())  # strategies agree at every lr


def test_preview_leaves_the_global_rng_alone():
    import random

    import torch

    from template.schedules.preview import preview_lr_curve

    cfg = load_config("configs/seed_builtin.yaml")
    torch.manual_seed(123)
    random.seed(5)
    before = (torch.get_rng_state(), random.getstate())
    steps, lrs = preview_lr_curve(cfg)
    assert torch.equal(torch.get_rng_state(), before[0]) and random.getstate() == before[1]
    assert steps == list(range(1, 51)) and lrs[:21] == [0.1] * 10 + [0.05] * 10 + [0.025]


# ------------------------------------------------------------------------------------------------
# real trainings
# ------------------------------------------------------------------------------------------------


@pytest.mark.e2e
def test_fresh_run_logs_what_metrics_jsonl_holds(tmp_path):
    """No WANDB_MODE and no login: offline, under output_dir; WANDB_PROJECT / WANDB_ENTITY honoured."""
    from template.schedules.preview import preview_lr_curves

    from wandb_offline import iter_records

    env = clean_env(WANDB_PROJECT="proj-from-env", WANDB_ENTITY="team-from-env", NETRC=str(tmp_path / "none"))
    del env["WANDB_MODE"]
    out = tmp_path / "run"
    groups = "optimizer.groups=[{name: head, params: ['net.4.*'], lr: 0.05}]"
    args = (f"output_dir={out}", *FAST, "train.max_steps=40", "train.eval_every=20", "tracking.tags=[e2e]", groups,
            "train.profile={start: 3, steps: 2}")
    run_train(*args, env=env)
    runs = segments(out)
    assert len(runs) == 1
    run = runs[0]
    assert_in_order(run)
    history = by_step(runs)
    assert_matches_metrics(history, out)
    assert steps_of(run) == list(range(0, 41))  # 0: the lr preview, then one row per update
    row = history[40]
    assert {"lr", "lr/head", "lr/default", "loss", "grad_norm", "samples_per_s", "epoch", "eval/loss"} <= set(row)
    assert row["lr/head"] != row["lr/default"] and row["samples_per_s"] > 0 and row["epoch"] == 40 / 64

    # x axis: the update counter, for every chart
    assert {"name": "step", "options": {"defined": True}} in run.metric_definitions
    assert any(d.get("glob_name") == "*" and d.get("step_metric") == "step" for d in run.metric_definitions)
    # alternative x axes (runs of other batch sizes on one chart), memory in every row, the best eval value
    defined = {d.get("name") for d in run.metric_definitions}
    assert {"samples", "epoch"} <= defined
    assert all(history[s]["memory/max_rss_gb"] > 0 for s in range(1, 41))
    summary = read_summary(out)
    evals = {r["step"]: r["eval/loss"] for r in read_metrics(out) if "eval/loss" in r}
    best_step = min(evals, key=lambda s: evals[s])
    assert (summary["best/eval/loss"], summary["best/eval/loss_step"]) == (evals[best_step], best_step)
    assert (run.summary["best/eval/loss"], run.summary["best/eval/loss_step"]) == (evals[best_step], best_step)
    assert summary["memory/max_rss_gb"] == max(history[s]["memory/max_rss_gb"] for s in range(1, 41))

    # images: the lr preview at update 0, the final lr/loss curves at the last update
    assert history[0]["plots/lr_preview"]["_type"] == "image-file"
    assert {history[40]["plots/lr"]["_type"], history[40]["plots/loss"]["_type"]} == {"image-file"}
    assert len([f for f in run.files if f.startswith("media/images/plots/")]) == 3
    assert [f for f in run.files if f.startswith("profile/")] == [  # the profiler's trace, saved with the run
        str(p.relative_to(out)) for p in (out / "profile").glob("rank0.*.pt.trace.json")]
    preview = preview_lr_curves(load_config(None, list(args)))
    rows = train_rows(out)
    for group in ("head", "default"):
        assert preview[group][1] == [rows[s][f"lr/{group}"] for s in range(1, 41)]

    # config (resolved, as saved in config.yaml), labels, project and entity
    assert run.config == yaml.safe_load((out / "config.yaml").read_text())
    assert run.config["train"]["max_steps"] == 40 and run.config["optimizer"]["groups"][0]["name"] == "head"
    assert (run.name, run.group) == ("random_scaled_sgd-subclass:warmup_cosine-lr0.2-seed0", "subclass:warmup_cosine")
    assert run.tags == ["e2e", "strategy:subclass", "optimizer:random_scaled_sgd"]
    assert run.project == "proj-from-env"
    wandb_file = next((out / "wandb").glob("offline-run-*/run-*.wandb"))
    entity = [r.run.entity for r in iter_records(wandb_file) if r.WhichOneof("record_type") == "run"]
    assert entity == ["team-from-env"]


@pytest.mark.e2e
@pytest.mark.ddp
def test_two_processes_make_one_run_and_no_secret_reaches_any_file(tmp_path):
    """2-rank gloo DDP: one W&B run; fake credentials in the environment and one pulled into the config
    by interpolation appear in no file under output_dir (config.yaml, wandb files, logs, metadata)."""
    from wandb_offline import iter_records

    out = tmp_path / "ddp"
    run_train(f"output_dir={out}", *FAST, WARMUP, "train.max_steps=20", "tracking.group=team-${oc.env:HF_TOKEN}",
              launcher="accelerate", nproc=2, env=clean_env(**SECRETS))
    assert json.loads((out / "summary.json").read_text())["world_size"] == 2
    runs = segments(out)
    assert len(runs) == 1, [r.run_id for r in runs]
    assert len(list((out / "wandb").glob("*run-*"))) == 1
    assert_in_order(runs[0])
    assert_matches_metrics(by_step(runs), out)

    assert files_containing(out, list(SECRETS.values())) == {}
    assert runs[0].group == f"team-{REDACTED}" == runs[0].config["tracking"]["group"]
    wandb_file = next((out / "wandb").glob("offline-run-*/run-*.wandb"))
    environment = [r.environment for r in iter_records(wandb_file) if r.WhichOneof("record_type") == "environment"]
    args = [list(e.args) for e in environment if e.args]
    assert args and "tracking.group=team-${oc.env:HF_TOKEN}" in args[0]  # the literal, never the value


@pytest.mark.e2e
def test_resume_continues_the_same_run_each_step_once(tmp_path):
    out = tmp_path / "resume"
    common = (f"output_dir={out}", "train.log_every=1", "train.progress=false", "train.checkpoint_every=10",
              WARMUP, "scheduler.kwargs.total_steps=20")  # the horizon stays: a resume may not change it
    run_train(*common, "train.max_steps=20")
    run_train(*common, "train.max_steps=30")  # resume=auto: continues from update 20's checkpoint
    runs = segments(out)
    assert len(runs) == 2 and runs[0].run_id == runs[1].run_id
    for run in runs:
        assert_in_order(run)
    assert steps_of(runs[0]) == list(range(0, 21))
    assert steps_of(runs[1]) == list(range(0, 31))  # offline: the newest segment holds the whole run
    combined = by_step(runs)
    assert sorted(combined) == list(range(0, 31))
    assert_matches_metrics(combined, out)
    assert_matches_metrics(by_step(runs[1:]), out)


@pytest.mark.e2e
def test_resume_after_kill_relogs_with_the_final_values(tmp_path):
    """kill -9 after update 15, checkpoint at 10: the resumed process recomputes 11..15; W&B ends with
    each step once, holding the final values (what metrics.jsonl's last row per step says)."""
    out = tmp_path / "killed"
    common = (f"output_dir={out}", "train.log_every=1", "train.progress=false", "train.checkpoint_every=10",
              "train.max_steps=30", WARMUP)
    wrapper = tmp_path / "kill_train.py"
    wrapper.write_text(KILL_WRAPPER.format(root=str(ROOT), train=str(TRAIN)))
    killed = run_train(*common, script=wrapper, check=False, env=clean_env(KILL_AFTER_STEP="15"))
    assert killed.returncode != 0
    assert [r["step"] for r in read_metrics(out)] == list(range(1, 16))
    run_train(*common)
    assert [r["step"] for r in read_metrics(out) if "loss" in r] == [*range(1, 16), *range(11, 31)]
    runs = segments(out)
    assert len(runs) == 2 and runs[0].run_id == runs[1].run_id
    for run in runs:
        assert_in_order(run)
    # What wandb itself kept of the killed process: only what it had flushed (it buffers its file).
    assert set(steps_of(runs[0])) <= set(range(0, 16))
    assert steps_of(runs[1]) == list(range(0, 31))
    combined = by_step(runs)
    assert sorted(combined) == list(range(0, 31))
    assert_matches_metrics(combined, out)


@pytest.mark.e2e
def test_wandb_false_never_imports_wandb(tmp_path):
    out = tmp_path / "off"
    code = (
        "import sys\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from template.config import load_config\n"
        "from template.trainer import train\n"
        f"train(load_config(None, ['output_dir={out}', 'tracking.wandb=false', 'train.max_steps=5',"
        " 'train.progress=false', 'train.checkpoint_every=0', 'scheduler.kwargs.warmup_steps=2']))\n"
        "print('wandb' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=clean_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "False"
    assert not (out / "wandb").exists() and len(train_rows(out)) == 1
