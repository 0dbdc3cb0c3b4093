"""The run directory: everything a report, a comparison or a resumed run needs.

    runs/<scenario>-<YYYYmmdd-HHMMSS>/
      config.yaml            the resolved scenario (every default filled in), seed included
      vocab.json             the corpus vocabulary
      metrics.parquet        one row per logged step (scalars)
      module_metrics.parquet one row per logged step and module (long table)
      events.jsonl           run start / evaluations / checkpoints / end, one JSON object a line
      checkpoint.pt          latest checkpoint (atomic write, torch.load(weights_only=True))

Parquet files are rewritten whole (atomically) at every flush: tables are small (one row per
logged step) and a crash never leaves a file that cannot be read.

A sweep (``brainnet sweep``) is a directory of such runs, read with ``open_sweep``::

    runs/sweeps/<sweep>/
      sweep.yaml             the sweep spec as run (name filled in, file paths absolute)
      index.parquet          one row per run (rewritten atomically by the sweep's driver)
      <group>/seed=<n>/      a run directory as above, plus done.json or failed.json
"""

from __future__ import annotations

import itertools
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq


class RunWriter:
    """Creates a run directory and writes config, vocabulary, metrics and events into it.

    ``RunWriter(root, name)`` claims a new ``<root>/<name>-<YYYYmmdd-HHMMSS>[-i]``: each
    candidate is created with ``mkdir(exist_ok=False)``, so two runs started in the same second
    (other processes included) get different directories. ``RunWriter(path=DIR)`` writes to
    exactly ``DIR`` (a sweep's ``<group>/seed=<n>``), which must not exist or be empty.
    """

    def __init__(
        self,
        root: str | Path | None = None,
        name: str | None = None,
        *,
        path: str | Path | None = None,
    ) -> None:
        if path is not None:
            self.path = _claim_exact(Path(path))
        elif root is not None and name is not None:
            self.path = _claim_new(Path(root), name)
        else:
            raise TypeError("RunWriter needs root and name, or path")
        self.rows: list[dict[str, Any]] = []
        self.last_event = ""
        self.module_rows: list[dict[str, Any]] = []

    @classmethod
    def reopen(cls, path: str | Path, step: int) -> RunWriter:
        """An existing run directory, to go on from a checkpoint at ``step``: its metrics rows
        up to ``step`` are kept (rows a killed run logged after its last checkpoint are
        dropped: the resumed run logs them again), events.jsonl is appended to."""
        self = cls.__new__(cls)
        self.path = Path(path)
        self.last_event = ""
        self.rows, self.module_rows = [], []
        for name, rows in (("metrics.parquet", self.rows),
                           ("module_metrics.parquet", self.module_rows)):  # fmt: skip
            f = self.path / name
            if f.exists():
                rows.extend(r for r in pq.read_table(f).to_pylist() if r["step"] <= step)
        self.dropped_events = self._cut_events(step)
        return self

    def _cut_events(self, step: int) -> int:
        """Keep events.jsonl up to the ``checkpoint`` event of ``step`` (what came after it is
        logged again by the resumed run); returns how many lines were dropped."""
        f = self.path / "events.jsonl"
        if not f.exists():
            return 0
        lines = f.read_text().splitlines(keepends=True)
        cut = len(lines)
        for i, line in enumerate(lines):
            try:
                e = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a kill mid-write
                cut = min(cut, i)
                break
            if e.get("kind") == "checkpoint" and e.get("step") == step:
                cut = i + 1
        if cut < len(lines):
            atomic_write(f, "".join(lines[:cut]).encode())
        return len(lines) - cut

    def write_text(self, name: str, text: str) -> None:
        atomic_write(self.path / name, text.encode())

    def write_json(self, name: str, obj: Any) -> None:
        self.write_text(name, json.dumps(obj, indent=1))

    def event(self, kind: str, step: int, **fields: Any) -> None:
        """Append one event (a line of JSON) to events.jsonl."""
        rec = {"step": step, "kind": kind, "time": round(time.time(), 3), **fields}
        if kind not in ("eval", "checkpoint", "run_start", "run_end"):
            self.last_event = f"{kind}@{step}"  # shown by the progress bar
        with open(self.path / "events.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")

    def log(self, row: dict[str, Any], module_rows: list[dict[str, Any]]) -> None:
        self.rows.append(row)
        self.module_rows.extend(module_rows)

    def flush(self) -> None:
        """Rewrite the Parquet tables with everything logged so far."""
        for name, rows in (
            ("metrics.parquet", self.rows),
            ("module_metrics.parquet", self.module_rows),
        ):
            if rows:
                keys = dict.fromkeys(k for r in rows for k in r)  # union, first-seen order
                table = pa.Table.from_pylist([{k: r.get(k) for k in keys} for r in rows])
                tmp = self.path / f".{name}.tmp"
                pq.write_table(table, tmp)
                os.replace(tmp, self.path / name)


@dataclass
class Run:
    """A run directory opened for reading (see ``open_run``)."""

    path: Path
    config: dict[str, Any]
    metrics: pa.Table
    module_metrics: pa.Table
    events: list[dict[str, Any]]


def open_run(path: str | Path) -> Run:
    """Read a run directory's config, metrics (as Arrow tables; ``.to_pandas()`` if you like)
    and events."""
    import yaml

    path = Path(path)
    if not (path / "config.yaml").is_file():
        raise FileNotFoundError(f"run directory {str(path)!r}: no config.yaml (not a brainnet run)")

    def table(name: str) -> pa.Table:
        f = path / name
        return pq.read_table(f) if f.is_file() else pa.table({})

    events = []
    if (path / "events.jsonl").is_file():
        events = [
            json.loads(line) for line in (path / "events.jsonl").read_text().splitlines() if line
        ]
    return Run(
        path=path,
        config=yaml.safe_load((path / "config.yaml").read_text()),
        metrics=table("metrics.parquet"),
        module_metrics=table("module_metrics.parquet"),
        events=events,
    )


@dataclass
class Sweep:
    """A sweep directory opened for reading (see ``open_sweep``): the spec, the index (one row
    per run, an Arrow table) and each run directory."""

    path: Path
    spec: dict[str, Any]
    index: pa.Table

    def ids(self, status: str | None = None) -> list[str]:
        """Run ids (``<group>/seed=<n>``) in index order; only those with ``status`` if given."""
        rows = self.index.select(["id", "status"]).to_pylist()
        return [r["id"] for r in rows if status is None or r["status"] == status]

    def run(self, id: str) -> Run:
        """One run of the sweep, opened with ``open_run`` (metrics, module metrics, events)."""
        if id not in self.ids():
            raise KeyError(f"sweep {str(self.path)!r} has no run {id!r}; runs: {self.ids()}")
        return open_run(self.path / id)

    def runs(self, status: str | None = "done") -> dict[str, Run]:
        """Id -> opened run, for the runs with ``status`` (default: the finished ones)."""
        return {id: open_run(self.path / id) for id in self.ids(status)}


def open_sweep(path: str | Path) -> Sweep:
    """Read a sweep directory written by ``brainnet sweep``: ``sweep.yaml`` (the spec as run)
    and ``index.parquet`` (one row per run: id, group, overrides, seed, status, error, wall
    time and final metrics; brainnet/sweep/index.py lists the columns)."""
    import yaml

    path = Path(path)
    if not (path / "index.parquet").is_file():
        raise FileNotFoundError(
            f"sweep directory {str(path)!r}: no index.parquet (not a brainnet sweep)"
        )
    spec_file = path / "sweep.yaml"
    spec = yaml.safe_load(spec_file.read_text()) if spec_file.is_file() else {}
    return Sweep(path=path, spec=spec or {}, index=pq.read_table(path / "index.parquet"))


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``path`` whole or not at all: a temporary file beside it, then ``os.replace``."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _claim_new(root: Path, name: str) -> Path:
    """Create and return a run directory no other run (thread or process) has."""
    base = root / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    root.mkdir(parents=True, exist_ok=True)
    for i in itertools.count():
        path = base if i == 0 else base.with_name(f"{base.name}-{i}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise AssertionError("unreachable")


def _claim_exact(path: Path) -> Path:
    """Create ``path`` (and its parents); an existing empty directory is taken as it is."""
    try:
        path.mkdir(parents=True)
    except FileExistsError:
        if not path.is_dir() or any(path.iterdir()):
            raise FileExistsError(
                f"run directory {str(path)!r} exists and is not empty; allowed: a new or empty "
                "directory"
            ) from None
    return path
