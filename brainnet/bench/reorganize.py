"""The reorganisation workload: one emergence event in a large brain, timed end to end."""

from __future__ import annotations

import tempfile
import time
from typing import Any

from brainnet.bench.brain import brain_scenario
from brainnet.bench.harness import BenchOptions, Setting, base_row
from brainnet.bench.timing import sync
from brainnet.config import load_scenario
from brainnet.engine.simulation import Simulation

#: the reorganisation case: actions of one emergence event, at the largest scaling N
REORGANIZE_ACTIONS = ["split", "spawn"]


def reorganize_point(s: Setting, opts: BenchOptions) -> dict[str, Any]:
    """A brain of ``s.n`` modules (clusters of 16) with an EMA teacher: a few training steps,
    then one reorganisation event (evidence, both actions, banks + AdamW + EMA + router
    resized, topology rebuilt, events and graph files written) and the first step after it."""
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
        sync(s.device)
        t0 = time.perf_counter()
        sim.reorganize(sim.step, logits, "bench", {"delta_phi": 1.0, "theta": 0.5})
        sync(s.device)
        dt = time.perf_counter() - t0
        t1 = time.perf_counter()
        sim.train_step()  # the first step after: new index tensors (and a recompile if compiled)
        sync(s.device)
        after = time.perf_counter() - t1
        row = base_row(s, opts)
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
