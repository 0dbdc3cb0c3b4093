"""The measuring harness: a Setting (case, shape, N), a Workload (one step and its counts),
and ``measure``, which warms up, times the steps and returns the result row."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from brainnet.bench.accounting import flops_per_module_token, mfu
from brainnet.bench.memory import PeakMemory
from brainnet.bench.shapes import SCALING_N, SHAPES, Shape
from brainnet.bench.timing import sync


@dataclass
class BenchOptions:
    """What one bench run measures and how long (see ``run_bench`` for the defaults)."""

    device: torch.device
    n: list[int]
    shapes: list[str]
    steps: int
    warmup: int
    compile: bool
    peak_flops: float
    peak_source: str
    commit: str | None = None  # of the source tree when the run started
    scaling_n: list[int] = field(default_factory=lambda: list(SCALING_N))
    scaling_shape: str = "small"
    memory: PeakMemory | None = None

    def __post_init__(self) -> None:
        if self.memory is None:
            self.memory = PeakMemory(self.device)


@dataclass(frozen=True)
class Setting:
    """One measured configuration: a case at one shape and module count."""

    case: str
    shape_name: str
    n: int
    device: torch.device
    compiled: bool = False

    @property
    def shape(self) -> Shape:
        return SHAPES[self.shape_name]

    @property
    def batch_size(self) -> int:
        return self.shape.batch_size(self.device)


@dataclass
class Workload:
    """A built case, ready to step: ``step()`` runs one full training step (forward, backward,
    clip, AdamW) and returns its loss as a device tensor, read once after the timed steps (the
    mean module CE; the society's task loss)."""

    step: Callable[[], Tensor]
    module_tokens: int  # module-token passes per step
    corpus_tokens: int  # B·T corpus tokens per step
    params: int  # parameters of one module, position embedding excluded (nanoGPT's P)
    start: Callable[[], None] | None = None  # called after the warm-up, before timing
    extras: Callable[[], dict[str, Any]] | None = None  # extra fields, read after timing
    cycle: int = 1  # warm-up and timed steps are rounded up to whole cycles (distill.every)


def measure(work: Workload, s: Setting, opts: BenchOptions) -> dict[str, Any]:
    """Warm up, time ``opts.steps`` steps, and return the result row."""
    dev = opts.device
    whole = lambda n: -(-n // work.cycle) * work.cycle  # noqa: E731 (round up to cycles)
    steps = whole(opts.steps)
    for _ in range(whole(opts.warmup)):
        work.step()
    sync(dev)
    assert opts.memory is not None
    opts.memory.reset()
    if work.start is not None:
        work.start()
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = work.step()
    sync(dev)
    dt = (time.perf_counter() - t0) / steps  # seconds per step
    shape = s.shape
    fpt = flops_per_module_token(
        work.params, shape.n_layer, shape.n_head, shape.d_model // shape.n_head, shape.block_size
    )
    mtps = work.module_tokens / dt
    row = base_row(s, opts)
    row.update(
        step_ms=1e3 * dt,
        timed_steps=steps,
        module_tokens_per_step=work.module_tokens,
        corpus_tokens_per_step=work.corpus_tokens,
        module_tokens_per_s=mtps,
        tokens_per_s=work.corpus_tokens / dt,
        params_per_module=work.params,
        flops_per_module_token=fpt,
        mfu=mfu(fpt, mtps, opts.peak_flops),
        peak_mem_mb=opts.memory.read(),
        loss=float(loss.detach().float()),
    )
    if work.extras is not None:
        row.update(work.extras())
    return row


def base_row(s: Setting, opts: BenchOptions, skipped: str | None = None) -> dict[str, Any]:
    """The fields every row has (a skipped row has only these, and the reason)."""
    return {
        "case": s.case,
        "shape": s.shape_name,
        "n_modules": s.n,
        "batch_size": s.batch_size,
        "block_size": s.shape.block_size,
        "device": str(opts.device),
        "compiled": s.compiled,
        "steps": opts.steps,
        "warmup": opts.warmup,
        "skipped": skipped,
    }
