"""Throughput a reader of a training log wants: samples/s, tokens/s and model FLOPs utilisation (MFU).

All three come from the wall clock and the global batch, so they cost no host-device sync and are
computed on log updates only. tokens/s appears when the dataset says how many tokens a sample predicts
(`tokens_per_sample`), MFU when the model also says what a token costs (`flops_per_token()`, 6N + 12LHQT
for the GPT) and the peak is known: `train.peak_flops`, or the bf16 dense tensor-core peak of a GPU
recognised by name. MFU = achieved model FLOP/s / (peak x number of devices), as in the PaLM paper.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' data sheets, matched against the device name
# in this order (the first substring found wins). Sparse figures are twice these.
GPU_PEAK_FLOPS: tuple[tuple[str, float], ...] = (
    ("GB200", 2.5e15), ("B200", 2.25e15), ("H200", 989e12), ("H100 PCIe", 756e12), ("H100", 989e12),
    ("H800", 989e12), ("A100", 312e12), ("A800", 312e12), ("L40S", 362e12), ("L40", 181e12), ("L4", 121e12),
    ("A10G", 70e12), ("A10", 125e12), ("A6000", 155e12), ("4090", 165e12), ("3090", 71e12), ("V100", 125e12),
    ("T4", 65e12),
)


def device_peak_flops(device: torch.device) -> float:
    """A CUDA device's bf16 peak from GPU_PEAK_FLOPS, 0.0 when unknown (CPUs have no table entry)."""
    if device.type != "cuda":
        return 0.0
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in GPU_PEAK_FLOPS if key in name), 0.0)


class Throughput:
    """Turns (updates, seconds) of a log window into the rate keys of a training row."""

    def __init__(self, model: Any, dataset: Any, global_batch: int, world_size: int, peak_flops: float,
                 device: torch.device) -> None:
        self.global_batch = global_batch
        self.tokens_per_sample = getattr(dataset, "tokens_per_sample", None)
        flops = getattr(model, "flops_per_token", None)
        self.flops_per_token: float | None = float(flops()) if callable(flops) else None
        self.peak = (peak_flops or device_peak_flops(device)) * world_size  # all devices together

    def rates(self, updates: int, seconds: float) -> dict[str, float]:
        samples = updates * self.global_batch / seconds if seconds > 0 else 0.0
        row = {"samples_per_s": samples}
        if self.tokens_per_sample:
            tokens = samples * self.tokens_per_sample
            row["tokens_per_s"] = tokens
            if self.flops_per_token:
                row["model_flops_per_s"] = tokens * self.flops_per_token
                if self.peak:
                    row["mfu"] = row["model_flops_per_s"] / self.peak
        return row


@dataclass
class Window:
    """The current log window's wall time and updates, for the throughput keys of the next row."""

    start: float = field(default_factory=time.perf_counter)
    updates: int = 0
    first_update_s: float | None = None  # the process's first update: compile and warm-up included

    def count(self, restart_after_first: bool) -> None:
        self.updates += 1
        if self.first_update_s is None:
            self.first_update_s = time.perf_counter() - self.start
            if restart_after_first:  # compile time is reported apart from the training speed
                self.restart()

    def seconds(self) -> float:
        return time.perf_counter() - self.start

    def restart(self) -> None:
        self.start, self.updates = time.perf_counter(), 0
