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
    fig, (a, b) = _fig(2, 11)
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


def arousal(run: Run) -> Plot:
    rows = _rows(run)
    s, a = _series(rows, "arousal")
    if not len(a):
        return "no arousal: this run has no society"
    _, f = _series(rows, "focus")
    _, k = _series(rows, "k")
    _, r = _series(rows, "rounds")
    fig, (ax1, ax2) = _fig(2, 11)
    ax1.plot(s, a, label="arousal")
    ax1.plot(s, f, label="focus")
    ax1.set(title="brainstem state", xlabel="step", ylim=(-0.02, 1.02))
    ax1.legend()
    ax2.step(s, k, where="post", label="router k")
    ax2.step(s, r, where="post", label="feedback rounds")
    ax2.set(title="what arousal set", xlabel="step")
    ax2.legend()
    for ax in (ax1, ax2):
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
    a.plot(cumulative, loss)
    a.set(title="loss against messages sent", xlabel="messages (cumulative)", ylabel="train CE")
    kinds = [k for k in ("messages_mate", "messages_input", "messages_board_read",
                         "messages_board_write") if any(r.get(k) for r in pts)]  # fmt: skip
    for k in kinds:
        b.plot(steps, [r[k] for r in pts], label=k.removeprefix("messages_"))
    b2 = b.twinx()
    b2.plot(steps, [r["sim_time_ms"] for r in pts], "k--", lw=0.8, label="simulated ms")
    b.set(title="cost per step (messages by kind; dashed: simulated ms)", xlabel="step")
    b.legend(fontsize=7)
    fig.tight_layout()
    return fig


ALL = [losses, routing, blackboard, arousal, collapse, emergence, communication]
