"""Keep freed host memory for the next update instead of handing it back to the OS (glibc malloc).

Why: on CPU, torch allocates every activation and gradient with the system allocator. glibc serves
blocks over its mmap threshold (128 KiB at first, then adapting to what was freed before) with a fresh
mmap() and gives the top of its heap back to the OS whenever more than its trim threshold is free, so
each update page-faults much of its working set in again. The settings only make malloc keep what a
training step frees for the next step (the CUDA caching allocator does the same for GPU memory): peak
memory is unchanged, idle memory is not returned.

Why on by default: it pays where an update's activations are larger than glibc's mmap threshold (a mid-size
MLP, the CPU GPT) and costs nothing measurable where they are not; the figures are in docs/benchmark.md
(`scripts/benchmark.py --sections malloc`).

Left alone when the user chose an allocator: `MALLOC_*_` / `GLIBC_TUNABLES` settings, or jemalloc,
tcmalloc or mimalloc preloaded; and where the C library is not glibc (macOS, musl).
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Mapping

M_TRIM_THRESHOLD = -1  # glibc's <malloc.h>
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's largest allowed value on 64-bit (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD = 1 << 30
OTHER_ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc")
THRESHOLD_VARS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")


def user_chose_allocator(env: Mapping[str, str] | None = None) -> bool:
    """Thresholds set through the environment, or another allocator preloaded: theirs to keep."""
    env = os.environ if env is None else env
    if any(k in env for k in THRESHOLD_VARS):
        return True
    if "glibc.malloc" in env.get("GLIBC_TUNABLES", ""):
        return True
    return any(name in env.get("LD_PRELOAD", "") for name in OTHER_ALLOCATORS)


def keep_freed_memory(env: Mapping[str, str] | None = None) -> bool:
    """Fix glibc's mmap and trim thresholds for this process; True if they were set."""
    if not sys.platform.startswith("linux") or user_chose_allocator(env):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018  # glibc only: musl has no such symbol
    except (OSError, AttributeError):
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(M_TRIM_THRESHOLD,
                                                                                     TRIM_THRESHOLD))
