"""Shared helpers: run the real training script (1 process or a real 2-rank gloo launch) and read its files.

A run that ends on its own and is read only through its files, exit status and output lines can run here,
in the test's own process (`run_here`): the same script, the same arguments and environment, minus a fresh
interpreter. That saves the ~3 s a new process spends importing torch, Accelerate and dynamo, which is
most of what a small run costs. Runs that are killed, signalled, launched on several processes, log to
W&B or test the process itself (its exit without a traceback, its imports) stay real subprocesses.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import runpy
import socket
import subprocess
import sys
import traceback
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
TRAIN = ROOT / "scripts" / "train.py"
torch.set_num_threads(1)  # as the subprocesses' OMP_NUM_THREADS=1: in-process runs give the same bits


# The files with the longest runs, longest first (measured). pytest-xdist (--dist loadfile
# --no-loadscope-reorder) hands whole files to the workers in collection order: started first, these run
# side by side and the many short files fill in behind them, so both workers finish together instead of
# one waiting on a long file picked up last.
LONGEST_FIRST = ("test_ddp.py", "test_sharding.py", "test_fault_tolerance.py", "test_exact_resume.py",
                 "test_wandb_logging.py", "test_missing_runs.py", "test_micro_batch.py", "test_launcher_errors.py",
                 "test_benchmark.py", "test_hf_data.py", "test_new_project.py", "test_artifacts.py", "test_gpt.py",
                 "test_sampling.py", "test_robustness.py", "test_host_memory.py", "test_train_e2e.py",
                 "test_hooks.py", "test_lr_find.py", "test_tutorial_script.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_command(launcher: str, nproc: int, script: Path = TRAIN) -> list[str]:
    """The command line for `python`, `accelerate` (--multi_gpu: the gloo path on CPU) or `torchrun`."""
    if launcher == "python":
        assert nproc == 1
        return [sys.executable, str(script)]
    if launcher == "accelerate":
        return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "1",
                "--mixed_precision", "no", "--dynamo_backend", "no", "--num_processes", str(nproc),
                "--main_process_port", str(free_port()), str(script)]
    if launcher == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                "--master_port", str(free_port()), str(script)]
    raise ValueError(launcher)


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "ACCELERATE_"))}
    env.update(WANDB_MODE="offline", WANDB_SILENT="true", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               TOKENIZERS_PARALLELISM="false")
    env.update(extra)
    return env


def run_train(*args: str, launcher: str = "python", nproc: int = 1, check: bool = True, timeout: float = 300,
              env: dict[str, str] | None = None, script: Path = TRAIN) -> subprocess.CompletedProcess[str]:
    """Run scripts/train.py for real; on an unexpected exit code fail with its stderr."""
    cmd = [*launch_command(launcher, nproc, script), *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=env or clean_env(), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {proc.returncode}\n--- stderr ---\n{proc.stderr[-6000:]}")
    return proc


# What a run may change in this interpreter beyond its arguments and environment: methods the test plugins
# patch (they read their environment once, at first import), process-wide flags, registries. An in-process
# run puts all of it back (`_as_a_fresh_process`), and the autouse guard below fails any test after which it
# differs, so no test passes or fails because of what an earlier one left behind.
PATCHABLE = (("template.trainer", "UpdateStep", "__call__"), ("accelerate", "Accelerator", "save_state"),
             ("pathlib", "Path", "rename"), ("torch._inductor.compile_fx", None, "compile_fx"),
             ("template.schedules.base", "LRSchedule", "after_update"),
             ("template.runtime.sharding", None, "save_sharded"),
             ("template.runtime.distributed", None, "Accelerator"), ("template.runtime.distributed", None,
                                                                      "_resync_reported"))


def _registries() -> dict[int, tuple[Any, dict[str, Any]]]:
    from template.registry import Registry

    found = {}
    for name, module in list(sys.modules.items()):
        if name.split(".")[0] not in (Registry.__module__.split(".")[0], "plugins") or module is None:
            continue
        for value in list(vars(module).values()):
            if isinstance(value, Registry):
                found[id(value)] = (value, dict(value._items))
    return found


def process_state() -> dict[str, Any]:
    """Everything in `PATCHABLE` (by identity), the registries' contents and the process-wide flags."""
    import importlib

    state: dict[str, Any] = {}
    for module, owner, attr in PATCHABLE:
        target = importlib.import_module(module)
        target = getattr(target, owner) if owner else target
        state[f"{module}.{owner}.{attr}"] = target.__dict__.get(attr) if owner else getattr(target, attr)
    state["registries"] = {key: items for key, (_, items) in _registries().items()}
    state["deterministic"] = torch.are_deterministic_algorithms_enabled()
    state["threads"] = torch.get_num_threads()
    state["cudnn.benchmark"] = torch.backends.cudnn.benchmark
    state["plugins"] = frozenset(n for n in sys.modules if n.startswith("plugins."))
    return state


def restore_process_state(state: dict[str, Any], registries: dict[int, tuple[Any, dict[str, Any]]]) -> None:
    import importlib

    from accelerate.state import AcceleratorState, GradientState

    for module, owner, attr in PATCHABLE:
        target = importlib.import_module(module)
        target = getattr(target, owner) if owner else target
        value = state[f"{module}.{owner}.{attr}"]
        if owner and value is None:  # inherited, not the class's own: remove an override
            if attr in target.__dict__:
                delattr(target, attr)
        else:
            setattr(target, attr, value)
    for registry, items in registries.values():
        registry._items.clear()
        registry._items.update(items)
    torch.use_deterministic_algorithms(state["deterministic"])
    torch.set_num_threads(state["threads"])
    torch.backends.cudnn.benchmark = state["cudnn.benchmark"]
    # Accelerate's process-wide singletons: a later run must set mixed precision, devices etc. afresh
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    for name in [n for n in sys.modules if n.startswith("plugins.") and n not in state["plugins"]]:
        del sys.modules[name]  # plugins read their environment at import: the next run imports them anew


@pytest.fixture(autouse=True)
def no_leaks_between_tests() -> Iterator[None]:
    before = process_state()
    yield
    after = process_state()
    changed = sorted(k for k in before if before[k] != after[k] and k != "plugins")
    assert not changed, f"the test left process-wide state changed: {changed}"


def _fresh_showwarning(message: Any, category: Any, filename: str, lineno: int, file: Any = None,
                       line: str | None = None) -> None:
    """Python's own warning printer, on the current sys.stderr (the run's captured stderr, not pytest's record)."""
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


@contextlib.contextmanager
def _as_a_fresh_process(script: Path, args: list[str], env: dict[str, str], cwd: Path) -> Iterator[None]:
    """argv, environment, cwd, sys.path and warning filters as `python script args` would have them, and every
    process-wide thing a run can change (`process_state`), put back afterwards (in-process runs share this
    interpreter with the other tests)."""
    saved_env, saved_argv, saved_path = dict(os.environ), sys.argv, list(sys.path)
    saved_state, saved_registries = process_state(), _registries()
    os.environ.clear()
    os.environ.update(env)
    sys.argv = [str(script), *args]
    try:
        with contextlib.chdir(cwd), warnings.catch_warnings():
            warnings.resetwarnings()  # a fresh interpreter's filters: each warning shown once, on stderr
            for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
                warnings.simplefilter("ignore", category)
            warnings.filterwarnings("default", category=DeprecationWarning, module="__main__")
            warnings.showwarning = _fresh_showwarning
            yield
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        sys.argv, sys.path[:] = saved_argv, saved_path
        restore_process_state(saved_state, saved_registries)


def run_here(*args: str, check: bool = True, env: dict[str, str] | None = None, script: Path = TRAIN,
             cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """`run_train(*args)` in this process: the script runs as `__main__`; SystemExit gives the exit status,
    an uncaught exception status 1 with its traceback on stderr, as the interpreter would."""
    environment = {**(env or clean_env()), "WANDB_MODE": "disabled"}  # W&B runs stay subprocesses: no service here
    stdout, stderr = io.StringIO(), io.StringIO()
    code = 0
    with _as_a_fresh_process(script, list(args), environment, cwd), contextlib.redirect_stdout(stdout), \
            contextlib.redirect_stderr(stderr):
        try:
            runpy.run_path(str(script), run_name="__main__")
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        except Exception:  # reported as the interpreter would: traceback, status 1
            traceback.print_exc()
            code = 1
    proc = subprocess.CompletedProcess([str(script), *args], code, stdout.getvalue(), stderr.getvalue())
    if check and code != 0:
        pytest.fail(f"{script.name} {' '.join(args)} exited {code} (in-process)\n--- stderr ---\n{proc.stderr[-6000:]}")
    return proc


def read_metrics(output_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (Path(output_dir) / "metrics.jsonl").read_text().splitlines() if line]


def train_rows(output_dir: Path) -> dict[int, dict[str, Any]]:
    """The last training row for each step (what SPEC.md says a resumed run must get right)."""
    return {r["step"]: r for r in read_metrics(output_dir) if "loss" in r}


def read_summary(output_dir: Path) -> dict[str, Any]:
    return json.loads((Path(output_dir) / "summary.json").read_text())
