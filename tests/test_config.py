"""Configuration: YAML + overrides on a typed schema; every bad input is one `error:` line and exit 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from template.cli import run
from template.config import Config, load_config
from template.errors import ConfigError
from template.trainer import train

from conftest import ROOT, TRAIN, clean_env

SEED = str(ROOT / "configs" / "seed_builtin.yaml")


def test_default_config_loads_with_interpolation():
    cfg = load_config()
    assert isinstance(cfg, Config)
    assert cfg.scheduler.kwargs["total_steps"] == cfg.train.max_steps
    assert load_config(None, ["train.max_steps=77"]).scheduler.kwargs["total_steps"] == 77


def test_overrides_are_typed_and_merged():
    cfg = load_config(SEED, ["optimizer.lr=0.5", "train.log_every=3", "tracking.tags=[a,b]", "seed=9"])
    assert (cfg.optimizer.lr, cfg.train.log_every, cfg.tracking.tags, cfg.seed) == (0.5, 3, ["a", "b"], 9)
    assert cfg.scheduler.name == "StepLR"  # untouched keys keep the file's values


def test_spec_keys_exist():
    cfg = load_config()
    for key in ("seed", "output_dir", "train.max_steps", "train.batch_size", "train.grad_accum_steps",
                "train.log_every", "train.checkpoint_every", "train.resume", "optimizer.name", "optimizer.lr",
                "scheduler.strategy", "tracking.wandb"):
        node = cfg
        for part in key.split("."):
            node = getattr(node, part)
    assert cfg.train.resume == "auto"


def bad(tmp_path, *overrides):
    """Arguments for the real CLI path, run in-process; a leading `--config X` replaces the seed config."""
    config = SEED
    if overrides and overrides[0] == "--config":
        config, overrides = overrides[1], overrides[2:]
    return ["--config", config, f"output_dir={tmp_path / 'out'}", "train.progress=false", *overrides]


# (overrides, the key the message must name, a fragment of the problem)
BAD_INPUTS = [
    (["train.max_stepz=5"], "train.max_stepz", "did you mean 'max_steps'"),
    (["trian.max_steps=5"], "trian", "did you mean 'train'"),
    (["train.max_steps=abc"], "train.max_steps", "abc"),
    (["train.max_steps=0"], "train.max_steps", ">= 1"),
    (["optimizer.lr=0"], "optimizer.lr", "> 0"),
    (["optimizer.lr=-0.1"], "optimizer.lr", "> 0"),
    (["train.batch_size=0"], "train.batch_size", ">= 1"),
    (["train.batch_size=33", "train.grad_accum_steps=2"], "train.batch_size", "divisible"),
    (["train.batch_size=100000"], "train.batch_size", "larger than the dataset"),
    (["train.log_every=0"], "train.log_every", ">= 1"),
    (["train.mixed_precision=fp17"], "train.mixed_precision", "did you mean 'fp16'"),
    (["train.nonfinite=ignore"], "train.nonfinite", "one of"),
    (["optimizer.name=adamx"], "optimizer.name", "did you mean 'adam"),
    (["loss.name=simple_mes"], "loss.name", "did you mean 'simple_mse'"),
    (["model.name=liner"], "model.name", "did you mean 'linear'"),
    (["data.name=nope"], "data.name", "unknown dataset"),
    (["data.kwargs.sizee=5"], "data.kwargs", "sizee"),
    (["scheduler.strategy=builtn"], "scheduler.strategy", "did you mean 'builtin'"),
    (["scheduler.name=StepLRR"], "scheduler.name", "did you mean 'StepLR'"),
    (["scheduler.kwargs.step_size=0"], "scheduler.kwargs", "StepLR"),
    (["--config", str(ROOT / "configs" / "seed_subclass.yaml"), "scheduler.kwargs.every=0"],
     "scheduler.kwargs", "every"),
    (["scheduler.strategy=lambda", "scheduler.expression=__import__('os').system('true')"],
     "scheduler.expression", "not allowed"),
    (["scheduler.strategy=lambda", "scheduler.expression=().__class__"], "scheduler.expression", "not allowed"),
    (["scheduler.strategy=lambda", "scheduler.expression=0.5 ** (stpe // 10)"], "scheduler.expression", "stpe"),
    (["train.resume=/does/not/exist"], "train.resume", "does not exist"),
    (["imports=[no_such_module_xyz]"], "imports.0", "no_such_module_xyz"),
    (["optimizer.kwargs.momentum=0.9"], "optimizer.kwargs", "momentum"),
    (["notakeyvalue"], "", "key=value"),
    (["scheduler.expression=[1]*10**9"], "scheduler.expression", "cannot parse the value '[1]*10**9' as YAML"),
    (["optimizer.groups.0.params="], "optimizer.groups.0.params", "does not fit the config's structure"),
    (["model.kwargs.theta=[1, 2]"], "model.kwargs", "model 'linear': TypeError"),
    (["seed=-1"], "seed", "must be in [0, 2**32)"),
    (["train.mixed_precision=fp16"], "train.mixed_precision", "fp16 needs a CUDA device"),
    (["distributed.timeout_s=0"], "distributed.timeout_s", "must be in [1, 86400]"),
    (["scheduler.interval=epoch", "train.max_steps=20"], "scheduler.interval", "it never changes"),
    (["scheduler.name=ReduceLROnPlateau", "scheduler.kwargs={}", "scheduler.monitor=eval/loss", "train.eval_every=0"],
     "scheduler.monitor", "'eval/loss' is never produced"),
    (["scheduler.strategy=lambda", "scheduler.expression=step / 10"], "scheduler.expression", "lr 0"),
]


@pytest.mark.parametrize("overrides, key, fragment", BAD_INPUTS, ids=[" ".join(b[0])[:40] for b in BAD_INPUTS])
def test_bad_input_is_one_error_line_and_exit_2(tmp_path, capsys, overrides, key, fragment):
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.jsonl").write_text("precious\n")
    with pytest.raises(SystemExit) as exit_info:
        run(lambda cfg, args: train(cfg), "t", bad(tmp_path, *overrides))
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error: {key}"), lines[0]
    assert fragment in lines[0], lines[0]
    assert [p.name for p in out.iterdir()] == ["metrics.jsonl"]
    assert (out / "metrics.jsonl").read_text() == "precious\n"


def test_output_dir_that_is_a_file(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(SystemExit):
        run(lambda cfg, args: train(cfg), "t", ["--config", SEED, f"output_dir={target}"])
    assert capsys.readouterr().err.startswith("error: output_dir:")
    assert target.read_text() == "x"


def test_config_error_carries_key():
    with pytest.raises(ConfigError) as info:
        load_config(SEED, ["optimizer.lr=0"])
    assert info.value.key == "optimizer.lr"


@pytest.mark.e2e
@pytest.mark.parametrize("args, fragment", [
    (["--config", "configs/missing.yaml"], "error: --config: no such config file"),
    (["train.max_stepz=3"], "error: train.max_stepz: unknown key (did you mean 'max_steps'?)"),
    (["--bogus-flag"], "error: arguments:"),
])
def test_script_exit_status_2_without_traceback(tmp_path, args, fragment):
    proc = subprocess.run([sys.executable, str(TRAIN), *args, f"output_dir={tmp_path}/o"], cwd=ROOT,
                          env=clean_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith(fragment), proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()


def test_mixed_precision_no_is_not_yaml_false():
    assert load_config(SEED, ["train.mixed_precision=no"]).train.mixed_precision == "no"
