"""Chaos: a sweep of 16 tiny runs whose pool workers a thread SIGKILLs at random, at least 8
times. Re-running the sweep until it is done, every run finishes exactly once (one done.json;
its directory holds one run_start and one run_end) with the final metrics of an undisturbed
sweep."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from pathlib import Path

import pytest
from test_sweep import TINY, driver, events, grandchildren, write

import brainnet
from brainnet.metrics import open_sweep
from brainnet.sweep.index import METRICS

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")

KILLS = 8


def spec() -> dict:
    return {
        "name": "chaos",
        "base": "quickstart",
        "seeds": list(range(8)),
        "set": {**TINY, "train.steps": 8},
        "groups": [{"name": "brain"}, {"name": "solo", "set": {"society": None}}],
    }


def finals(index) -> dict[str, dict]:
    return {r["id"]: {k: r[k] for k in METRICS if k != "wall_s"} for r in index.to_pylist()}


def test_killed_workers_never_make_a_run_finish_twice_or_differ(tmp_path):
    calm = brainnet.sweep(spec(), out=tmp_path / "calm", workers=2)
    assert calm.index.column("status").to_pylist() == ["done"] * 16

    f = write(tmp_path / "chaos.yaml", spec())
    out = tmp_path / "chaos"
    current: list[int] = []  # pid of the driver now running
    killed: list[int] = []
    stop = threading.Event()
    rng = random.Random(0)

    def killer() -> None:
        while not stop.is_set() and len(killed) < KILLS:
            workers = grandchildren(current[-1]) if current else []
            if not workers:
                time.sleep(0.02)
                continue
            time.sleep(rng.uniform(0.05, 0.5))
            victim = rng.choice(workers)
            try:
                os.kill(victim, signal.SIGKILL)
                killed.append(victim)
            except ProcessLookupError:
                pass

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        for _ in range(20):
            proc = driver(f, out, workers=2)
            current.append(proc.pid)
            proc.wait(timeout=120)
            status = open_sweep(out / "chaos").index.column("status").to_pylist()
            if status == ["done"] * 16 and len(killed) >= KILLS:
                break
            assert proc.returncode in (0, 1), proc.stderr.read().decode()[-2000:]
    finally:
        stop.set()
        thread.join(timeout=10)
    assert len(killed) >= KILLS, f"the sweep finished after {len(killed)} kills"
    chaos = open_sweep(out / "chaos")
    assert chaos.index.column("status").to_pylist() == ["done"] * 16
    assert finals(chaos.index) == finals(calm.index)
    for id in chaos.ids():
        run = out / "chaos" / id
        assert [p.name for p in run.glob("*.json") if p.name in ("done.json", "failed.json")] == [
            "done.json"
        ]
        kinds = events(run)
        assert kinds.count("run_start") == 1 and kinds.count("run_end") == 1, (id, kinds)
    dirs = sorted(str(p.relative_to(out / "chaos")) for p in (out / "chaos").glob("*/seed=*"))
    assert dirs == sorted(chaos.ids())  # nothing half-written or unmarked is left
