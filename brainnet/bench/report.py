"""What a run leaves: the JSON file (meta, results, ratios) and the two rich tables."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import torch

from brainnet.bench.harness import BenchOptions
from brainnet.bench.targets import ratios
from brainnet.engine.allocator import keep_freed_memory


def meta(opts: BenchOptions, cases: list[str], quick: bool, wall_s: float) -> dict[str, Any]:
    """Where and how the numbers were measured."""
    dev = opts.device
    assert opts.memory is not None
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "machine": cpu_name(),
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "commit": opts.commit,
        "peak_flops": opts.peak_flops,
        "peak_flops_source": opts.peak_source,
        "memory": opts.memory.kind,
        "memory_baseline_mb": opts.memory.baseline_mb,
        "keep_freed_memory": keep_freed_memory(),  # glibc keeps freed blocks (allocator.py)
        "options": {
            "cases": cases,
            "n": opts.n,
            "shapes": opts.shapes,
            "steps": opts.steps,
            "warmup": opts.warmup,
            "compile": opts.compile,
            "quick": quick,
            "scaling_n": opts.scaling_n,
            "scaling_shape": opts.scaling_shape,
        },
        "wall_s": round(wall_s, 1),
    }


def write_json(path: str | Path, rows: list[dict[str, Any]], info: dict[str, Any]) -> Path:
    """Write {meta, results, ratios} to ``path`` (parent directories created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"meta": info, "results": rows, "ratios": ratios(rows)}
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


def default_out() -> Path:
    """runs/bench-<time>.json, beside the run directories of ``brainnet run``."""
    return Path("runs") / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"


def tables(rows: list[dict[str, Any]]) -> list[Any]:
    """Two rich tables (narrow enough for 80 columns): the measurements, and the ratios with
    their targets. Full precision is in the JSON."""
    from rich import box
    from rich.table import Table

    t = Table(title="brainnet bench", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    t.add_column("case", no_wrap=True)
    t.add_column("shape", no_wrap=True)
    for name in ("N", "ms/step", "mod-tok/s", "tok/s", "MFU %", "MB"):
        t.add_column(name, justify="right", no_wrap=True)
    t.add_column("note")
    for r in rows:
        head = (r["case"], r["shape"], str(r["n_modules"]))
        if r.get("skipped"):
            t.add_row(*head, "", "", "", "", "", r["skipped"])
            continue
        if r["case"] == "reorganize":  # an event, not a training step
            note = f"{r['actions']}: {r['reorganize_ms']:,.0f} ms, modules {r['modules']}, "
            note += f"clusters {r['clusters']}; next step {r['first_step_after_ms']:,.0f} ms"
            t.add_row(*head, "", "", "", "", "", note)
            continue
        note = []
        if r.get("distill_share") is not None:
            note.append(f"EMA+KD {100 * r['distill_share']:.0f} %")
        if r.get("step_ms_per_module") is not None:
            note.append(f"{r['step_ms_per_module']:.2f} ms/module")
        t.add_row(
            *head, f"{r['step_ms']:,.1f}", si(r["module_tokens_per_s"]), si(r["tokens_per_s"]),
            f"{100 * r['mfu']:.2f}", f"{r['peak_mem_mb']:,.0f}", ", ".join(note),
        )  # fmt: skip
    q = Table(title="ratios (same run)", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for name in ("ratio", "shape", "N", "value", "target", ""):
        q.add_column(name, justify="right" if name == "value" else "left", no_wrap=True)
    for r in ratios(rows):
        mark = {True: "[green]ok[/]", False: "[red]miss[/]", None: ""}[r["ok"]]
        q.add_row(r["name"], r["shape"], str(r["n"]), f"{r['value']:.2f}", r["target"] or "",
                  mark)  # fmt: skip
    return [t, q]


def si(x: float) -> str:
    """1234567 -> '1.23M', 45678 -> '45.7k' (3 significant digits)."""
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if x >= div:
            return f"{x / div:.3g}{unit}"
    return f"{x:.3g}"


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def git_commit() -> str | None:
    """``git describe --always --dirty`` of the source tree, or None outside a checkout."""
    try:
        res = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=7"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if res.returncode != 0:
        return None
    return res.stdout.strip() or None
