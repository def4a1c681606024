"""Run the trainer while recording every read of a tensor's value by the host, per optimizer update.

    python tests/plugins/host_reads.py OUT.json [key=value ...]   (also under a launcher; rank r writes OUT.r.json)

A read (`.item()`, `float(t)`, `bool(t)`, `torch.equal`, `nonzero`) of a GPU tensor makes the host wait
for the GPU: the update pipeline stalls. On a CPU machine nothing stalls, but the same reads happen, so
a torch dispatch mode sees them here: each is recorded with the number of optimizer updates finished
before it and the innermost `template/` function it came from. A test then checks that reads happen
only after log updates (and at setup and the end).
"""

from __future__ import annotations

import functools
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch.optim.optimizer import register_optimizer_step_post_hook  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from template.config import DEFAULT_CONFIG, load_config  # noqa: E402
from template.runtime.distributed import in_package  # noqa: E402
from template.trainer import train  # noqa: E402

ours = functools.lru_cache(maxsize=None)(in_package)  # a file in the package (its directory, any name)

aten = torch.ops.aten
READS = {aten._local_scalar_dense.default, aten.equal.default, aten.is_nonzero.default, aten.nonzero.default}


class HostReads(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.updates = 0
        self.reads: list[dict[str, Any]] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func in READS:
            frames = [f for f in traceback.extract_stack() if ours(f.filename)]
            path = Path(frames[-1].filename) if frames else None  # a package's __init__.py named with its folder
            file = "/".join(path.parts[-2:]) if path and path.name == "__init__.py" else path.name if path else "?"
            where = f"{file}:{frames[-1].name}" if frames else "?"
            self.reads.append({"after_update": self.updates, "op": str(func), "where": where})
        return func(*args, **(kwargs or {}))


def main() -> None:
    out, overrides = Path(sys.argv[1]), sys.argv[2:]
    cfg = load_config(DEFAULT_CONFIG, overrides)
    mode = HostReads()

    def count(*_: Any) -> None:
        mode.updates += 1

    handle = register_optimizer_step_post_hook(count)
    with mode:
        train(cfg)
    handle.remove()
    rank = int(os.environ.get("RANK", "0"))
    path = out if "WORLD_SIZE" not in os.environ else out.with_suffix(f".{rank}.json")
    path.write_text(json.dumps(mode.reads))


if __name__ == "__main__":
    main()
