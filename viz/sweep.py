"""``brainnet report SWEEP_DIR`` and ``brainnet compare`` of sweeps: self-contained HTML pages.

A sweep directory (``brainnet sweep``) holds ``sweep.yaml`` (the spec), ``index.parquet`` (one
row per run: group, seed, status, the run's final numbers) and one ordinary run directory per
run (``<group>/seed=<n>/``). A *group* is one point of the grid; its seeds are repeats, so every
number of a group is shown as the mean ± the half-width of the 95 % t-interval over its finished
runs, with n beside it (one seed: the value alone, no interval).

The report has: a summary (name, base scenario, seeds, grid, runs done / failed / pending, each
failed run's one-line error), the group table, final validation loss against messages per step
(one point per group with its CI both ways, the Pareto front marked and joined; for binding
tasks the answer-token loss, with the no-communication floor and the ceiling as labelled lines)
and the loss curves by group (mean over seeds with a 95 % CI band). Images are embedded (base64
PNG), so the page is one file; a plot without data is a one-line note.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from brainnet.metrics import Run, open_run, open_sweep
from brainnet.stats import pareto_front
from brainnet.viz import sweep_plots
from brainnet.viz.plots import _series, vocab
from brainnet.viz.report import CHECK, STYLE, _section
from brainnet.viz.sweep_plots import ANSWER_LOSS, Group, interval, loss_key

# index.parquet column -> table heading
METRICS = {
    "final_val_loss": "final val loss",
    "final_val_answer_loss": "final val answer loss",
    "final_val_answer_acc": "final val answer acc",
    "messages_per_step": "messages / step",
    "bytes_per_step": "bytes / step",
    "sim_time_ms": "simulated ms / step",
    "module_tokens_per_step": "module-token passes / step",
    "params_total": "parameters",
    "active_params_per_token": "active params / token",
}
LOSSES = {"final_val_loss", "final_val_answer_loss", "final_val_answer_acc"}  # 4 decimals
#: columns the table shows only where some group has a value (binding tasks)
ANSWERS = ("final_val_answer_loss", "final_val_answer_acc")
CI_NOTE = (
    "mean ± half-width of the 95 % t-interval over the group's finished seeds (Student's t, "
    "n − 1 degrees of freedom); n = finished runs; one seed: the value alone. "
    "★ = on the Pareto front of messages / step and {loss} (no other group has fewer "
    "messages and a lower loss)."
)


def columns(groups: list[Group]) -> list[str]:
    """The index columns the group table shows: every one of ``METRICS``, the answer-token
    columns only where some group has them."""
    have = {k for g in groups for k in ANSWERS if g.stats.get(k, (None,))[0] is not None}
    return [k for k in METRICS if k not in ANSWERS or k in have]


def _loss_name(groups: list[Group]) -> str:
    return "final val answer loss" if loss_key(groups) == ANSWER_LOSS else "final val loss"


def is_sweep_dir(path: str | Path) -> bool:
    """A sweep directory has ``sweep.yaml`` and ``index.parquet`` (a run directory has
    ``config.yaml``)."""
    p = Path(path)
    return (p / "sweep.yaml").is_file() and (p / "index.parquet").is_file()


# --------------------------------------------------------------------------- data


def groups_of(sweep: Any, source: str = "") -> list[Group]:
    """The sweep's groups in index order, each with its intervals and its seeds' loss curves
    (finished runs only), Pareto front marked."""
    groups: dict[str, Group] = {}
    values: dict[str, dict[str, list[float]]] = {}
    bounds: tuple[Any, Any] | None = None  # answer floor, ceiling
    for row in sweep.index.to_pylist():
        name = str(row["group"])
        g = groups.get(name)
        if g is None:
            g = groups[name] = Group(name, source, overrides=_overrides(row.get("overrides")))
            values[name] = {k: [] for k in METRICS}
        status = row.get("status")
        if status != "done":
            g.failed += status == "failed"
            g.pending += status != "failed"
            continue
        g.done += 1
        for k in METRICS:
            values[name][k].append(row.get(k))
        run = _open(sweep, row)
        if run is not None and bounds is None:  # the first finished run's vocab.json
            voc = vocab(run)
            bounds = (voc.get("answer_floor_mean"), voc.get("answer_ceiling"))
        if run is not None:
            for key in ("val_loss", "train_loss"):
                s, v = _series(run.metrics.to_pylist(), key)
                if len(s):
                    g.curves.setdefault(key, []).append((s, v))
    for name, g in groups.items():
        g.stats = {k: interval(values[name][k]) for k in METRICS}
        g.floor, g.ceiling = _bound(bounds, 0), _bound(bounds, 1)
    out = list(groups.values())
    _own_overrides(out, (sweep.spec or {}).get("set") or {})
    mark_front(out)
    return out


def _bound(bounds: tuple[Any, Any] | None, i: int) -> float | None:
    v = None if bounds is None else bounds[i]
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def run_group(run_dir: str | Path) -> Group:
    """A lone run directory as a one-run group (in ``compare_sweeps``): its final losses,
    per-step means of the logged costs, its parameter count."""
    run = open_run(run_dir)
    rows = run.metrics.to_pylist()
    trained = [r for r in rows if r.get("tokens_per_s")]
    end = next((e for e in run.events if e["kind"] == "run_end"), {})
    start = next((e for e in run.events if e["kind"] == "run_start"), {})
    batch = (run.config.get("train") or {}).get("batch_size") or 0
    tokens = batch * ((run.config.get("corpus") or {}).get("block_size") or 0)

    def mean(key: str) -> float | None:
        vals = [r[key] for r in trained if r.get(key) is not None]
        return sum(vals) / len(vals) if vals else None

    passes = [r["module_tokens_per_s"] / r["tokens_per_s"] * tokens for r in trained]
    evals = [r for r in rows if r.get("val_loss") is not None]
    numbers = {
        "final_val_loss": end.get("final_val_loss"),
        "final_val_answer_loss": evals[-1].get("val_answer_loss") if evals else None,
        "final_val_answer_acc": evals[-1].get("val_answer_acc") if evals else None,
        "messages_per_step": mean("messages") if any("messages" in r for r in rows) else 0.0,
        "bytes_per_step": mean("bytes"),
        "sim_time_ms": mean("sim_time_ms"),
        "module_tokens_per_step": sum(passes) / len(passes) if passes and tokens else None,
        "params_total": start.get("params_total"),
        "active_params_per_token": None,  # only the sweep runner knows it
    }
    g = Group(f"{run.config.get('name')} ({Path(run_dir).name})", "run", done=1)
    g.stats = {k: interval([v]) for k, v in numbers.items()}
    voc = vocab(run)
    g.floor = _bound((voc.get("answer_floor_mean"), voc.get("answer_ceiling")), 0)
    g.ceiling = _bound((voc.get("answer_floor_mean"), voc.get("answer_ceiling")), 1)
    for key in ("val_loss", "train_loss"):
        s, v = _series(rows, key)
        if len(s):
            g.curves[key] = [(s, v)]
    return g


def mark_front(groups: list[Group]) -> None:
    """Set ``front`` on the groups no other group beats in both messages / step and final
    val loss (the answer-token loss where the groups have it: ``loss_key``; lower is better in
    both; groups without both numbers are never on it)."""
    key = loss_key(groups)
    have = [g for g in groups if g.stats.get(key, (None,))[0] is not None]
    have = [g for g in have if g.stats["messages_per_step"][0] is not None]
    pts = [(g.stats["messages_per_step"][0], g.stats[key][0]) for g in have]
    on = set(pareto_front(pts)) if pts else set()
    for g in groups:
        g.front = False
    for i, g in enumerate(have):
        g.front = i in on


def _own_overrides(groups: list[Group], every: dict[str, Any]) -> None:
    """Keep in each group's overrides only what sets it apart: the index records every
    override of a run (the sweep's ``set`` included), which would repeat in every row. With
    one group, what the sweep's ``set`` gives every run is left out."""

    def items(d: dict[str, Any]) -> set[tuple[str, str]]:
        return {(k, json.dumps(v, sort_keys=True)) for k, v in d.items()}

    if len(groups) > 1:
        shared = set.intersection(*(items(g.overrides) for g in groups))
    else:
        shared = items(_dotted(every))
    for g in groups:
        g.overrides = {
            k: v for k, v in g.overrides.items() if (k, json.dumps(v, sort_keys=True)) not in shared
        }


def _dotted(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` and ``{"a.b": 1}`` -> ``{"a.b": 1}`` (non-empty dicts flattened)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_dotted(v, f"{key}."))
        else:
            out[key] = v
    return out


def _overrides(raw: Any) -> dict[str, Any]:
    if isinstance(raw, dict):
        return _dotted(raw)
    try:
        parsed = json.loads(raw) if raw else {}
    except (TypeError, ValueError):
        return {"overrides": raw}
    return _dotted(parsed) if isinstance(parsed, dict) else {"overrides": parsed}


def _open(sweep: Any, row: dict[str, Any]) -> Run | None:
    try:
        return sweep.run(row["id"])
    except (FileNotFoundError, KeyError, OSError):
        return None


# --------------------------------------------------------------------------- html


def _num(v: float, ref: float, loss: bool = False) -> str:
    """Losses with 4 decimals; counts by their size (the interval with the mean's digits)."""
    if loss:
        return f"{v:.4f}"
    if abs(ref) >= 100:
        return f"{v:,.0f}"
    return f"{v:.2f}" if abs(ref) >= 1 else f"{v:.4f}"


def fmt_interval(iv: sweep_plots.Interval, n_runs: int | None = None, loss: bool = False) -> str:
    """``mean ± hw`` (``mean`` alone for one value, ``—`` for none); ``(n=k)`` where the column
    has fewer values than the group has finished runs."""
    mean, hw, n = iv
    if mean is None:
        return "—"
    if mean == 0 and not hw:  # e.g. the messages of independent modules
        return "0" + ("" if n_runs is None or n == n_runs else f" (n={n})")
    text = _num(mean, mean, loss)
    if hw is not None:
        text += f" ± {_num(hw, mean, loss)}"
    if n_runs is not None and n != n_runs:
        text += f" (n={n})"
    return text


def _cell(v: Any) -> str:
    return f"<td>{html.escape(str(v))}</td>"


def group_table(groups: list[Group], with_source: bool = False) -> str:
    shown = columns(groups)
    head = (["sweep"] if with_source else []) + ["group", "overrides", "n", "failed"]
    head += [METRICS[k] for k in shown]
    rows = []
    for g in groups:
        over = ", ".join(f"{k}={json.dumps(v)}" for k, v in g.overrides.items()) or "—"
        name = ("★ " if g.front else "") + g.name
        cells = ([_cell(g.source)] if with_source else []) + [_cell(name), _cell(over)]
        cells += [_cell(g.done), _cell(g.failed)]
        cells += [_cell(fmt_interval(g.stats[k], g.done, k in LOSSES)) for k in shown]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    ths = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    return (
        f"<p class='note'>{html.escape(CI_NOTE.format(loss=_loss_name(groups)))}</p>"
        f"<div class='wide'><table class='groups'><tr>{ths}</tr>{''.join(rows)}</table></div>"
    )


def markdown(groups: list[Group], with_source: bool = False) -> str:
    """The group table as markdown (for the terminal): intervals as in the page."""
    shown = columns(groups)
    head = (["sweep"] if with_source else []) + ["group", "n"] + [METRICS[k] for k in shown]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for g in groups:
        cells = ([g.source] if with_source else []) + [("★ " if g.front else "") + g.name]
        cells += [str(g.done)] + [fmt_interval(g.stats[k], g.done, k in LOSSES) for k in shown]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _summary(sweep: Any) -> str:
    spec = sweep.spec or {}
    rows = sweep.index.to_pylist()
    count = {s: sum(r.get("status") == s for r in rows) for s in ("done", "failed", "pending")}
    other = len(rows) - sum(count.values())
    names = list(dict.fromkeys(str(r["group"]) for r in rows))
    items = {
        "sweep": spec.get("name", Path(sweep.path).name),
        "base scenario": spec.get("base"),
        "seeds": spec.get("seeds"),
        "set (every run)": spec.get("set") or "—",
        "grid": spec.get("grid") or "—",
        "groups": f"{len(names)}: {', '.join(names)}",
        "runs": f"{len(rows)}: {count['done']} done, {count['failed']} failed, "
        f"{count['pending'] + other} pending",
    }
    table = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{html.escape(_plain(v))}</td></tr>"
        for k, v in items.items()
    )
    failed = [r for r in rows if r.get("status") == "failed"]
    errors = ""
    if failed:
        lis = "".join(
            f"<li><code>{html.escape(str(r['id']))}</code>: {html.escape(_first_line(r))}</li>"
            for r in failed
        )
        errors = f"<h3>failed runs</h3><ul class='failed'>{lis}</ul>"
    return f"<h2>summary</h2><table>{table}</table>{errors}"


def _plain(v: Any) -> str:
    if isinstance(v, dict):
        return ", ".join(f"{k}={_plain(x)}" for k, x in v.items())
    if isinstance(v, list):
        return "[" + ", ".join(_plain(x) for x in v) + "]"
    return json.dumps(v) if v is None or isinstance(v, bool) else str(v)


def _first_line(row: dict[str, Any]) -> str:
    lines = [line.strip() for line in str(row.get("error") or "").splitlines() if line.strip()]
    return lines[-1] if lines else "no error recorded"  # a traceback's last line says it


def _plots(groups: list[Group], by_source: bool) -> str:
    notes = []
    if any(g.done for g in groups) and all(g.done < 2 for g in groups):
        notes.append("one finished seed per group: no confidence intervals")
    msgs = [g.stats["messages_per_step"][0] for g in groups if g.done]
    msgs = [m for m in msgs if m is not None]
    if msgs and max(msgs) == 0:
        notes.append("no group sends messages: every point of the loss-messages plot is at 0")
    elif msgs and min(msgs) == 0:
        notes.append("some groups send no messages: the messages axis is symlog (linear near 0)")
    key = loss_key(groups)
    what = "final validation answer-token loss" if key == ANSWER_LOSS else "final validation loss"
    if key == ANSWER_LOSS:
        notes.append("binding task: the Pareto front is of the answer-token loss (dashed: the "
                     "floor of one view without communication; dotted: the ceiling)")  # fmt: skip
    out = [
        _section(f"{what} against messages per step",
                 sweep_plots.pareto(groups, by_source=by_source, key=key)),
        _section("loss curves by group", sweep_plots.loss_curves(groups)),
    ]  # fmt: skip
    return "".join(f"<p class='note'>{html.escape(n)}</p>" for n in notes) + "".join(out)


def _page(title: str, body: str) -> str:
    style = STYLE + (
        " table.groups td:first-child { color: #222; } .failed { color: #a33; }"
        " table.groups td { white-space: nowrap; } table.groups { font-size: 0.85em; }"
        " .wide { overflow-x: auto; }"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>brainnet: "
        f"{html.escape(title)}</title><style>{style}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>{body}{CHECK}</body></html>"
    )


def _write(path: Path, page: str) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path


def render_sweep(sweep_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the sweep's report (default ``SWEEP_DIR/report.html``) and return its path."""
    sweep = open_sweep(sweep_dir)
    groups = groups_of(sweep)
    name = str((sweep.spec or {}).get("name", Path(sweep_dir).name))
    about = str((sweep.spec or {}).get("description") or "")
    body = (
        (f"<p>{html.escape(about)}</p>" if about else "")
        + f"<p class='note'>{html.escape(str(Path(sweep_dir).resolve()))}</p>{_summary(sweep)}"
        + f"<h2>groups: mean ± 95 % CI over seeds</h2>{group_table(groups)}"
        + _plots(groups, by_source=False)
    )
    return _write(Path(out) if out else Path(sweep_dir) / "report.html", _page(name, body))


def sources(dirs: list[str | Path]) -> list[Group]:
    """Every group of the given sweep directories, labelled with its sweep's name (the
    directory name where two sweeps share a name); a run directory counts as one group of one
    run (source ``run``). The Pareto front is marked across all of them."""
    opened = [(Path(d), open_sweep(d)) if is_sweep_dir(d) else (Path(d), None) for d in dirs]
    names = [str((s.spec or {}).get("name", p.name)) if s else "run" for p, s in opened]
    groups: list[Group] = []
    for (path, sweep), name in zip(opened, names, strict=True):
        if sweep is None:
            groups.append(run_group(path))
            continue
        label = name if names.count(name) == 1 else f"{name} ({path.name})"
        groups += groups_of(sweep, source=label)
    mark_front(groups)
    return groups


def markdown_of(dirs: list[str | Path]) -> str:
    """The comparison's table (``compare_sweeps``) as markdown, for the terminal."""
    return markdown(sources(dirs), with_source=True)


def compare_sweeps(dirs: list[str | Path], out: str | Path) -> Path:
    """Overlay sweeps: one page with every group of every sweep side by side.

    - the group table: one row per (sweep, group), its intervals as in the sweep report;
    - final val loss against messages per step: every group a point with its CIs, coloured by
      sweep; the Pareto front is taken over all groups of all sweeps together (★ in the table),
      since the question a comparison asks is which settings are best overall;
    - the validation / train loss curves of every group (mean over seeds, CI band).

    Groups are not matched across sweeps: two sweeps that share a group name show two rows
    (``<sweep>: <group>`` in the plots). A run directory among ``dirs`` is one group of one run
    (sweep ``run``). Writes ``out`` and returns it."""
    groups = sources(dirs)
    n_sweeps = sum(is_sweep_dir(d) for d in dirs)
    n_runs = len(dirs) - n_sweeps
    title = f"compare {n_sweeps} sweep{'s' * (n_sweeps != 1)}"
    title += f" and {n_runs} run{'s' * (n_runs != 1)}" if n_runs else ""
    lis = "".join(f"<li>{html.escape(str(Path(d).resolve()))}</li>" for d in dirs)
    body = (
        f"<ul class='note'>{lis}</ul>"
        f"<h2>groups: mean ± 95 % CI over seeds</h2>{group_table(groups, with_source=True)}"
        f"{_plots(groups, by_source=True)}"
    )
    return _write(Path(out), _page(title, body))
