"""The entry point: check the options, run the cases in order, write the JSON as rows come."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from brainnet.bench.accounting import detect_peak_flops
from brainnet.bench.cases import CASES, case_names, run_case
from brainnet.bench.harness import BenchOptions
from brainnet.bench.report import git_commit, meta, write_json
from brainnet.bench.shapes import SCALING_N, SHAPES
from brainnet.config import ScenarioError
from brainnet.engine.allocator import keep_freed_memory
from brainnet.engine.device import resolve_device


class BenchError(ValueError):
    """A bad bench option; the message is one line naming the option, the value, what is allowed."""


def parse_list(option: str, value: str, allowed: list[str]) -> list[str]:
    """``--shapes baby,small`` -> names, each checked against ``allowed``."""
    items = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in items if v not in allowed] or ([] if items else [value])
    if bad:
        raise BenchError(
            f"{option} {value!r}: unknown value {bad[0]!r}; allowed: a comma-separated list of "
            f"{', '.join(allowed)}"
        )
    return items


def parse_counts(option: str, value: str) -> list[int]:
    """``--n 8,64`` -> module counts, each a whole number >= 1."""
    items = [v.strip() for v in value.split(",")]
    for v in items:
        if not v.isdigit() or int(v) < 1:
            raise BenchError(
                f"{option} {value!r}: {v!r} is not a module count; allowed: comma-separated "
                "whole numbers >= 1, e.g. 8,64"
            )
    return [int(v) for v in items]


def parse_device(device: str) -> torch.device:
    """``--device auto|cpu|cuda|cuda:N`` -> the device (auto: CUDA when there is one)."""
    if not (device in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", device)):
        raise BenchError(f"--device {device!r}: unknown device; allowed: auto, cpu, cuda, cuda:N")
    try:
        dev = resolve_device("cuda" if device.startswith("cuda") else device)
    except ScenarioError as e:
        raise BenchError(f"--device {device!r}: {e.problems[0].split(': ', 1)[-1]}") from None
    return torch.device(device) if ":" in device else dev


def run_bench(
    cases: list[str] | str | None = None,
    n: list[int] | str | None = None,
    shapes: list[str] | str | None = None,
    *,
    device: str = "auto",
    steps: int | None = None,
    warmup: int | None = None,
    compile: bool | None = None,
    peak_flops: float | None = None,
    quick: bool = False,
    out: str | Path | None = None,
    log: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Run the benchmark; returns one dict per (case, shape, N) (skipped ones say why).

    Defaults: every registered case, N = 8, 64, shapes baby and small, 20 timed steps after 5
    warm-up steps on CUDA (5 after 2 on the CPU), compiled cases on. ``quick``: the ``tiny``
    shape at N = 4, 2 steps after 1, scaling at N = 4, 8, no compilation (seconds on 2 cores);
    explicit arguments still win. ``out``: also write JSON (meta, results, ratios) there.
    ``log(row)`` is called after every row. Raises BenchError for a bad option.
    """
    names = case_names()
    cases = parse_list("--cases", cases, names) if isinstance(cases, str) else cases or names
    for c in cases:
        parse_list("--cases", c, names)
    shapes = parse_list("--shapes", shapes, list(SHAPES)) if isinstance(shapes, str) else shapes
    shapes = shapes or (["tiny"] if quick else ["baby", "small"])
    for sh in shapes:
        parse_list("--shapes", sh, list(SHAPES))
    n = parse_counts("--n", n) if isinstance(n, str) else n or ([4] if quick else [8, 64])
    if steps is not None and steps < 1:
        raise BenchError(f"--steps {steps}: must be >= 1")
    if warmup is not None and warmup < 0:
        raise BenchError(f"--warmup {warmup}: must be >= 0")
    if peak_flops is not None and not peak_flops > 0:
        raise BenchError(f"--peak-flops {peak_flops:g}: must be > 0 (FLOP/s, e.g. 989e12)")
    dev = parse_device(device)
    cuda = dev.type == "cuda"
    if peak_flops is None:
        peak, source = detect_peak_flops(dev, quick)
    else:
        peak, source = peak_flops, "--peak-flops"
    opts = BenchOptions(
        device=dev,
        n=list(n),
        shapes=list(shapes),
        steps=steps or (2 if quick else 20 if cuda else 5),
        warmup=warmup if warmup is not None else (1 if quick else 5 if cuda else 2),
        compile=compile if compile is not None else not quick,
        peak_flops=peak,
        peak_source=source,
        commit=git_commit(),
        scaling_n=[4, 8] if quick else list(SCALING_N),
        scaling_shape="tiny" if quick else "small",
    )
    started = time.time()
    rows: list[dict[str, Any]] = []
    keep_freed_memory()  # as every CPU Simulation does: the same allocator for every case
    for name in sorted(cases, key=names.index):
        for row in run_case(CASES.get(name), opts):
            rows.append(row)
            if log is not None:
                log(row)
            if out is not None:  # after every row: a long run that dies keeps what it measured
                write_json(out, rows, meta(opts, cases, quick, time.time() - started))
    return rows
