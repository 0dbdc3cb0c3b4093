"""One function per plot of a run directory. Each returns a matplotlib Figure, or a string that
says why the run has no data for it (the report shows that note instead of an empty plot).

Reads only what ``brainnet.open_run`` gives: config, metrics, module metrics, events, and the
``topology*.json`` graphs the simulation writes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import networkx as nx  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from brainnet.metrics import Run  # noqa: E402

Plot = Figure | str
EDGE_COLOURS = {"mate": "#4c72b0", "bottom_up": "#55a868", "top_down": "#c44e52",
                "route": "#8172b2", "write": "#dd8452", "read": "#937860"}  # fmt: skip


def _rows(run: Run) -> list[dict[str, Any]]:
    return run.metrics.to_pylist()


def _series(rows: list[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
    if not pts:
        return np.array([]), np.array([])
    s, v = zip(*pts, strict=True)
    return np.asarray(s), np.asarray(v, dtype=float)


def _vectors(rows: list[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """A list column over time -> steps [N], values [N, K]."""
    pts = [(r["step"], r[key]) for r in rows if r.get(key)]
    if not pts:
        return np.array([]), np.zeros((0, 0))
    s, v = zip(*pts, strict=True)
    return np.asarray(s), np.asarray(v, dtype=float)


def _ragged(rows: list[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """A list column whose entries may be None (or whose rows differ in length) -> steps [N],
    values [N, K] with NaN for None and for missing entries; rows where it is null are left
    out."""
    pts = [(r["step"], r[key]) for r in rows if r.get(key)]
    if not pts:
        return np.array([]), np.zeros((0, 0))
    width = max(len(v) for _, v in pts)
    out = np.full((len(pts), width), np.nan)
    for i, (_, v) in enumerate(pts):
        out[i, : len(v)] = [np.nan if x is None else float(x) for x in v]
    return np.asarray([s for s, _ in pts]), out


def _scalar_or_mean(rows: list[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """A column that is a float (independent modules) or a list per module (a society): its
    value, or the mean over the list's finite entries, against steps."""
    pts = []
    for r in rows:
        v = r.get(key)
        if isinstance(v, list):
            vals = [float(x) for x in v if x is not None and math.isfinite(float(x))]
            v = sum(vals) / len(vals) if vals else None
        if v is not None:
            pts.append((r["step"], float(v)))
    if not pts:
        return np.array([]), np.array([])
    s, v = zip(*pts, strict=True)
    return np.asarray(s), np.asarray(v, dtype=float)


def vocab(run: Run) -> dict[str, Any]:
    """The run's ``vocab.json`` ({} if it has none or it does not parse): domain names and, for
    binding tasks, ``answer_floor`` / ``answer_floor_mean`` / ``answer_ceiling``."""
    f = Path(run.path) / "vocab.json"
    try:
        data = json.loads(f.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _domain_names(run: Run, n: int, voc: dict[str, Any] | None = None) -> list[str]:
    names = list((voc if voc is not None else vocab(run)).get("domains") or [])
    names = names or list((run.config.get("corpus") or {}).get("domains") or [])
    return [str(names[d]) if d < len(names) else str(d) for d in range(n)]


def _fig(n: int = 1, width: float = 10, height: float = 3.6) -> tuple[Figure, list[Any]]:
    fig, axes = plt.subplots(1, n, figsize=(width, height), squeeze=False)
    return fig, list(axes[0])


def _mark_events(ax: Any, run: Run) -> None:
    """Dotted lines at reorganisations, dashed red at emergence events."""
    for e in run.events:
        if e["kind"] == "reorganize":
            ax.axvline(e["step"], color="k", ls=":", lw=0.8)
        elif e["kind"] == "emergence":
            ax.axvline(e["step"], color="#c44e52", ls="--", lw=0.6, alpha=0.6)


# --------------------------------------------------------------------------- plots


def society_graphs(run: Run) -> list[tuple[str, Plot]]:
    """The society graph, and again after each reorganisation (one file per version)."""
    files = sorted(Path(run.path).glob("topology*.json"))
    if not files:
        return [("society graph", "no topology.json: this run has no society")]
    return [(f"society graph ({f.stem})", _draw_graph(json.loads(f.read_text()))) for f in files]


def _draw_graph(data: dict[str, Any]) -> Figure:
    g = nx.node_link_graph(data, directed=True, edges="links")
    modules = [n for n, d in g.nodes(data=True) if d.get("kind") == "module"]
    clusters = sorted({g.nodes[n]["cluster"] for n in modules})
    pos: dict[Any, tuple[float, float]] = {}
    R = 3.0 if len(clusters) > 1 else 0.0
    for ci, c in enumerate(clusters):
        members = [n for n in modules if g.nodes[n]["cluster"] == c]
        cx, cy = (
            R * math.cos(2 * math.pi * ci / len(clusters)),
            R * math.sin(2 * math.pi * ci / len(clusters)),
        )
        r = 0.6 + 0.08 * len(members)
        for j, n in enumerate(members):
            a = 2 * math.pi * j / max(1, len(members))
            pos[n] = (cx + r * math.cos(a), cy + r * math.sin(a))
    if "router" in g:
        pos["router"] = (0.0, 0.6)
    if "blackboard" in g:
        pos["blackboard"] = (0.0, -0.6)
    fig, (ax,) = _fig(1, 7, 6)
    cmap = plt.get_cmap("tab10")
    for kind, colour in EDGE_COLOURS.items():
        edges = [(u, v) for u, v, k in g.edges(data="kind") if k == kind]
        if edges:
            alpha = 0.15 if kind in ("route", "write", "read") else 0.5
            nx.draw_networkx_edges(g, pos, edgelist=edges, ax=ax, edge_color=colour,
                                   alpha=alpha, arrows=False, label=kind)  # fmt: skip
    colours = [cmap(clusters.index(g.nodes[n]["cluster"]) % 10) for n in modules]
    nx.draw_networkx_nodes(g, pos, nodelist=modules, node_color=colours, node_size=120, ax=ax)
    hubs = [n for n in ("router", "blackboard") if n in g]
    if hubs:
        nx.draw_networkx_nodes(g, pos, nodelist=hubs, node_color="#333333", node_shape="s",
                               node_size=300, ax=ax)  # fmt: skip
        nx.draw_networkx_labels(g, pos, labels={h: h for h in hubs}, font_size=8, ax=ax,
                                font_color="#333333", verticalalignment="bottom")  # fmt: skip
    ax.set_title(f"{len(modules)} modules in {len(clusters)} clusters")
    ax.legend(loc="upper right", fontsize=7)
    ax.axis("off")
    return fig


def losses(run: Run) -> Plot:
    rows = _rows(run)
    s_tr, tr = _series(rows, "train_loss")
    s_va, va = _series(rows, "val_loss")
    if not len(tr) and not len(va):
        return "no losses logged"
    s_cl, cl = _vectors(rows, "cluster_loss")
    s_do, do = _vectors(rows, "domain_loss")
    n = 1 + bool(cl.size) + bool(do.size)
    fig, axes = _fig(n, 4.2 * n)
    axes[0].plot(s_tr, tr, label="train")
    axes[0].plot(s_va, va, "o-", label="validation")
    axes[0].set(title="society loss", xlabel="step", ylabel="CE (nats / token)")
    axes[0].legend()
    i = 1
    if cl.size:
        for c in range(cl.shape[1]):
            axes[i].plot(s_cl, cl[:, c], label=f"cluster {c}")
        axes[i].set(title="loss per cluster (its sequences)", xlabel="step")
        axes[i].legend(fontsize=7)
        i += 1
    if do.size:
        names = (run.config.get("corpus") or {}).get("domains") or [
            str(d) for d in range(do.shape[1])
        ]
        for d in range(do.shape[1]):
            axes[i].plot(s_do, do[:, d], label=names[d] if d < len(names) else str(d))
        axes[i].set(title="loss per domain", xlabel="step")
        axes[i].legend(fontsize=7)
    for ax in axes:
        _mark_events(ax, run)
    fig.tight_layout()
    return fig


def answers(run: Run) -> Plot:
    """Answer-token loss and accuracy per domain over steps: train thin lines, validation
    markers; each domain's no-communication floor (``vocab.json`` ``answer_floor``) dashed."""
    rows = _rows(run)
    keys = ("answer_loss", "val_answer_loss", "domain_answer_loss", "val_domain_answer_loss")
    if not any(r.get(k) is not None for r in rows for k in keys):
        return "no answer tokens in this run (answer metrics come with binding tasks)"
    voc = vocab(run)
    floors = voc.get("answer_floor") or {}
    fig, axes = _fig(2, 12, 4.2)
    for ax, what in zip(axes, ("loss", "acc"), strict=True):
        s_tr, tr = _ragged(rows, f"domain_answer_{what}")
        s_va, va = _ragged(rows, f"val_domain_answer_{what}")
        n = max(tr.shape[1] if tr.size else 0, va.shape[1] if va.size else 0)
        names = _domain_names(run, n, voc)
        for d in range(n):
            has_tr = tr.size and d < tr.shape[1] and np.isfinite(tr[:, d]).any()
            has_va = va.size and d < va.shape[1] and np.isfinite(va[:, d]).any()
            if not (has_tr or has_va):
                continue  # a domain without answers
            colour = f"C{d % 10}"
            if has_tr:
                ax.plot(s_tr, tr[:, d], lw=0.8, alpha=0.7, color=colour, label=f"{names[d]} train")
            if has_va:
                ax.plot(s_va, va[:, d], "o", ms=4, color=colour, label=f"{names[d]} val")
            floor = floors.get(names[d]) if isinstance(floors, dict) else None
            if what == "loss" and floor is not None:
                ax.axhline(float(floor), color=colour, ls="--", lw=1, label=f"{names[d]} floor")
        s_all, all_tr = _series(rows, f"answer_{what}")
        s_vall, all_va = _series(rows, f"val_answer_{what}")
        if len(all_tr):
            ax.plot(s_all, all_tr, color="k", lw=1.2, label="all train")
        if len(all_va):
            ax.plot(s_vall, all_va, "ks", ms=4, mfc="none", label="all val")
        if what == "loss" and voc.get("answer_floor_mean") is not None:
            ax.axhline(float(voc["answer_floor_mean"]), color="k", ls="--", lw=1,
                       label="all floor")  # fmt: skip
        if what == "loss":
            ax.set(title="answer-token loss (dashed: floor with one view, no communication)",
                   xlabel="step", ylabel="CE (nats / answer token)")  # fmt: skip
        else:
            ax.set(title="answer-token accuracy", xlabel="step", ylabel="share correct",
                   ylim=(-0.02, 1.02))  # fmt: skip
        ax.title.set_fontsize(9)
        ax.legend(fontsize=6, ncol=2)
        _mark_events(ax, run)
    fig.tight_layout()
    return fig


def routing(run: Run) -> Plot:
    rows = _rows(run)
    s, dc = _vectors(rows, "domain_cluster")
    s_l, load = _vectors(rows, "load")
    if not dc.size:
        return "no routing: this topology has no router"
    C = load.shape[1]
    names = (run.config.get("corpus") or {}).get("domains") or []
    tail = dc[len(dc) * 3 // 4 :].mean(0).reshape(-1, C)  # last quarter of training
    share = tail / np.maximum(tail.sum(1, keepdims=True), 1e-9)
    s_mi, mi = _series(rows, "routing_mi")
    fig, axes = _fig(3 if len(mi) else 2, 16 if len(mi) else 11)
    a, b = axes[0], axes[1]
    im = a.imshow(share, aspect="auto", cmap="viridis", vmin=0, vmax=1)
    a.set(title="domain -> cluster (share of routes, last quarter)", xlabel="cluster")
    a.set_xticks(range(C))
    a.set_yticks(range(len(share)), names[: len(share)] or range(len(share)))
    fig.colorbar(im, ax=a)
    for c in range(C):
        b.plot(s_l, load[:, c], label=f"cluster {c}")
    b.set(title="load per cluster (sequences assigned / step)", xlabel="step")
    b.legend(fontsize=7)
    _mark_events(b, run)
    if len(mi):  # specialisation: I(domain; cluster) against chance and the top-k ceiling
        c = axes[2]
        c.plot(s_mi, mi, label="MI (Miller–Madow)")
        c.plot(*_series(rows, "routing_mi_chance"), ls=":", color="gray", label="chance")
        c.plot(*_series(rows, "routing_mi_ceiling"), ls="--", color="k", lw=1, label="ceiling")
        c.set(title="specialisation: I(domain; cluster)", xlabel="step", ylabel="bits")
        c.legend(fontsize=7)
        _mark_events(c, run)
    fig.tight_layout()
    return fig


def blackboard(run: Run) -> Plot:
    rows = _rows(run)
    s, occ = _series(rows, "board_occupancy")
    if not len(occ):
        return "no blackboard in this topology"
    mods = [r for r in run.module_metrics.to_pylist() if r.get("board_writes") is not None]
    steps = sorted({r["step"] for r in mods})
    n = 1 + max(r["module"] for r in mods) if mods else 0
    writes = np.zeros((n, len(steps)))
    col = {st: i for i, st in enumerate(steps)}
    for r in mods:
        writes[r["module"], col[r["step"]]] = r["board_writes"]
    fig, (a, b) = _fig(2, 11)
    a.plot(s, occ)
    a.set(title="blackboard occupancy (share of slots filled)", xlabel="step", ylim=(0, 1.05))
    im = b.imshow(writes, aspect="auto", cmap="magma",
                  extent=(steps[0], steps[-1], n - 0.5, -0.5) if steps else None)  # fmt: skip
    b.set(title="who wrote: sequences written per step", xlabel="step", ylabel="module")
    fig.colorbar(im, ax=b)
    fig.tight_layout()
    return fig


#: what arousal sets besides k and rounds, drawn in the third panel (those the run logged)
AROUSAL_SET = ("temperature", "threshold", "lr_scale", "focus_prior_max")


def arousal(run: Run) -> Plot:
    rows = _rows(run)
    s, a = _series(rows, "arousal")
    if not len(a):
        return "no arousal: this run has no society"
    sf, f = _series(rows, "focus")
    sk, k = _series(rows, "k")
    sr, r = _series(rows, "rounds")
    knobs = [(key, *_series(rows, key)) for key in AROUSAL_SET]
    knobs = [(key, st, v) for key, st, v in knobs if len(v)]
    fig, axes = _fig(2 + bool(knobs), 16 if knobs else 11)
    ax1, ax2 = axes[:2]
    ax1.plot(s, a, label="arousal")
    if len(f):
        ax1.plot(sf, f, label="focus")
    ax1.set(title="brainstem state", xlabel="step", ylim=(-0.02, 1.02))
    ax1.legend()
    if len(k):
        ax2.step(sk, k, where="post", label="router k")
    if len(r):
        ax2.step(sr, r, where="post", label="feedback rounds")
    ax2.set(title="what arousal set: k and rounds", xlabel="step")
    ax2.legend()
    if knobs:
        labels = {"temperature": "router temperature", "threshold": "board write threshold",
                  "lr_scale": "lr scale", "focus_prior_max": "focus prior max"}  # fmt: skip
        for key, st, v in knobs:
            axes[2].step(st, v, where="post", label=labels[key])
        axes[2].set(title="what arousal set: temperature, threshold, lr scale", xlabel="step")
        axes[2].legend(fontsize=7)
    for ax in axes:
        _mark_events(ax, run)
    fig.tight_layout()
    return fig


def collapse(run: Run) -> Plot:
    mods = run.module_metrics.to_pylist()
    keys = [k for k in ("entropy", "top1_mass", "distinct_n", "disagreement", "ece", "delta_phi")
            if any(r.get(k) is not None for r in mods)]  # fmt: skip
    if not keys:
        return "no collapse diagnostics in this run (enable them with a `collapse:` section)"
    fig, axes = _fig(len(keys), 3.6 * len(keys))
    for ax, key in zip(axes, keys, strict=True):
        by_module: dict[int, list[tuple[int, float]]] = {}
        for r in mods:
            if r.get(key) is not None:
                by_module.setdefault(r["module"], []).append((r["step"], r[key]))
        for pts in by_module.values():
            s, v = zip(*pts, strict=True)
            ax.plot(s, v, lw=0.8)
        ax.set(title=key, xlabel="step")
        _mark_events(ax, run)
    fig.tight_layout()
    return fig


def emergence(run: Run) -> Plot:
    rows = _rows(run)
    s, d = _series(rows, "delta_phi")
    if not len(d):
        return "no emergence probe in this run (enable it with an `emergence:` section)"
    _, th = _series(rows, "theta")
    fig, (ax,) = _fig(1)
    ax.plot(s, d, "o-", label="Δφ")
    if len(th):
        ax.plot(s, th, "--", label="θ")
    _mark_events(ax, run)
    ax.set(title="semantic state change; events dashed, reorganisations dotted", xlabel="step")
    ax.legend()
    return fig


#: message kinds in plotting order; any other ``messages_*`` column follows (old runs have
#: ``messages_input``, newer ones split it into bottom-up, top-down and attend)
KIND_ORDER = ("mate", "input", "bottom_up", "top_down", "attend", "board_read", "board_write")


def message_kinds(rows: list[dict[str, Any]]) -> list[str]:
    """The ``messages_<kind>`` columns of the rows (not the total ``messages``), known kinds
    first in ``KIND_ORDER``, then the others in first-seen order."""
    seen = dict.fromkeys(k for r in rows for k in r if k.startswith("messages_"))
    known = [f"messages_{k}" for k in KIND_ORDER if f"messages_{k}" in seen]
    return known + [k for k in seen if k not in known]


def communication(run: Run) -> Plot:
    rows = _rows(run)
    pts = [r for r in rows if r.get("messages") is not None and r.get("train_loss") is not None]
    if not pts:
        return "no communication counted (independent modules)"
    steps = np.array([r["step"] for r in pts], dtype=float)
    per_step = np.array([r["messages"] for r in pts])
    loss = np.array([r["train_loss"] for r in pts])
    gaps = np.diff(np.concatenate([[0.0], steps]))
    cumulative = np.cumsum(per_step * gaps)
    fig, (a, b) = _fig(2, 11)
    a.plot(cumulative, loss, label="train CE")
    answer = [np.nan if r.get("answer_loss") is None else r["answer_loss"] for r in pts]
    if not all(np.isnan(answer)):
        a.plot(cumulative, answer, label="train answer CE")
        a.legend(fontsize=7)
    a.set(title="loss against messages sent", xlabel="messages (cumulative)", ylabel="train CE")
    kinds = [k for k in message_kinds(pts) if any(r.get(k) for r in pts)]
    for k in kinds:
        b.plot(steps, [np.nan if r.get(k) is None else r[k] for r in pts],
               label=k.removeprefix("messages_"))  # fmt: skip
    b2 = b.twinx()
    sim = [np.nan if r.get("sim_time_ms") is None else r["sim_time_ms"] for r in pts]
    b2.plot(steps, sim, "k--", lw=0.8, label="simulated ms")
    b.set(title="cost per step (messages by kind; dashed: simulated ms)", xlabel="step")
    if kinds:
        b.legend(fontsize=7)
    fig.tight_layout()
    return fig


def distillation(run: Run) -> Plot:
    """The distillation loss on consolidation steps (the mean over modules; thin: each module)
    and the teacher's statistics the run logged (e.g. Warmup-Distill's replaced share)."""
    rows = _rows(run)
    s, kd = _scalar_or_mean(rows, "distill_loss")
    if not len(kd):
        return "no distillation in this run (enable it with a `distill:` section)"
    extra = dict.fromkeys(
        k for r in rows for k in r
        if k != "distill_loss" and k.startswith(("distill_", "warmup_", "teacher_", "peer_"))
    )  # fmt: skip
    extra_series = [(k, *_scalar_or_mean(rows, k)) for k in extra]
    extra_series = [(k, st, v) for k, st, v in extra_series if len(v)]
    fig, axes = _fig(1 + bool(extra_series), 11 if extra_series else 7)
    s_m, per = _ragged(rows, "distill_loss")
    if per.size and per.shape[1] > 1:
        for m in range(per.shape[1]):
            axes[0].plot(s_m, per[:, m], ".-", ms=3, lw=0.5, alpha=0.4, color="#999999")
    axes[0].plot(s, kd, "o-", ms=3, color="#4c72b0", label="mean over modules")
    axes[0].set(title="distillation loss on consolidation steps", xlabel="step",
                ylabel="α·CE + (1 − α)·T²·KL")  # fmt: skip
    axes[0].legend(fontsize=7)
    if extra_series:
        for k, st, v in extra_series:
            axes[1].plot(st, v, "o-", ms=3, label=k)
        axes[1].set(title="teacher and peer statistics (mean over modules)", xlabel="step")
        axes[1].legend(fontsize=7)
    for ax in axes:
        _mark_events(ax, run)
    fig.tight_layout()
    return fig


ALL = [losses, answers, routing, blackboard, arousal, collapse, distillation, emergence,
       communication]  # fmt: skip
