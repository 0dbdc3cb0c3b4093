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

Cases live in the ``CASES`` registry. A *grid* case runs once per (shape, N) of the options;
another case (``scaling``, later ``reorganize``) runs its own list. Adding one is a function and
a decorator; nothing else changes::

    @case("reorganize", "a replace event at N=256, timed", grid=False, order=70)
    def _reorganize(opts: BenchOptions) -> Iterator[dict]: ...

``ratios`` turns the rows into the comparisons the issue asks for (bank / loop, brain / bank,
compiled / eager, EMA + distillation share, per-module scaling) with their targets.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import os
import platform
import re
import resource
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from brainnet.config import ScenarioError, TrainConfig, load_scenario
from brainnet.data import Batch
from brainnet.data.text import TextCorpus
from brainnet.engine.allocator import keep_freed_memory
from brainnet.engine.optim import build_optimizer, clip_per_module
from brainnet.engine.simulation import Simulation, resolve_device, seed_everything
from brainnet.modules.bank import module_cross_entropy
from brainnet.modules.tiny_lm import TransformerBank, TransformerConfig
from brainnet.registry import Registry


class BenchError(ValueError):
    """A bad bench option; the message is one line naming the option, the value, what is allowed."""


# --------------------------------------------------------------------------- shapes


@dataclass(frozen=True)
class Shape:
    """A module shape (transformer hyper-parameters) and the batch it trains on."""

    n_layer: int
    n_head: int
    d_model: int
    block_size: int
    batch_cpu: int  # sequences per step on the CPU
    batch_cuda: int  # ... and on a GPU
    bias: bool = True

    def batch_size(self, device: torch.device) -> int:
        return self.batch_cuda if device.type == "cuda" else self.batch_cpu

    def config(self, count: int) -> TransformerConfig:
        return TransformerConfig(
            count=count,
            n_layer=self.n_layer,
            n_head=self.n_head,
            d_model=self.d_model,
            dropout=0.0,
            bias=self.bias,
            tie_weights=True,
        )


SHAPES: dict[str, Shape] = {
    # nanoGPT's shakespeare-char "baby" (scenarios/nanogpt_baby.yaml)
    "baby": Shape(n_layer=4, n_head=4, d_model=128, block_size=64, batch_cpu=16, batch_cuda=64,
                  bias=False),
    # the modules of scenarios/brain.yaml: 2 layers, d=64
    "small": Shape(n_layer=2, n_head=2, d_model=64, block_size=64, batch_cpu=16, batch_cuda=64),
    # --quick: seconds on 2 CPU cores
    "tiny": Shape(n_layer=1, n_head=2, d_model=32, block_size=32, batch_cpu=4, batch_cuda=8),
}  # fmt: skip

#: the issue's scaling sweep: bank step time per module at these N (``small`` modules)
SCALING_N = (16, 32, 64, 128, 256)

# --------------------------------------------------------------------------- accounting


def flops_per_module_token(params: int, n_layer: int, n_head: int, head_dim: int, T: int) -> int:
    """nanoGPT's estimate of training FLOPs (forward + backward) per token of one module:
    6 per parameter (2 forward, 4 backward) plus the attention scores, 12·L·H·Q·T."""
    return 6 * params + 12 * n_layer * n_head * head_dim * T


def mfu(flops_per_token: float, module_tokens_per_s: float, peak_flops: float) -> float:
    """Model FLOPs utilisation: achieved FLOP/s over the device's peak (a fraction)."""
    return flops_per_token * module_tokens_per_s / peak_flops


#: dense bf16 tensor-core peaks; first substring match of torch.cuda.get_device_name wins
CUDA_PEAK_FLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM
    ("H200", 989e12),  # and GH200
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("A10", 125e12),
)


def measure_matmul_flops(device: torch.device, n: int = 1024, seconds: float = 0.5) -> float:
    """Sustained FLOP/s of square matmuls (fp32 on the CPU, bf16 on a GPU): the best of a few
    timed bursts, about ``seconds`` in all. The CPU's peak for MFU (no vendor table there)."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    _sync(device)
    t0 = time.perf_counter()
    a @ b
    _sync(device)
    reps = max(1, int(seconds / 4 / max(time.perf_counter() - t0, 1e-6)))
    best = 0.0
    for _ in range(4):
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        _sync(device)
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t0))
    return best


def detect_peak_flops(device: torch.device, quick: bool = False) -> tuple[float, str]:
    """(peak FLOP/s, where it comes from) for ``device``."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, peak in CUDA_PEAK_FLOPS:
            if key in name:
                return peak, f"table: {name} bf16 dense"
        return measure_matmul_flops(device, 4096), f"measured: {name} bf16 matmul 4096²"
    n, s = (256, 0.05) if quick else (1024, 0.5)
    threads = torch.get_num_threads()
    return measure_matmul_flops(device, n, s), f"measured: fp32 matmul {n}², {threads} threads"


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


# --------------------------------------------------------------------------- options, rows


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
    _sync(dev)
    assert opts.memory is not None
    opts.memory.reset()
    if work.start is not None:
        work.start()
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = work.step()
    _sync(dev)
    dt = (time.perf_counter() - t0) / steps  # seconds per step
    shape = s.shape
    fpt = flops_per_module_token(
        work.params, shape.n_layer, shape.n_head, shape.d_model // shape.n_head, shape.block_size
    )
    mtps = work.module_tokens / dt
    row = _row(s, opts)
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


def _row(s: Setting, opts: BenchOptions, skipped: str | None = None) -> dict[str, Any]:
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


# --------------------------------------------------------------------------- the registry


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


def _run_case(c: Case, opts: BenchOptions) -> Iterator[dict[str, Any]]:
    if not c.grid:
        yield from c.fn(opts)  # type: ignore[call-arg]
        return
    for shape in opts.shapes:
        for n in opts.n:
            s = Setting(c.name, shape, n, opts.device, c.compiled)
            if c.compiled and not opts.compile:
                yield _row(s, opts, skipped="compilation off")
            else:
                yield _guarded(c.fn, s, opts)  # type: ignore[arg-type]


def _guarded(fn: GridFn, s: Setting, opts: BenchOptions) -> dict[str, Any]:
    """Run one setting; a compile failure or an out-of-memory becomes a skipped row."""
    try:
        return fn(s, opts)
    except torch.OutOfMemoryError:
        return _row(s, opts, skipped="out of memory")
    except Exception as e:
        if s.compiled and _is_compile_error(e):
            return _row(s, opts, skipped=f"torch.compile failed: {_first_line(e)}")
        raise
    finally:
        _free(opts.device)


def _is_compile_error(e: Exception) -> bool:
    mod = type(e).__module__
    return mod.startswith(("torch._dynamo", "torch._inductor")) or "compile" in str(e).lower()


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:200]


# --------------------------------------------------------------------------- the cases


def _data(s: Setting) -> tuple[int, list[Batch]]:
    """(vocab size, a few training batches on the device) of tinyshakespeare, char-level.
    The batches are cycled: data loading is not what the loop and bank cases measure."""
    corpus = TextCorpus(TextCorpus.Config(kind="text", block_size=s.shape.block_size))
    gen = torch.Generator().manual_seed(0)
    return corpus.vocab_size, [
        corpus.batch("train", s.batch_size, gen).to(s.device) for _ in range(4)
    ]


def _autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA, fp32 on the CPU: the Simulation's ``precision: auto``."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def loop_workload(s: Setting) -> Workload:
    """The naive reference: N independent ``TinyLM`` copies (the bank's initial rows), each
    with its own AdamW; forward, backward, clip and step one module after the other."""
    V, batches = _data(s)
    dev, N, T = s.device, s.n, s.shape.block_size
    cfg = TrainConfig(batch_size=s.batch_size)
    seed_everything(0)
    bank = TransformerBank(s.shape.config(N), V, T)
    models = [bank.export(m).to(dev).train() for m in range(N)]
    fused = dev.type == "cuda"
    opts = []
    for model in models:
        ps = list(model.parameters())
        groups = [
            {"params": [p for p in ps if p.dim() >= 2], "weight_decay": cfg.weight_decay},
            {"params": [p for p in ps if p.dim() < 2], "weight_decay": 0.0},
        ]
        kind = {"fused": True} if fused else {"foreach": True}  # one optimiser per module
        opts.append(torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, **kind))
    it = _cycle(batches)

    def step() -> Tensor:
        b, total = next(it), torch.zeros((), device=dev)
        for model, opt in zip(models, opts, strict=True):  # the Python loop the bank removes
            with _autocast(dev):
                logits = model(b.x)[0]  # [B, T, V]
                loss = F.cross_entropy(logits.reshape(-1, V).float(), b.y.reshape(-1))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip, foreach=True)
            opt.step()
            opt.zero_grad(set_to_none=True)
            total += loss.detach()
        return total / N  # mean module CE, as the bank's row

    B = s.batch_size
    return Workload(step, N * B * T, B * T, bank.num_params_per_module(non_embedding=True))


def bank_loss_fn(bank: TransformerBank) -> Callable[[Tensor, Tensor], Tensor]:
    """Every module on the whole batch: x, y [B, T] -> sum of the N module CEs (the
    Simulation's ``module_losses``: each module's gradient is that of its own mean loss)."""

    def loss_fn(x: Tensor, y: Tensor) -> Tensor:
        tokens = x.unsqueeze(0).expand(bank.n_modules, -1, -1)  # [N, B, T]
        return module_cross_entropy(bank(tokens).logits, y).sum()  # logits [N, B, T, V]

    return loss_fn


def bank_step(
    bank: TransformerBank, cfg: TrainConfig, device: torch.device, compiled: bool
) -> Callable[[Batch], Tensor]:
    """One training step of the bare bank: one batched forward / backward (``torch.compile``
    of the loss function when ``compiled``), per-module clip, one AdamW. Returns the loss."""
    opt = build_optimizer([bank], cfg, device)
    loss_fn = bank_loss_fn(bank)
    if compiled:
        torch._dynamo.reset()  # a fresh cache: earlier banks' guards must not pile up
        loss_fn = torch.compile(loss_fn)

    def step(b: Batch) -> Tensor:
        bank.train()
        with _autocast(device):
            loss = loss_fn(b.x, b.y)
        loss.backward()
        clip_per_module(bank, cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return step


def bank_workload(s: Setting) -> Workload:
    """The bare ``TransformerBank`` with all N modules (build_optimizer's AdamW)."""
    V, batches = _data(s)
    T, B = s.shape.block_size, s.batch_size
    seed_everything(0)
    bank = TransformerBank(s.shape.config(s.n), V, T).to(s.device)
    one = bank_step(bank, TrainConfig(batch_size=B), s.device, s.compiled)
    it = _cycle(batches)
    return Workload(
        step=lambda: one(next(it)).detach() / s.n,  # mean module CE (the step minimised the sum)
        module_tokens=s.n * B * T,
        corpus_tokens=B * T,
        params=bank.num_params_per_module(non_embedding=True),
    )


def brain_clusters(n: int) -> int | None:
    """Clusters of the benchmark society: 4 (brain.yaml) when they get >= 2 modules each,
    else clusters of 2 modules; None when N cannot be split so (odd, or < 4)."""
    if n % 4 == 0 and n >= 8:
        return 4
    if n % 2 == 0 and n >= 4:
        return n // 2
    return None


#: the brain case distils every K steps (the design's consolidation period); timed windows
#: hold whole periods, so the distillation share is the amortised cost per step
DISTILL_EVERY = 5


def brain_scenario(s: Setting) -> Any:
    """scenarios/brain.yaml at this shape and N on tinyshakespeare: router (top-2), blackboard,
    2 feedback rounds (arousal off, so they stay 2), EMA every step and a consolidation pass
    (EMA + peer distillation) every ``DISTILL_EVERY`` steps."""
    shape = s.shape
    overrides: dict[str, Any] = {
        "device": s.device.type,
        "compile": s.compiled,
        "corpus": {"kind": "text", "path": "tinyshakespeare", "block_size": shape.block_size},
        "modules.0.count": s.n,
        "modules.0.n_layer": shape.n_layer,
        "modules.0.n_head": shape.n_head,
        "modules.0.d_model": shape.d_model,
        "modules.0.bias": shape.bias,
        "modules.0.dropout": 0.0,
        "society.clusters": brain_clusters(s.n),
        "society.rounds": 2,
        "society.arousal.enabled": False,
        "society.arousal.k_range": None,  # fixed top-2 (brain.yaml lets arousal raise it to 3)
        "distill.enabled": True,
        "distill.teacher": "both",
        "distill.every": DISTILL_EVERY,
        "train.batch_size": s.batch_size,
        "train.eval_batches": 1,
    }
    return load_scenario("brain", overrides=overrides)


def brain_workload(s: Setting) -> Workload:
    """The full society through ``Simulation.train_step`` (compiled: ``compile: true``).

    Each timed step is also timed on its own, and the EMA update inside it too (``ema_ms``), so
    the cost of distillation comes from the same run: a consolidation step minus a plain step,
    plus the EMA update of every step (``no_distill_step_ms``, ``distill_share``)."""
    if s.compiled:
        torch._dynamo.reset()
    sim = Simulation(brain_scenario(s))
    B, T = s.batch_size, s.shape.block_size
    times: dict[str, list[float]] = {"ema": [], "consolidate": [], "plain": []}
    if sim.teacher is not None:
        update = sim.teacher.update

        def timed_update(step: int) -> float:
            _sync(s.device)
            t0 = time.perf_counter()
            m = update(step)
            _sync(s.device)
            times["ema"].append(time.perf_counter() - t0)
            return m

        sim.teacher.update = timed_update  # type: ignore[method-assign]

    def step() -> Tensor:
        kind = "consolidate" if sim.scenario.distill.due(sim.step + 1) else "plain"
        t0 = time.perf_counter()
        loss = sim.train_step()["train_loss"]
        _sync(s.device)
        times[kind].append(time.perf_counter() - t0)
        return loss

    return Workload(
        step=step,
        module_tokens=int(sim.module_tokens_per_step()),  # the Simulation's count: rounds, capacity
        corpus_tokens=B * T,
        params=sim.banks[0].num_params_per_module(non_embedding=True),
        start=lambda: [t.clear() for t in times.values()],
        extras=lambda: distill_cost(times),
        cycle=DISTILL_EVERY,
    )


def distill_cost(times: dict[str, list[float]]) -> dict[str, Any]:
    """EMA + distillation cost from one run's step times (seconds, by kind): a step without
    distillation is a plain step minus its EMA update; the share is what distillation adds to
    the mean step (consolidation steps included)."""
    mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
    ema, plain = mean(times["ema"]), mean(times["plain"])
    every = times["plain"] + times["consolidate"]
    out: dict[str, Any] = {"ema_ms": None if ema is None else 1e3 * ema}
    if ema is not None and plain is not None and times["consolidate"]:
        no_distill = plain - ema
        out["no_distill_step_ms"] = 1e3 * no_distill
        out["consolidate_step_ms"] = 1e3 * mean(times["consolidate"])
        out["distill_share"] = 1.0 - no_distill / mean(every)
    return out


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
        return _row(s, opts, skipped=f"N = {s.n}: the society needs an even N >= 4")
    return measure(brain_workload(s), s, opts)


case("brain_compiled", "the brain society with compile: true", compiled=True, order=50)(_brain)


@case("scaling", "bank step time per module at N = 16 ... 256 small modules", grid=False, order=60)
def _scaling(opts: BenchOptions) -> Iterator[dict[str, Any]]:
    """The eager bank at each N of ``opts.scaling_n``: linear cost means a flat ms/module."""
    for n in opts.scaling_n:
        yield _guarded(_scaling_point, Setting("scaling", opts.scaling_shape, n, opts.device), opts)


def _scaling_point(s: Setting, opts: BenchOptions) -> dict[str, Any]:
    row = measure(bank_workload(s), s, opts)
    row["step_ms_per_module"] = row["step_ms"] / s.n
    return row


#: the reorganisation case: actions of one emergence event, at the largest scaling N
REORGANIZE_ACTIONS = ["split", "spawn"]


@case("reorganize", "one emergence event (split + spawn) at N = 256 small modules", grid=False,
      order=70)  # fmt: skip
def _reorganize(opts: BenchOptions) -> Iterator[dict[str, Any]]:
    """A brain of max(scaling N) modules (16 clusters) with an EMA teacher: one training step,
    then one reorganisation event timed end to end (evidence, both actions, banks + AdamW +
    EMA + router resized, topology rebuilt, events and graph files written)."""
    s = Setting("reorganize", opts.scaling_shape, max(opts.scaling_n), opts.device)
    yield _guarded(_reorganize_point, s, opts)


def _reorganize_point(s: Setting, opts: BenchOptions) -> dict[str, Any]:
    import tempfile

    over = brain_scenario(s).model_dump(mode="json")
    over["society"]["clusters"] = max(2, s.n // 16)
    over["emergence"] = {"every": over["log"]["every"], "probe_sequences": 16}
    over["reorganize"] = {"actions": REORGANIZE_ACTIONS}
    with tempfile.TemporaryDirectory() as tmp:
        sim = Simulation(load_scenario(over), out_dir=tmp)
        for _ in range(max(1, opts.warmup)):
            sim.train_step()
        sim.open_run()
        logits = sim.standalone_logits(sim.probe)
        n_before, c_before = sim.n_modules, sim.society.topology.n_clusters
        _sync(s.device)
        t0 = time.perf_counter()
        sim.reorganize(sim.step, logits, "bench", {"delta_phi": 1.0, "theta": 0.5})
        _sync(s.device)
        dt = time.perf_counter() - t0
        t1 = time.perf_counter()
        sim.train_step()  # the first step after: new index tensors (and a recompile if compiled)
        _sync(s.device)
        after = time.perf_counter() - t1
        row = _row(s, opts)
        row.update(
            step_ms=None,
            reorganize_ms=1e3 * dt,
            actions="+".join(REORGANIZE_ACTIONS),
            modules=f"{n_before} -> {sim.n_modules}",
            clusters=f"{c_before} -> {sim.society.topology.n_clusters}",
            first_step_after_ms=1e3 * after,
        )
        sim.writer.flush()
    return row


# --------------------------------------------------------------------------- ratios


#: the issue's targets: name -> (minimum or maximum, bound); shape-specific ones by (name, shape)
TARGETS: dict[tuple[str, str | None], tuple[str, float]] = {
    ("bank / loop", "baby"): (">=", 1.0),
    ("bank / loop", "small"): (">=", 1.3),
    # the same targets for the compiled bank (compile: true is a CPU path too)
    ("bank_compiled / loop", "baby"): (">=", 1.0),
    ("bank_compiled / loop", "small"): (">=", 1.3),
    ("brain / bank", None): (">=", 0.5),
    ("brain_compiled / bank_compiled", None): (">=", 0.5),
    ("EMA + distill share", None): ("<=", 0.10),
    ("scaling max / min", "small"): ("<=", 1.3),
    ("reorganize s", None): ("<=", 1.0),
}

#: (ratio name, numerator case, denominator case), on module-token throughput
RATIOS = (
    ("bank / loop", "bank", "loop"),
    ("bank_compiled / loop", "bank_compiled", "loop"),
    ("bank_compiled / bank", "bank_compiled", "bank"),
    ("brain / bank", "brain", "bank"),
    ("brain_compiled / bank_compiled", "brain_compiled", "bank_compiled"),
    ("brain_compiled / brain", "brain_compiled", "brain"),
)


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The comparisons of one run, each with its target (None when the issue sets none) and
    ``ok``: bank / loop, compiled / eager, brain / bank (module-token throughput at the same
    shape and N), the EMA + distillation share of a brain step, and the scaling spread."""
    done = [r for r in rows if not r.get("skipped")]
    by = {(r["case"], r["shape"], r["n_modules"]): r for r in done if r["case"] != "scaling"}
    points = sorted({(r["shape"], r["n_modules"]) for r in done if r["case"] != "scaling"})
    out = []
    for shape, n in points:
        for name, num, den in RATIOS:
            a, b = by.get((num, shape, n)), by.get((den, shape, n))
            if a and b:
                value = a["module_tokens_per_s"] / b["module_tokens_per_s"]
                out.append(_ratio(name, shape, n, value))
        brain = by.get(("brain", shape, n))
        if brain and brain.get("distill_share") is not None:
            out.append(_ratio("EMA + distill share", shape, n, brain["distill_share"]))
    scaling = [r for r in done if r["case"] == "scaling"]
    if len(scaling) >= 2:
        per = [r["step_ms_per_module"] for r in scaling]
        span = f"{scaling[0]['n_modules']}..{scaling[-1]['n_modules']}"
        out.append(_ratio("scaling max / min", scaling[0]["shape"], span, max(per) / min(per)))
    for r in (r for r in done if r["case"] == "reorganize"):
        out.append(_ratio("reorganize s", r["shape"], r["n_modules"], r["reorganize_ms"] / 1e3))
    return out


def _ratio(name: str, shape: str, n: int | str, value: float) -> dict[str, Any]:
    target = TARGETS.get((name, shape)) or TARGETS.get((name, None))
    ok = None
    if target is not None:
        op, bound = target
        ok = value >= bound if op == ">=" else value <= bound
    text = None if target is None else f"{target[0]} {target[1]:g}"
    return {"name": name, "shape": shape, "n": n, "value": value, "target": text, "ok": ok}


# --------------------------------------------------------------------------- the entry point


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
    if not (device in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", device)):
        raise BenchError(f"--device {device!r}: unknown device; allowed: auto, cpu, cuda, cuda:N")
    try:
        dev = resolve_device("cuda" if device.startswith("cuda") else device)
    except ScenarioError as e:
        raise BenchError(f"--device {device!r}: {e.problems[0].split(': ', 1)[-1]}") from None
    dev = torch.device(device) if ":" in device else dev
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
        commit=_git_commit(),
        scaling_n=[4, 8] if quick else list(SCALING_N),
        scaling_shape="tiny" if quick else "small",
    )
    started = time.time()
    rows: list[dict[str, Any]] = []
    keep_freed_memory()  # as every CPU Simulation does: the same allocator for every case
    for name in sorted(cases, key=names.index):
        for row in _run_case(CASES.get(name), opts):
            rows.append(row)
            if log is not None:
                log(row)
            if out is not None:  # after every row: a long run that dies keeps what it measured
                write_json(out, rows, meta(opts, cases, quick, time.time() - started))
    return rows


def meta(opts: BenchOptions, cases: list[str], quick: bool, wall_s: float) -> dict[str, Any]:
    """Where and how the numbers were measured."""
    dev = opts.device
    assert opts.memory is not None
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "machine": _cpu_name(),
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "commit": opts.commit,
        "peak_flops": opts.peak_flops,
        "peak_flops_source": opts.peak_source,
        "memory": opts.memory.kind,
        "memory_baseline_mb": opts.memory.baseline_mb,
        "keep_freed_memory": keep_freed_memory(),  # glibc keeps freed blocks (allocator.py)
        "options": {
            "cases": cases,
            "n": opts.n,
            "shapes": opts.shapes,
            "steps": opts.steps,
            "warmup": opts.warmup,
            "compile": opts.compile,
            "quick": quick,
            "scaling_n": opts.scaling_n,
            "scaling_shape": opts.scaling_shape,
        },
        "wall_s": round(wall_s, 1),
    }


def write_json(path: str | Path, rows: list[dict[str, Any]], info: dict[str, Any]) -> Path:
    """Write {meta, results, ratios} to ``path`` (parent directories created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"meta": info, "results": rows, "ratios": ratios(rows)}
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


def default_out() -> Path:
    """runs/bench-<time>.json, beside the run directories of ``brainnet run``."""
    return Path("runs") / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"


# --------------------------------------------------------------------------- tables


def tables(rows: list[dict[str, Any]]) -> list[Any]:
    """Two rich tables (narrow enough for 80 columns): the measurements, and the ratios with
    their targets. Full precision is in the JSON."""
    from rich import box
    from rich.table import Table

    t = Table(title="brainnet bench", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    t.add_column("case", no_wrap=True)
    t.add_column("shape", no_wrap=True)
    for name in ("N", "ms/step", "mod-tok/s", "tok/s", "MFU %", "MB"):
        t.add_column(name, justify="right", no_wrap=True)
    t.add_column("note")
    for r in rows:
        head = (r["case"], r["shape"], str(r["n_modules"]))
        if r.get("skipped"):
            t.add_row(*head, "", "", "", "", "", r["skipped"])
            continue
        if r["case"] == "reorganize":  # an event, not a training step
            note = f"{r['actions']}: {r['reorganize_ms']:,.0f} ms, modules {r['modules']}, "
            note += f"clusters {r['clusters']}; next step {r['first_step_after_ms']:,.0f} ms"
            t.add_row(*head, "", "", "", "", "", note)
            continue
        note = []
        if r.get("distill_share") is not None:
            note.append(f"EMA+KD {100 * r['distill_share']:.0f} %")
        if r.get("step_ms_per_module") is not None:
            note.append(f"{r['step_ms_per_module']:.2f} ms/module")
        t.add_row(
            *head, f"{r['step_ms']:,.1f}", _si(r["module_tokens_per_s"]), _si(r["tokens_per_s"]),
            f"{100 * r['mfu']:.2f}", f"{r['peak_mem_mb']:,.0f}", ", ".join(note),
        )  # fmt: skip
    q = Table(title="ratios (same run)", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for name in ("ratio", "shape", "N", "value", "target", ""):
        q.add_column(name, justify="right" if name == "value" else "left", no_wrap=True)
    for r in ratios(rows):
        mark = {True: "[green]ok[/]", False: "[red]miss[/]", None: ""}[r["ok"]]
        q.add_row(r["name"], r["shape"], str(r["n"]), f"{r['value']:.2f}", r["target"] or "",
                  mark)  # fmt: skip
    return [t, q]


def _si(x: float) -> str:
    """1234567 -> '1.23M', 45678 -> '45.7k' (3 significant digits)."""
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if x >= div:
            return f"{x / div:.3g}{unit}"
    return f"{x:.3g}"


# --------------------------------------------------------------------------- helpers


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cycle(items: list[Batch]) -> Iterator[Batch]:
    while True:
        yield from items


def _free(device: torch.device) -> None:
    """Give memory back between cases, so that each case's peak is its own."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    else:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def _git_commit() -> str | None:
    """``git describe --always --dirty`` of the source tree, or None outside a checkout."""
    try:
        res = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=7"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if res.returncode != 0:
        return None
    return res.stdout.strip() or None


__all__ = [
    "CASES",
    "SHAPES",
    "BenchError",
    "BenchOptions",
    "Case",
    "Setting",
    "Shape",
    "Workload",
    "bank_step",
    "brain_clusters",
    "distill_cost",
    "case",
    "case_names",
    "default_out",
    "detect_peak_flops",
    "flops_per_module_token",
    "measure",
    "mfu",
    "ratios",
    "run_bench",
    "tables",
    "write_json",
]
