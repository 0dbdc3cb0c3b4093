"""Numbers with error bars for sweeps: Student's t intervals, a table per group, the Pareto
front of loss against messages. numpy and scipy only (the bottom floor: viz uses it too)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from scipy import stats as _scipy_stats

#: the index columns ``group_table`` summarises (mean and t-interval half width)
TABLE_METRICS = (
    "final_val_loss",
    "final_val_answer_loss",
    "final_val_answer_acc",
    "messages_per_step",
    "bytes_per_step",
    "sim_time_ms",
    "module_tokens_per_step",
    "params_total",
    "active_params_per_token",
)


def t_interval(
    values: Iterable[float | None], confidence: float = 0.95
) -> tuple[float, float, int]:
    """(mean, half width, n) of the Student's t interval of the mean; None and NaN values are
    left out. The half width is NaN for n = 1 (and the mean too for n = 0)."""
    x = np.array([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    n = len(x)
    if n == 0:
        return math.nan, math.nan, 0
    mean = float(x.mean())
    if n == 1:
        return mean, math.nan, 1
    sem = float(x.std(ddof=1)) / math.sqrt(n)
    return mean, float(_scipy_stats.t.ppf((1 + confidence) / 2, n - 1)) * sem, n


def group_table(index: Any, confidence: float = 0.95) -> list[dict[str, Any]]:
    """One row per group of a sweep index (an Arrow table or a list of row dicts), in index
    order, over its finished runs: ``group``, ``n`` (finished runs), ``runs`` (all), and for
    each of ``TABLE_METRICS`` its mean (``<metric>``) and half width (``<metric>_ci``); NaN
    for a metric no finished run has (e.g. the answer losses of an index written before them)."""
    rows = index.to_pylist() if hasattr(index, "to_pylist") else list(index)
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(r["group"], []).append(r)
    table = []
    for group, members in groups.items():
        done = [r for r in members if r["status"] == "done"]
        out: dict[str, Any] = {"group": group, "n": len(done), "runs": len(members)}
        for m in TABLE_METRICS:
            mean, half, _ = t_interval((r.get(m) for r in done), confidence)
            out[m], out[f"{m}_ci"] = mean, half
        table.append(out)
    return table


def pareto_front(points: Sequence[Sequence[float]]) -> list[int]:
    """Indices (in input order) of the points no other point dominates, minimising both
    coordinates, e.g. (loss, messages per step). A point with a NaN (or None) is never on the
    front; equal points are all on it or all off."""
    pts = [(_num(a), _num(b)) for a, b in points]
    ok = [not (math.isnan(a) or math.isnan(b)) for a, b in pts]

    def dominated(i: int) -> bool:
        a, b = pts[i]
        return any(
            ok[j] and pts[j][0] <= a and pts[j][1] <= b and pts[j] != pts[i]
            for j in range(len(pts))
        )

    return [i for i in range(len(pts)) if ok[i] and not dominated(i)]


def _num(v: float | None) -> float:
    return math.nan if v is None else float(v)
