"""Where a sweep's tasks run: one interface, a local process pool or Ray.

Both run ``worker.run_task`` once per run and hand back a ``concurrent.futures.Future``, so
the driver has one code path. Each run gets ``threads`` torch threads, chosen so that the
workers together use the machine's (or the cluster node's) cores once.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Protocol

from brainnet.config import ScenarioError
from brainnet.sweep.worker import Task, init_worker, run_task

BACKENDS = ("local", "ray")


class Executor(Protocol):
    """Runs tasks; ``recover`` makes it usable again after a task was lost (its worker died)."""

    name: str
    workers: int  # runs at once
    threads: int  # torch threads per run
    restarts: int  # workers replaced after a loss so far

    def submit(self, task: Task) -> Future[dict[str, Any]]: ...

    def recover(self, lost: Future[dict[str, Any]]) -> None: ...

    def close(self) -> None: ...


def cores() -> int:
    """CPU cores this process may use."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class LocalExecutor:
    """A ``ProcessPoolExecutor`` (forkserver where there is one, else spawn: no fork of a
    process that has threads). A worker that dies breaks the pool: every task in it is lost,
    and ``recover`` replaces the pool once for all of them."""

    name = "local"

    def __init__(self, workers: int, n_cores: int | None = None) -> None:
        self.workers = workers
        self.threads = max(1, (n_cores or cores()) // workers)
        self.restarts = 0
        forkserver = "forkserver" in multiprocessing.get_all_start_methods()
        self._ctx = multiprocessing.get_context("forkserver" if forkserver else "spawn")
        if self._ctx.get_start_method() == "forkserver":  # workers fork with brainnet imported
            self._ctx.set_forkserver_preload(["brainnet.sweep.worker"])
        self._generation = 0
        self._pool = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(self.workers, mp_context=self._ctx, initializer=init_worker,
                                   initargs=(os.getpid(),))  # fmt: skip

    def submit(self, task: Task) -> Future[dict[str, Any]]:
        try:
            fut = self._pool.submit(run_task, task)
        except BrokenProcessPool:  # broke since the last submit: replace it now
            self._restart()
            fut = self._pool.submit(run_task, task)
        fut.generation = self._generation  # type: ignore[attr-defined]
        return fut

    def recover(self, lost: Future[dict[str, Any]]) -> None:
        if getattr(lost, "generation", None) == self._generation:  # this pool broke
            self._restart()

    def _restart(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)  # its workers were terminated
        self._pool = self._new_pool()
        self._generation += 1
        self.restarts += 1

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class RayExecutor:
    """Ray tasks (``pip install 'brainnet[ray]'``): ``address`` joins a running cluster, else a
    local instance is started (and stopped at ``close``). A task asks for ``threads`` CPUs and
    ``gpus`` GPUs (fractional: many small societies share one GPU; 0 without GPUs). Ray does
    not retry a lost task by itself; the driver resubmits it. On a cluster, every node needs
    brainnet installed and the sweep directory on storage they all see (paths are absolute)."""

    name = "ray"

    def __init__(self, workers: int, address: str | None = None, gpus: float | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise ScenarioError(
                [
                    "--backend ray: ray is not installed; allowed: local, or pip install "
                    "'brainnet[ray]'"
                ]  # fmt: skip
            ) from None
        self._ray = ray
        self._owned = not ray.is_initialized()
        if self._owned:
            try:
                ray.init(address=address, include_dashboard=False, log_to_driver=False,
                         logging_level="WARNING")  # fmt: skip
            except (ConnectionError, RuntimeError, ValueError) as e:
                where = f"--address {address}" if address else "--backend ray"
                first = (str(e).splitlines() or [type(e).__name__])[0]
                raise ScenarioError([f"{where}: cannot start or join Ray: {first}"]) from None
        total = ray.cluster_resources()
        node = max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n["Alive"]), default=1)
        self.workers = workers
        self.threads = max(1, min(int(node), int(total.get("CPU", 1)) // workers))
        n_gpus = total.get("GPU", 0)
        if gpus is None:
            gpus = min(1.0, n_gpus / workers) if n_gpus else 0.0
        elif gpus > 0 and not n_gpus:
            self.close()
            why = "the Ray cluster has no GPU; allowed: 0"
            raise ScenarioError([f"--gpus-per-run {gpus:g}: {why}"])
        self.gpus = gpus
        self.restarts = 0
        self._remote = ray.remote(num_cpus=self.threads, num_gpus=gpus, max_retries=0)(run_task)

    def submit(self, task: Task) -> Future[dict[str, Any]]:
        return self._remote.remote(task).future()

    def recover(self, lost: Future[dict[str, Any]]) -> None:
        self.restarts += 1  # Ray replaces the worker itself

    def close(self) -> None:
        if self._owned and self._ray.is_initialized():
            self._ray.shutdown()


def make_executor(
    backend: str, workers: int, address: str | None = None, gpus: float | None = None
) -> Executor:
    """The executor of ``backend`` (local or ray); bad options are ScenarioErrors."""
    if backend not in BACKENDS:
        raise ScenarioError([f"--backend {backend!r}: must be one of 'local' or 'ray'"])
    if workers < 1:
        raise ScenarioError([f"--workers {workers}: must be >= 1"])
    if backend == "local":
        if address is not None:
            raise ScenarioError([f"--address {address}: only with --backend ray"])
        if gpus:
            raise ScenarioError(
                [
                    f"--gpus-per-run {gpus:g}: only with --backend ray (local workers share the "
                    "visible GPUs through device: auto)"
                ]  # fmt: skip
            )
        return LocalExecutor(workers)
    return RayExecutor(workers, address, gpus)
