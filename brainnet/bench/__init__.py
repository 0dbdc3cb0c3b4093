"""``brainnet bench``: how fast modules train, alone in a loop, stacked in a bank, in a society.

Every case trains for ``warmup`` untimed steps, then ``steps`` timed ones, and reports:

* step time, throughput in **module-token passes** per second (a token processed by one active
  module in one round counts once: N·B·T per step for the loop and the bank, the Simulation's
  own count for the society, feedback rounds included) and in corpus tokens per second (B·T);
* MFU, nanoGPT's accounting: ``6·P + 12·L·H·Q·T`` FLOPs per module-token pass (P parameters
  of one module without the position embedding, L layers, H heads, Q head dim, T block size)
  against the device's peak (a table for known GPUs; on the CPU a sustained fp32 matmul
  measured at start-up; or ``peak_flops``);
* peak memory: CUDA ``torch.cuda.max_memory_allocated``; CPU the process's peak resident set
  (VmHWM), reset per case through ``/proc/self/clear_refs`` (see ``PeakMemory``).

The files, from the ground up:

* ``shapes.py``: the module shapes (``SHAPES``) and the scaling sweep;
* ``timing.py``: device sync and ``PhaseTimer`` (the Simulation's ``timer`` hook);
* ``accounting.py``: FLOPs per module-token pass, MFU, the device's peak;
* ``memory.py``: ``PeakMemory`` and giving memory back between cases;
* ``harness.py``: ``BenchOptions``, ``Setting``, ``Workload`` and ``measure``;
* ``workloads.py``: the loop and bank workloads; ``brain.py``: the society;
  ``reorganize.py``: one emergence event;
* ``cases.py``: the ``CASES`` registry (``@case``) and the built-in cases;
* ``targets.py``: the issue's ``TARGETS`` and ``ratios``;
* ``report.py``: the JSON file and the rich tables; ``run.py``: ``run_bench``.
"""

from __future__ import annotations

from brainnet.bench.accounting import (
    bank_module_tokens,
    detect_peak_flops,
    flops_per_module_token,
    mfu,
)
from brainnet.bench.brain import DISTILL_EVERY, brain_clusters, brain_scenario, distill_cost
from brainnet.bench.cases import CASES, Case, case, case_names
from brainnet.bench.harness import BenchOptions, Setting, Workload, measure
from brainnet.bench.memory import PeakMemory
from brainnet.bench.reorganize import REORGANIZE_ACTIONS
from brainnet.bench.report import default_out, meta, tables, write_json
from brainnet.bench.run import BenchError, parse_counts, parse_list, run_bench
from brainnet.bench.shapes import SCALING_N, SHAPES, Shape
from brainnet.bench.targets import RATIOS, TARGETS, ratios
from brainnet.bench.timing import PhaseTimer
from brainnet.bench.workloads import bank_loss_fn, bank_step, bank_workload, loop_workload

__all__ = [
    "CASES",
    "DISTILL_EVERY",
    "RATIOS",
    "REORGANIZE_ACTIONS",
    "SCALING_N",
    "SHAPES",
    "TARGETS",
    "BenchError",
    "BenchOptions",
    "Case",
    "PeakMemory",
    "PhaseTimer",
    "Setting",
    "Shape",
    "Workload",
    "bank_loss_fn",
    "bank_module_tokens",
    "bank_step",
    "bank_workload",
    "brain_clusters",
    "brain_scenario",
    "case",
    "case_names",
    "default_out",
    "detect_peak_flops",
    "distill_cost",
    "flops_per_module_token",
    "loop_workload",
    "measure",
    "meta",
    "mfu",
    "parse_counts",
    "parse_list",
    "ratios",
    "run_bench",
    "tables",
    "write_json",
]
