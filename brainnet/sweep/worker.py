"""The one function a sweep task runs, in a pool process or a Ray worker: set the thread count,
train the scenario into its exact run directory, mark it done (or failed), return its metrics.

A run holds a lock (``<group>/.seed=<n>.lock``, beside its directory) while it works, so a
run is never worked on twice at once: a task that finds the run finished returns its marker
without training, and one that finds leftovers of a run whose worker died removes them first.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from brainnet.config import ScenarioError, load_scenario
from brainnet.config_errors import one_line
from brainnet.engine import Simulation
from brainnet.sweep.index import DONE, FAILED, read_marker, write_marker

try:
    import fcntl
except ImportError:  # not on Windows: runs are then not locked
    fcntl = None  # type: ignore[assignment]

#: the pid of the driver whose pool this process serves (None in a Ray worker)
_DRIVER: int | None = None


@dataclass(frozen=True)
class Task:
    """What a worker needs for one run (plain data: it travels by pickle)."""

    id: str  # <group>/seed=<n>
    run_dir: str  # absolute
    scenario: dict[str, Any]  # the resolved scenario (JSON types)
    threads: int  # torch threads of this run


def init_worker(driver: int) -> None:
    """Pool-process initializer: end this process as soon as the driver ends. (A pool's
    workers otherwise wait forever for work from a dead driver, or finish a run nobody
    collects while the next driver redoes it.)"""
    global _DRIVER
    _DRIVER = driver
    threading.Thread(target=_watch, args=(driver,), name="watch-driver", daemon=True).start()


def _watch(driver: int) -> None:
    try:
        fd = os.pidfd_open(driver)  # Linux: readable once the driver has exited
    except (AttributeError, OSError):
        while _alive(driver):
            time.sleep(0.5)
    else:
        select.select([fd], [], [])
    os._exit(1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_task(task: Task) -> dict[str, Any]:
    """Run one task; never raises for a problem of the run itself (that is ``failed.json``).
    Returns ``{"id", "status": done | failed, ...the marker}``."""
    if torch.get_num_threads() != task.threads:
        torch.set_num_threads(task.threads)
    run_dir = Path(task.run_dir)
    with _locked(run_dir):
        if _DRIVER is not None and not _alive(_DRIVER):
            os._exit(1)  # the task of a killed driver: its sweep will be run again
        status, marker = read_marker(run_dir)
        if status == "done":  # finished by an earlier task: never redone
            return {"id": task.id, "status": status, **marker}
        if run_dir.exists():
            shutil.rmtree(run_dir)
        t0 = time.perf_counter()
        try:
            metrics = _train(task, run_dir)
        except Exception as e:
            run_dir.mkdir(parents=True, exist_ok=True)
            failed = {"error": error_line(e), "wall_s": round(time.perf_counter() - t0, 3)}
            write_marker(run_dir, FAILED, {**failed, "traceback": traceback.format_exc()})
            return {"id": task.id, "status": "failed", **failed}
        metrics = {"wall_s": round(time.perf_counter() - t0, 3), **metrics}
        write_marker(run_dir, DONE, metrics)
        return {"id": task.id, "status": "done", **metrics}


def error_line(e: BaseException) -> str:
    """One line: a ScenarioError's problems, else ``Type: first line of the message``."""
    if isinstance(e, ScenarioError):
        return "; ".join(e.problems)
    first = (str(e).strip().splitlines() or [""])[0]
    return one_line(f"{type(e).__name__}: {first}" if first else type(e).__name__)


def _train(task: Task, run_dir: Path) -> dict[str, Any]:
    sim = Simulation(load_scenario(task.scenario), run_dir=run_dir)
    sim.run()  # its last flush comes before done.json
    return final_metrics(sim)


def final_metrics(sim: Simulation) -> dict[str, Any]:
    """The index's metrics of a trained simulation (brainnet/sweep/index.py lists them).

    ``active_params_per_token`` = module-token passes per corpus token × parameters of a
    module (all of them, embedding included; the mean over modules if types differ): the
    module parameters a token passes through in one step, counting each firing (feedback
    rounds, every cluster the router chose, buffer rows it padded). The router is left out:
    it reads only the first ``router.context`` tokens of a sequence. ``params_total`` counts
    every parameter of the society, router included."""
    sc = sim.scenario
    rows = sim.writer.rows if sim.writer is not None else []
    evals = [r for r in rows if r.get("val_loss") is not None]
    vals = [r["val_loss"] for r in evals]
    train = [r for r in rows if r.get("tokens_per_s") is not None]
    tokens = sc.train.batch_size * sim.corpus.block_size  # corpus tokens per step
    weights, prev = [], 0
    for r in train:
        weights.append(r["step"] - prev)
        prev = r["step"]

    def mean(values: list[float | None]) -> float | None:
        if not values or any(v is None for v in values):
            return None
        return sum(w * v for w, v in zip(weights, values, strict=True)) / sum(weights)  # type: ignore[misc]

    passes = mean([round(r["module_tokens_per_s"] / r["tokens_per_s"] * tokens) for r in train])
    n_modules = sim.society.n_modules
    per_module = sum(p.numel() for bank in sim.banks for p in bank.parameters()) / n_modules
    return {
        "steps": sim.step,
        "final_val_loss": vals[-1] if vals else None,
        "final_train_loss": train[-1]["train_loss"] if train else None,
        "final_val_answer_loss": evals[-1].get("val_answer_loss") if evals else None,
        "final_val_answer_acc": evals[-1].get("val_answer_acc") if evals else None,
        "messages_per_step": mean([r.get("messages", 0.0) for r in train]),
        "bytes_per_step": mean([r.get("bytes", 0.0) for r in train]),
        "sim_time_ms": mean([r.get("sim_time_ms") for r in train]),
        "module_tokens_per_step": passes,
        "params_total": sum(p.numel() for p in sim.society.parameters()),
        "active_params_per_token": None if passes is None else passes / tokens * per_module,
    }


@contextlib.contextmanager
def _locked(run_dir: Path) -> Iterator[None]:
    """Hold the run's lock (blocking until a task still working on it ends)."""
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield
        return
    with open(run_dir.parent / f".{run_dir.name}.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
