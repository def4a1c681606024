"""Updates that do not log read no tensor value on the host (on a GPU: no host-device synchronisation).

The trainer runs under a dispatch mode that records every `.item()` / `bool(t)` / `torch.equal` /
`nonzero` with the number of updates finished before it (tests/plugins/host_reads.py). Reads may follow
a log update (the loss is read and, under DDP, the stop flag agreed on), or come at setup and at the end;
between two non-log updates the only read allowed is RandomScaledSGD drawing its factor from its own CPU
generator, which never touches the device.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest

from conftest import ROOT, run_here, run_train

pytestmark = pytest.mark.e2e
SCRIPT = ROOT / "tests" / "plugins" / "host_reads.py"
STEPS, LOG_EVERY = 30, 10
CPU_ONLY = {"optim/__init__.py:draw_factor"}  # a CPU generator's scalar: no device involved
RUN = (f"train.max_steps={STEPS}", f"train.log_every={LOG_EVERY}", "tracking.wandb=false", "train.plots=false",
       "train.eval_every=0", "train.checkpoint_every=0")


def reads_by_update(path: Path) -> dict[int, set[str]]:
    found: dict[int, set[str]] = defaultdict(set)
    for read in json.loads(path.read_text()):
        found[read["after_update"]].add(read["where"])
    return found


def check(found: dict[int, set[str]]) -> None:
    logged = {0, *range(LOG_EVERY, STEPS + 1, LOG_EVERY)}
    device_reads = {k: v - CPU_ONLY for k, v in found.items() if v - CPU_ONLY}
    assert set(device_reads) <= logged, {k: v for k, v in device_reads.items() if k not in logged}
    # not vacuous: the loss is read after each log update, and the factor draw was seen every update
    assert all("trainer.py:train" in device_reads.get(k, set()) for k in range(LOG_EVERY, STEPS + 1, LOG_EVERY))
    assert all("optim/__init__.py:draw_factor" in found[k] for k in range(STEPS))


@pytest.mark.parametrize("extra", [(), ("train.clip_grad_norm=0", "tracking.log_grad_norm=true")])
def test_only_log_updates_read_values(tmp_path, extra):
    out = tmp_path / "reads.json"
    run_here(str(out), f"output_dir={tmp_path / 'run'}", *RUN, *extra, script=SCRIPT)
    check(reads_by_update(out))


@pytest.mark.ddp
def test_only_log_updates_read_values_under_ddp(tmp_path):
    out = tmp_path / "reads.json"
    run_train(str(out), f"output_dir={tmp_path / 'run'}", *RUN, f"distributed.sync_check_every={LOG_EVERY}",
              launcher="accelerate", nproc=2, script=SCRIPT)
    for rank in range(2):
        check(reads_by_update(out.with_suffix(f".{rank}.json")))
