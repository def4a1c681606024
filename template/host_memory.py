"""Keep freed host memory for the next update instead of handing it back to the OS (glibc malloc).

Why: on CPU, torch allocates every activation and gradient with the system allocator. glibc serves
blocks over its mmap threshold (128 KiB at first, then adapting to what was freed before) with a fresh
mmap() and gives the top of its heap back to the OS whenever more than its trim threshold is free, so
each update page-faults much of its working set in again. Measured on the benchmark's mid MLP (1 CPU
thread): ~4,500 minor page faults and ~40 ms per update, against ~360 faults and ~34 ms with the fixed
thresholds below; which hand-written loop paid the faults depended on its allocation order. The
settings only make malloc keep what a training step frees for the next step (the CUDA caching
allocator does the same for GPU memory): peak memory is unchanged, idle memory is not returned.

Why on by default, measured (`scripts/benchmark.py --sections malloc`: the hand-written loop with and
without it, paired fresh processes, 95% intervals; README, Benchmark): it pays where an update's
activations are larger than glibc's mmap threshold (mid MLP, 1 MiB activations: 1.17x [1.06, 1.21],
~3,400 -> ~10 faults per update; the CPU GPT, 4 MiB attention scores: 1.03x [0.99, 1.09], ~2,000 -> ~20
faults) and has no cost to detect where they are not (small MLP, 16 KiB activations, no faults either
way: 1.06x [0.94, 1.15] over 37 pairs).

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
