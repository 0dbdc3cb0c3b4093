"""The sweep's driver: plan and validate every run, skip the finished ones, submit the rest to
an executor, collect, and keep ``index.parquet`` up to date.

Running the same sweep again skips finished runs (``done.json``) and redoes failed and
unfinished ones. A run lost with its worker (killed, out of memory) is resubmitted; after
``max_restarts`` losses the driver stops submitting, leaves the rest ``pending`` and returns
(run it again to finish). The index is rebuilt from the runs' markers, never from what a
worker said, so it records nothing a run directory does not hold.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from pathlib import Path
from typing import Any

import yaml

from brainnet.config import ScenarioError
from brainnet.config_errors import show
from brainnet.metrics import Sweep, atomic_write, open_sweep
from brainnet.sweep.executor import Executor, make_executor
from brainnet.sweep.index import index_row, read_marker, write_index
from brainnet.sweep.plan import PlannedRun, plan
from brainnet.sweep.spec import dump_spec, load_sweep
from brainnet.sweep.worker import Task, error_line

#: ``on_run(row)``: a run ended (its index row, status done or failed)
OnRun = Callable[[dict[str, Any]], None]
#: ``on_lost(id, error, resubmitted)``: a run's worker died before the run ended
OnLost = Callable[[str, str, bool], None]


def sweep(
    source: str | Path | dict[str, Any],
    *,
    out: str | Path = "runs/sweeps",
    workers: int = 1,
    backend: str = "local",
    address: str | None = None,
    gpus_per_run: float | None = None,
    max_restarts: int = 3,
    executor: Executor | None = None,
    on_start: Callable[[dict[str, Any]], None] | None = None,
    on_run: OnRun | None = None,
    on_lost: OnLost | None = None,
) -> Sweep:
    """Run a sweep file (or dict) into ``<out>/<name>/`` and return it opened (``open_sweep``).

    ``workers`` runs at once on ``backend`` ``local`` (a process pool) or ``ray`` (a local
    instance, or the cluster at ``address``); ``gpus_per_run`` (Ray) may be fractional.
    Every run's scenario is validated first: any problem raises ScenarioError (one line each)
    before anything is written. ``executor`` replaces the one the options describe.

    The local pool's processes import the main module (multiprocessing's rule): a script that
    calls ``sweep`` does so under ``if __name__ == "__main__":``."""
    spec, label = load_sweep(source)
    runs = plan(spec, label)
    path = Path(out) / str(spec.name)
    _check_finished(runs, path, label)
    status = {r.id: read_marker(path / r.id)[0] for r in runs}
    todo = [r for r in runs if status[r.id] != "done"]
    own = executor is None and bool(todo)
    if own:
        executor = make_executor(backend, workers, address, gpus_per_run)
    try:
        path.mkdir(parents=True, exist_ok=True)
        atomic_write(path / "sweep.yaml", dump_spec(spec).encode())
        rows = {r.id: index_row(r, path) for r in runs}
        write_index(path, list(rows.values()))
        if on_start is not None:
            on_start({"name": spec.name, "path": path, "runs": len(runs),
                      "groups": len(runs) // len(spec.seeds), "seeds": len(spec.seeds),
                      "finished": len(runs) - len(todo), "todo": len(todo),
                      "backend": getattr(executor, "name", backend),
                      "workers": getattr(executor, "workers", workers),
                      "threads": getattr(executor, "threads", None)})  # fmt: skip
        if todo:
            assert executor is not None
            _execute(todo, path, rows, executor, max_restarts, on_run, on_lost)
    finally:
        if own and executor is not None:
            executor.close()
    return open_sweep(path)


def _execute(
    todo: list[PlannedRun],
    path: Path,
    rows: dict[str, dict[str, Any]],
    executor: Executor,
    max_restarts: int,
    on_run: OnRun | None,
    on_lost: OnLost | None,
) -> None:
    """Submit every run, collect them as they end, resubmit lost ones, rewrite the index."""

    def task(r: PlannedRun) -> Task:
        sc = r.scenario.model_dump(mode="json")
        return Task(r.id, str((path / r.id).resolve()), sc, executor.threads)

    pending: dict[Future[dict[str, Any]], PlannedRun] = {executor.submit(task(r)): r for r in todo}
    while pending:
        done, _ = wait(pending, return_when=FIRST_COMPLETED)
        for fut in done:
            r = pending.pop(fut)
            rows[r.id] = row = index_row(r, path)  # the marker, not the worker's word
            if row["status"] != "pending":
                if on_run is not None:
                    on_run(row)
                continue
            exc = fut.exception()
            why = "the worker ended without marking the run" if exc is None else error_line(exc)
            executor.recover(fut)
            again = executor.restarts <= max_restarts
            if again:
                pending[executor.submit(task(r))] = r
            if on_lost is not None:
                on_lost(r.id, why, again)
        write_index(path, list(rows.values()))


def _check_finished(runs: list[PlannedRun], path: Path, label: str) -> None:
    """A finished run must have run the scenario the sweep now describes for it."""
    problems = []
    for r in runs:
        d = path / r.id
        if read_marker(d)[0] != "done" or not (d / "config.yaml").is_file():
            continue
        old = yaml.safe_load((d / "config.yaml").read_text())
        new = yaml.safe_load(r.scenario.to_yaml())
        if old != new:
            key, a, b = _first_difference(old, new)
            problems.append(
                f"{label}: run {r.id!r} in {str(path)!r} was finished with {key} = {show(a)}, "
                f"the sweep now says {show(b)}; allowed: the same scenario, another sweep "
                "name, or remove that run directory"
            )
    if problems:
        raise ScenarioError(problems)


def _first_difference(a: Any, b: Any, key: str = "") -> tuple[str, Any, Any]:
    """The first dotted field whose values differ in two (nested) mappings."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in [*a, *(k for k in b if k not in a)]:
            if a.get(k) != b.get(k):
                return _first_difference(a.get(k), b.get(k), f"{key}.{k}" if key else str(k))
    return key or "<top>", a, b
