"""Peak memory of a timed region, and giving memory back between cases."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import resource
from pathlib import Path

import torch


class PeakMemory:
    """Peak memory of a timed region, in MB.

    CUDA: ``torch.cuda.max_memory_allocated`` (tensors only), reset per case.
    CPU (Linux): the process's peak resident set, VmHWM of /proc/self/status, reset per case by
    writing 5 to /proc/self/clear_refs: it includes the interpreter, torch and the corpus (a few
    hundred MB, ``baseline_mb``) and freed memory the allocator kept from earlier cases, not
    only the case's tensors.
    Elsewhere: ``resource.getrusage().ru_maxrss``, the peak over the process's whole life
    (never reset, so a case reports at least the peak of the cases before it).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        if device.type == "cuda":
            self.kind = "cuda max_memory_allocated"
        elif _clear_refs():
            self.kind = "peak RSS (VmHWM, reset per case)"
        else:
            self.kind = "ru_maxrss (process lifetime)"
        self.baseline_mb = self.read()

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            _clear_refs()

    def read(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        if self.kind.startswith("peak RSS"):
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def _clear_refs() -> bool:
    """Reset the process's peak RSS (Linux >= 4.0); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def free_memory(device: torch.device) -> None:
    """Give memory back between cases, so that each case's peak is its own."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    else:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)
