"""Cap this process's CUDA memory at `$MEMORY_CAP_GB` GiB (torch's per-process fraction of the caching
allocator), so that a real `torch.OutOfMemoryError` comes at a size a test chooses. Without the variable, or
without CUDA, it does nothing. Imported through `imports:` (before the model is on the device)."""

from __future__ import annotations

import os

import torch

CAP_GB = float(os.environ.get("MEMORY_CAP_GB") or 0)
if CAP_GB and torch.cuda.is_available():
    total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, CAP_GB * 2**30 / total))
