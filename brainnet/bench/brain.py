"""The brain workload: the whole society through ``Simulation.train_step``, with the cost of
the EMA update and of peer distillation measured inside the same run."""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor

from brainnet.bench.harness import Setting, Workload
from brainnet.bench.timing import PhaseTimer, sync
from brainnet.config import load_scenario
from brainnet.engine.simulation import Simulation

#: the brain case distils every K steps (the design's consolidation period); timed windows
#: hold whole periods, so the distillation share is the amortised cost per step
DISTILL_EVERY = 5


def brain_clusters(n: int) -> int | None:
    """Clusters of the benchmark society: 4 (brain.yaml) when they get >= 2 modules each,
    else clusters of 2 modules; None when N cannot be split so (odd, or < 4)."""
    if n % 4 == 0 and n >= 8:
        return 4
    if n % 2 == 0 and n >= 4:
        return n // 2
    return None


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

    Each timed step is also timed on its own, and the EMA update inside it too (``ema_ms``,
    through the Simulation's ``timer`` hook, phase "teacher_update"), so the cost of
    distillation comes from the same run: a consolidation step minus a plain step, plus the EMA
    update of every step (``no_distill_step_ms``, ``distill_share``)."""
    if s.compiled:
        torch._dynamo.reset()
    sim = Simulation(brain_scenario(s))
    sim.timer = timer = PhaseTimer(s.device)
    B, T = s.batch_size, s.shape.block_size
    steps: dict[str, list[float]] = {"consolidate": [], "plain": []}

    def step() -> Tensor:
        kind = "consolidate" if sim.scenario.distill.due(sim.step + 1) else "plain"
        t0 = time.perf_counter()
        loss = sim.train_step()["train_loss"]
        sync(s.device)
        steps[kind].append(time.perf_counter() - t0)
        return loss

    def start() -> None:
        timer.clear()
        for t in steps.values():
            t.clear()

    return Workload(
        step=step,
        module_tokens=int(sim.module_tokens_per_step()),  # the Simulation's count: rounds, capacity
        corpus_tokens=B * T,
        params=sim.banks[0].num_params_per_module(non_embedding=True),
        start=start,
        extras=lambda: distill_cost({"ema": timer.times["teacher_update"], **steps}),
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
