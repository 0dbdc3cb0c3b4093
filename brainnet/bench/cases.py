"""The case registry and the built-in cases.

A *grid* case runs once per (shape, N) of the options; another case (``scaling``,
``reorganize``) runs its own list. Adding one is a function and a decorator; nothing else
changes::

    @case("reorganize", "a replace event at N=256, timed", grid=False, order=70)
    def _reorganize(opts: BenchOptions) -> Iterator[dict]: ...
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from brainnet.bench.brain import brain_clusters, brain_workload
from brainnet.bench.harness import BenchOptions, Setting, base_row, measure
from brainnet.bench.memory import free_memory
from brainnet.bench.reorganize import reorganize_point
from brainnet.bench.workloads import bank_workload, loop_workload
from brainnet.registry import Registry

GridFn = Callable[[Setting, BenchOptions], dict[str, Any]]
OwnFn = Callable[[BenchOptions], Iterator[dict[str, Any]]]


@dataclass(frozen=True)
class Case:
    """A named benchmark. A grid case's ``fn(setting, opts)`` returns one row and runs once
    per (shape, N) of the options; another case's ``fn(opts)`` yields rows for its own list.
    A ``compiled`` grid case gets ``Setting.compiled`` and is skipped (a row saying so) when
    compilation is off. ``order`` sets the run order."""

    name: str
    help: str
    fn: GridFn | OwnFn
    grid: bool = True
    compiled: bool = False
    order: int = 50


CASES: Registry[Case] = Registry("bench case")


def case(name: str, help: str, *, grid: bool = True, compiled: bool = False, order: int = 50):
    """Decorator: register ``fn`` as the bench case ``name`` (returns ``fn`` unchanged)."""

    def add(fn: Any) -> Any:
        CASES.add(name, Case(name, help, fn, grid, compiled, order))
        return fn

    return add


def case_names() -> list[str]:
    """Registered cases in run order."""
    return sorted(CASES.names(), key=lambda n: (CASES.get(n).order, n))


def run_case(c: Case, opts: BenchOptions) -> Iterator[dict[str, Any]]:
    """The rows of one case: its own list, or one per (shape, N) of the options."""
    if not c.grid:
        yield from c.fn(opts)  # type: ignore[call-arg]
        return
    for shape in opts.shapes:
        for n in opts.n:
            s = Setting(c.name, shape, n, opts.device, c.compiled)
            if c.compiled and not opts.compile:
                yield base_row(s, opts, skipped="compilation off")
            else:
                yield guarded(c.fn, s, opts)  # type: ignore[arg-type]


def guarded(fn: GridFn, s: Setting, opts: BenchOptions) -> dict[str, Any]:
    """Run one setting; a compile failure or an out-of-memory becomes a skipped row."""
    try:
        return fn(s, opts)
    except torch.OutOfMemoryError:
        return base_row(s, opts, skipped="out of memory")
    except Exception as e:
        if s.compiled and _is_compile_error(e):
            return base_row(s, opts, skipped=f"torch.compile failed: {_first_line(e)}")
        raise
    finally:
        free_memory(opts.device)


def _is_compile_error(e: Exception) -> bool:
    mod = type(e).__module__
    return mod.startswith(("torch._dynamo", "torch._inductor")) or "compile" in str(e).lower()


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:200]


# --------------------------------------------------------------------------- the cases


@case("loop", "naive loop: N TinyLM models, one AdamW each, one after the other", order=10)
def _loop(s: Setting, opts: BenchOptions) -> dict[str, Any]:
    return measure(loop_workload(s), s, opts)


@case("bank", "TransformerBank: all N modules in one forward / backward, one AdamW", order=20)
def _bank(s: Setting, opts: BenchOptions) -> dict[str, Any]:
    return measure(bank_workload(s), s, opts)


case("bank_compiled", "bank with torch.compile of the loss function", compiled=True, order=30)(
    _bank
)


@case("brain", "the brain society (router, blackboard, 2 rounds, EMA + peer KD)", order=40)
def _brain(s: Setting, opts: BenchOptions) -> dict[str, Any]:
    """With the EMA + distillation share from the same run (``distill_cost``)."""
    if brain_clusters(s.n) is None:
        return base_row(s, opts, skipped=f"N = {s.n}: the society needs an even N >= 4")
    return measure(brain_workload(s), s, opts)


case("brain_compiled", "the brain society with compile: true", compiled=True, order=50)(_brain)


@case("scaling", "bank step time per module at N = 16 ... 256 small modules", grid=False, order=60)
def _scaling(opts: BenchOptions) -> Iterator[dict[str, Any]]:
    """The eager bank at each N of ``opts.scaling_n``: linear cost means a flat ms/module."""
    for n in opts.scaling_n:
        yield guarded(_scaling_point, Setting("scaling", opts.scaling_shape, n, opts.device), opts)


def _scaling_point(s: Setting, opts: BenchOptions) -> dict[str, Any]:
    row = measure(bank_workload(s), s, opts)
    row["step_ms_per_module"] = row["step_ms"] / s.n
    return row


@case("reorganize", "one emergence event (split + spawn) at N = 256 small modules", grid=False,
      order=70)  # fmt: skip
def _reorganize(opts: BenchOptions) -> Iterator[dict[str, Any]]:
    """A brain of max(scaling N) modules (16 clusters) with an EMA teacher: one training step,
    then one reorganisation event timed end to end (``reorganize_point``)."""
    s = Setting("reorganize", opts.scaling_shape, max(opts.scaling_n), opts.device)
    yield guarded(reorganize_point, s, opts)
