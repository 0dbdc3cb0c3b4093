"""The sweep's index: one row per run, rebuilt from the runs' markers.

A run directory is FINISHED when it holds ``done.json`` (its metrics, written atomically after
the run's last flush), FAILED when it holds ``failed.json`` (the one-line error), and
unfinished otherwise: a run that never started, or one whose worker died. The driver rewrites
``index.parquet`` (atomically) from the markers after every run, so a killed driver loses
nothing that a run finished.

Columns of ``index.parquet``:

    id                       <group>/seed=<n>, also the run directory relative to the sweep's
    group, scenario          the group's name and its scenario (built-in name or file)
    overrides                JSON of the group's dotted overrides (set, group set, grid point)
    seed, status, error      done | failed | pending; the one-line error of a failed run
    wall_s                   the run's wall time in its worker (build, train, write)
    steps                    optimiser steps trained
    final_val_loss           the last validation loss
    final_train_loss         the training loss of the last logged interval
    final_val_answer_loss    the last evaluation's loss on answer tokens (binding tasks; null
                             for a corpus without answers, and in an index written before it)
    final_val_answer_acc     the last evaluation's accuracy on answer tokens (likewise)
    messages_per_step        messages (every kind: the `messages` column) per step
    bytes_per_step           bytes those messages carry per step
    sim_time_ms              simulated time of a step (null for independent modules: no clock)
    module_tokens_per_step   module-token passes per step (a token through one module once)
    params_total             parameters of the society: every module and the router
    active_params_per_token  parameters a corpus token passes through in one step (compute)
    run_dir                  the run directory, relative to the sweep directory

Readers take an index as it is on disk: one written before a column existed lacks it (the
report shows a dash), and a ``done.json`` without a metric gives a null in the rebuilt row.

The per-step columns are means over all trained steps (the logged intervals weighted by their
length), so that arousal's changes of k and rounds count for as long as they lasted.
Independent modules send no messages: their messages and bytes are 0.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from brainnet.metrics import atomic_write

DONE, FAILED = "done.json", "failed.json"

#: the metrics a finished run's done.json holds (and its index row shows)
METRICS: dict[str, pa.DataType] = {
    "wall_s": pa.float64(),
    "steps": pa.int64(),
    "final_val_loss": pa.float64(),
    "final_train_loss": pa.float64(),
    "final_val_answer_loss": pa.float64(),
    "final_val_answer_acc": pa.float64(),
    "messages_per_step": pa.float64(),
    "bytes_per_step": pa.float64(),
    "sim_time_ms": pa.float64(),
    "module_tokens_per_step": pa.float64(),
    "params_total": pa.int64(),
    "active_params_per_token": pa.float64(),
}
SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("group", pa.string()),
        ("scenario", pa.string()),
        ("overrides", pa.string()),
        ("seed", pa.int64()),
        ("status", pa.string()),
        ("error", pa.string()),
        *METRICS.items(),
        ("run_dir", pa.string()),
    ]
)


def read_marker(run_dir: Path) -> tuple[str, dict[str, Any]]:
    """(``done`` | ``failed`` | ``pending``, the marker's contents) of a run directory."""
    for status, name in (("done", DONE), ("failed", FAILED)):
        f = run_dir / name
        if f.is_file():
            return status, json.loads(f.read_text())
    return "pending", {}


def write_marker(run_dir: Path, name: str, content: dict[str, Any]) -> None:
    atomic_write(run_dir / name, json.dumps(content, indent=1).encode())


def index_row(run: Any, sweep_dir: Path) -> dict[str, Any]:
    """The index row of a planned run (``plan.PlannedRun``), from its directory's markers."""
    status, marker = read_marker(sweep_dir / run.id)
    row = {
        "id": run.id,
        "group": run.group.name,
        "scenario": run.group.scenario,
        "overrides": run.overrides_json,
        "seed": run.seed,
        "status": status,
        "error": marker.get("error") if status == "failed" else None,
        **{k: marker.get(k) if status == "done" else None for k in METRICS},
        "run_dir": run.id,
    }
    if status == "failed":
        row["wall_s"] = marker.get("wall_s")
    return row


def write_index(sweep_dir: Path, rows: list[dict[str, Any]]) -> None:
    """Rewrite ``index.parquet`` whole (a temporary file, then ``os.replace``)."""
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    tmp = sweep_dir / ".index.parquet.tmp"
    pq.write_table(table, tmp)
    os.replace(tmp, sweep_dir / "index.parquet")
