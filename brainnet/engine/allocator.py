"""Host memory: keep freed blocks for reuse instead of handing them back to the OS.

Why: every training step allocates and frees the same multi-megabyte activations. glibc's malloc
serves blocks above its mmap threshold with fresh ``mmap`` calls and trims the heap top back to
the OS, so on the CPU each step touches new, zero-filled pages: about 5,000 minor page faults per
bank pass and 5-8 % of a society pass on the 2-core benchmark machine (docs/benchmarks.md).
Fixing the mmap threshold at 32 MiB and never trimming lets the allocator reuse those blocks.
The price: the process keeps its peak heap (its resident size does not shrink after a peak).

Linux with glibc only (``mallopt``); elsewhere, or with ``BRAINNET_KEEP_FREED_MEMORY=0``,
nothing changes. PyTorch's own advice for CPU training (jemalloc / tcmalloc via LD_PRELOAD) works
too and needs no code; this is the in-process equivalent for the default allocator.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
MMAP_THRESHOLD_BYTES = 32 * 2**20  # glibc's largest allowed mmap threshold on 64-bit
_done: bool | None = None


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to keep freed memory for reuse (once per process).

    Returns whether the setting is in effect (False off Linux / glibc, or when the environment
    variable ``BRAINNET_KEEP_FREED_MEMORY`` is ``0``)."""
    global _done
    if _done is not None:
        return _done
    _done = False
    if not sys.platform.startswith("linux") or os.environ.get("BRAINNET_KEEP_FREED_MEMORY") == "0":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _done = bool(
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) and mallopt(M_TRIM_THRESHOLD, 2**31 - 1)
    )
    return _done
