"""Print a markdown table comparing run directories (reads run directories only).

    python -m brainnet.viz.table runs/topologies/*

Columns: scenario, topology, parameters, final validation loss, messages and bytes per step,
simulated time per step, wall time of the run.
"""

from __future__ import annotations

import sys
from pathlib import Path

from brainnet.metrics import open_run


def row(path: Path) -> dict[str, object]:
    run = open_run(path)
    rows = run.metrics.to_pylist()
    trained = [r for r in rows if r.get("tokens_per_s") is not None]
    start = next(e for e in run.events if e["kind"] == "run_start")
    end = next((e for e in run.events if e["kind"] == "run_end"), {})

    def mean(key: str) -> float:
        vals = [r[key] for r in trained if r.get(key) is not None]
        return sum(vals) / len(vals) if vals else 0.0

    soc = run.config.get("society") or {}
    return {
        "scenario": run.config["name"],
        "topology": soc.get("topology", "independent"),
        "params": start["params_total"],
        "val_loss": end.get("final_val_loss"),
        "messages": mean("messages"),
        "bytes": mean("bytes"),
        "sim_ms": mean("sim_time_ms"),
        "wall_s": end.get("wall_s"),
        "steps": end.get("steps"),
    }


def markdown(paths: list[Path]) -> str:
    head = (
        "| scenario | topology | parameters | val loss | messages / step | MB / step "
        "| simulated ms / step | wall s |\n| --- | --- | --- | --- | --- | --- | --- | --- |"
    )
    lines = [head]
    for r in sorted((row(p) for p in paths), key=lambda r: r["val_loss"] or 1e9):
        lines.append(
            f"| {r['scenario']} | {r['topology']} | {r['params']:,} | {r['val_loss']:.3f} "
            f"| {r['messages']:,.0f} | {r['bytes'] / 1e6:.2f} | {r['sim_ms']:.2f} "
            f"| {r['wall_s']:.0f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown([Path(p) for p in sys.argv[1:]]))
