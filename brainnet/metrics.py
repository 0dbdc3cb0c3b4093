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
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq


class RunWriter:
    """Creates a run directory and writes config, vocabulary, metrics and events into it."""

    def __init__(self, root: str | Path, name: str) -> None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        base = Path(root) / f"{name}-{stamp}"
        path, i = base, 1
        while path.exists():
            path, i = base.with_name(f"{base.name}-{i}"), i + 1
        path.mkdir(parents=True)
        self.path = path
        self.rows: list[dict[str, Any]] = []
        self.last_event = ""
        self.module_rows: list[dict[str, Any]] = []

    def write_text(self, name: str, text: str) -> None:
        _atomic_write(self.path / name, text.encode())

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


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
