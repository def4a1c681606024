"""Run the trainer on CUDA while recording every host-device synchronisation, per optimizer update.

    python tests/plugins/cuda_syncs.py OUT.json [--config PATH] [key=value ...]

`torch.cuda.set_sync_debug_mode("warn")` makes CUDA warn at every operation that makes the host wait for
the device (`.item()`, a copy to the host, `nonzero`, ...). Each warning is recorded with the number of
optimizer updates finished before it and the innermost `template/` function it came from, so a test can
check that only log updates (and setup and the end) wait for the GPU. The CPU counterpart is
tests/plugins/host_reads.py.
"""

from __future__ import annotations

import functools
import json
import sys
import traceback
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch.optim.optimizer import register_optimizer_step_post_hook  # noqa: E402

from template.config import load_config  # noqa: E402
from template.runtime.distributed import in_package  # noqa: E402
from template.trainer import train  # noqa: E402

ours = functools.lru_cache(maxsize=None)(in_package)  # a file in the package (its directory, any name)


def main() -> None:
    out, args = Path(sys.argv[1]), sys.argv[2:]
    config = None
    if args[:1] == ["--config"]:
        config, args = args[1], args[2:]
    cfg = load_config(config, args)
    updates = 0
    syncs: list[dict[str, Any]] = []

    def count(*_: Any) -> None:
        nonlocal updates
        updates += 1

    def record(message: Any, category: Any, *rest: Any, **kwargs: Any) -> None:
        if "synchroniz" not in str(message).lower():
            return
        frames = [f for f in traceback.extract_stack() if ours(f.filename)]
        where = f"{Path(frames[-1].filename).name}:{frames[-1].name}" if frames else "?"
        syncs.append({"after_update": updates, "where": where, "message": str(message)[:200]})

    handle = register_optimizer_step_post_hook(count)
    warnings.showwarning = record
    warnings.simplefilter("always")
    torch.cuda.set_sync_debug_mode("warn")
    try:
        train(cfg)
    finally:
        torch.cuda.set_sync_debug_mode("default")
        handle.remove()
    out.write_text(json.dumps(syncs))


if __name__ == "__main__":
    main()
