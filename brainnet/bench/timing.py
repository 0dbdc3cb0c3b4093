"""Timing on a device: wait for queued kernels, and time named phases of a training step."""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Iterator

import torch


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA kernels run asynchronously; the CPU does not)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PhaseTimer:
    """A ``Simulation.timer``: ``with timer("teacher_update"): ...`` syncs the device before and
    after the phase and records its seconds in ``times[phase]``, one entry per pass."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.times: defaultdict[str, list[float]] = defaultdict(list)

    @contextlib.contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        sync(self.device)
        t0 = time.perf_counter()
        yield
        sync(self.device)
        self.times[phase].append(time.perf_counter() - t0)

    def clear(self) -> None:
        self.times.clear()
