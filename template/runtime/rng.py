"""Every global random generator of this process, as one checkpoint entry: an exact resume draws what the
uninterrupted run would have drawn (dropout masks, a hook's noise, a fork's augmentation in the loop).

Python's `random`, NumPy's legacy global generator, torch's CPU generator and every CUDA device's. Each rank
has its own: the checkpointer saves this entry per rank and restores it after everything else that setup
does, so no draw made while setting up (a DataLoader's base seed, a tracker) shifts the stream. A run resumed
on more ranks than wrote the checkpoint keeps its seeded generators on the new ranks (and says so).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch


class RNGState:
    """`state_dict()` / `load_state_dict()` over the process's global generators (loads with weights_only)."""

    def state_dict(self) -> dict[str, Any]:
        version, keys, gauss = random.getstate()
        kind, np_keys, pos, has_gauss, cached = np.random.get_state()  # type: ignore[misc]
        state: dict[str, Any] = {
            "python": [version, list(keys), gauss],
            "numpy": [kind, torch.from_numpy(np.asarray(np_keys, dtype=np.int64)), int(pos), int(has_gauss),
                      float(cached)],
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        version, keys, gauss = state["python"]
        random.setstate((version, tuple(keys), gauss))
        kind, np_keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, np_keys.numpy().astype(np.uint32), pos, has_gauss, cached))
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            cuda = state["cuda"]
            if len(cuda) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(cuda)
            else:  # another machine shape: this process's device only
                torch.cuda.set_rng_state(cuda[min(torch.cuda.current_device(), len(cuda) - 1)])


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Restore Python's, NumPy's and torch's (CPU and CUDA) global RNG states on exit."""
    py_state, np_state = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
