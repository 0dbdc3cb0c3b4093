"""Reorganisation actions: WHICH modules go where when the society's semantic state jumps.

Each action reads the society as it is (its ``Topology``) and what the probe set says about
every module — its semantic state φ_m (flattened [N, S·C], learning/emergence.py), its probe
loss, and how often the blackboard heard it since the last reorganisation — and returns a
``Layout`` (the new clusters, their wiring, the router's rows) or, when it has no candidate,
the reason as a string. Applying a layout to the banks (keeping survivors exactly) is
``learning/reorganize.py``'s job; the simulation runs the actions of ``reorganize.actions`` in
order on each emergence event. The rules (docs/learning.md):

=========  ====================================================================================
replace    in every cluster and bank with ≥ 2 modules, the worst module (probe loss) becomes a
           noisy copy of the best one (sizes and wiring unchanged)
split      the cluster with the largest φ spread (mean squared distance of its modules' φ to
           their centroid) among those with ≥ 2·min_cluster_size modules splits in two halves
           along the first principal axis of its φ; the half holding its first module keeps
           the cluster's index, the other becomes a new cluster whose router row is a noisy
           copy of the parent's
merge      the two clusters whose mean φ are closest (Euclidean) become one (the lower index
           stays; the other's router row goes), if the result fits max_cluster_size
spawn      the cluster with the highest mean probe loss gains a noisy copy of its best module
prune      among clusters above min_cluster_size, the module the blackboard heard least
           (ties and board-less societies: the highest probe loss) leaves
rewire     the cluster with the largest φ spread (≥ 3 modules) is rewired so that each module
           reads only its ``rewire_degree`` nearest mates in φ (default: half its mates)
=========  ====================================================================================

Everything here runs on the host at a log boundary on small [N, D] tensors; the loops are over
clusters or candidate pairs, never inside the training step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from brainnet.config import ReorganizeConfig
from brainnet.learning.layout import Layout, New, Ref
from brainnet.modules.resize import RowPlan
from brainnet.registry import ACTIONS
from brainnet.society.topology import Topology


@dataclass
class Evidence:
    """What the probe set says about each module (global ids; host tensors)."""

    phi: Tensor  # [N, D] semantic state φ_m, flattened
    loss: Tensor  # [N] probe cross-entropy
    heard: Tensor | None  # [N] blackboard writes since the last reorganisation (None: no board)

    def follow(self, rows: Tensor, parents: Tensor) -> Evidence:
        """The evidence after a relayout: new id i was old ``rows[i]``; a new module (-1)
        takes its parent's φ, loss and board writes (a copy is expected to do as its parent
        did; with zero writes it would be the first to be pruned)."""
        src = torch.where(rows >= 0, rows, parents)  # [N_new]
        heard = None if self.heard is None else self.heard[src]
        return Evidence(self.phi[src], self.loss[src], heard)


@dataclass
class Limits:
    """Size limits resolved for this run (None in the config -> 2 × the initial society)."""

    min_cluster: int
    max_cluster: int | None
    max_clusters: int
    max_modules: int

    @classmethod
    def of(cls, cfg: ReorganizeConfig, n_clusters: int, n_modules: int) -> Limits:
        return cls(
            cfg.min_cluster_size,
            cfg.max_cluster_size,
            cfg.max_clusters or 2 * n_clusters,
            cfg.max_modules or 2 * n_modules,
        )


Action = Callable[[Topology, Evidence, ReorganizeConfig, Limits], "Layout | str"]


def _keep(topo: Topology) -> tuple[list[list[Ref]], list[Tensor | None]]:
    """The current clusters and their wiring, as a starting point to edit."""
    clusters: list[list[Ref]] = [list(m) for m in topo.clusters()]
    adjacency: list[Tensor | None] = [
        topo.adjacency[c, :n, :n].clone() for c, n in enumerate(topo.cluster_sizes)
    ]
    return clusters, adjacency


def spread(phi: Tensor) -> float:
    """Mean squared distance of rows of φ [n, D] to their centroid (0 for one module)."""
    return float((phi - phi.mean(0)).square().sum(1).mean())


def _argmax(values: list[float]) -> int:
    """Index of the largest value; ties go to the lowest index."""
    return max(range(len(values)), key=lambda i: (values[i], -i))


def replace(topo: Topology, ev: Evidence, cfg: ReorganizeConfig, lim: Limits) -> Layout | str:
    clusters, adjacency = _keep(topo)
    replaced = []
    for c, ids in enumerate(topo.clusters()):
        for b in range(topo.n_banks):
            mine = [m for m in ids if topo.bank_of(m) == b]
            if len(mine) < 2:
                continue
            losses = ev.loss[mine]
            worst, best = mine[int(losses.argmax())], mine[int(losses.argmin())]
            clusters[c][ids.index(worst)] = New(best)
            replaced.append(
                {"module": worst, "copy_of": best, "probe_loss": round(float(ev.loss[worst]), 4)}
            )
    if not replaced:
        return "no cluster holds two modules of one type"
    return Layout(clusters, adjacency, None, {"replaced": replaced})


def split(topo: Topology, ev: Evidence, cfg: ReorganizeConfig, lim: Limits) -> Layout | str:
    C = topo.n_clusters
    if C >= lim.max_clusters:
        return f"already {C} clusters (max_clusters {lim.max_clusters})"
    members = topo.clusters()
    cand = [c for c, m in enumerate(members) if len(m) >= 2 * lim.min_cluster]
    if not cand:
        return f"no cluster has {2 * lim.min_cluster} modules (2 · min_cluster_size)"
    spreads = [spread(ev.phi[members[c]]) for c in cand]
    c = cand[_argmax(spreads)]
    ids = members[c]
    x = ev.phi[ids].double()
    x = x - x.mean(0)
    axis = torch.linalg.svd(x, full_matrices=False).Vh[0]  # [D] first principal axis
    order = torch.argsort(x @ axis, stable=True).tolist()
    half = len(ids) // 2
    a, b = sorted(order[:half]), sorted(order[half:])
    stay, go = (a, b) if 0 in a else (b, a)
    clusters, adjacency = _keep(topo)
    clusters[c] = [ids[i] for i in stay]
    clusters.append([ids[i] for i in go])
    adjacency[c] = None
    adjacency.append(None)
    router = RowPlan(list(range(C)) + [-1], [-1] * C + [c])
    detail = {
        "cluster": c,
        "into": [c, C],
        "spread": round(spreads[cand.index(c)], 6),
        "members": [clusters[c], clusters[C]],
    }
    return Layout(clusters, adjacency, router, detail)


def merge(topo: Topology, ev: Evidence, cfg: ReorganizeConfig, lim: Limits) -> Layout | str:
    C = topo.n_clusters
    if C <= 2:
        return f"only {C} clusters (a society keeps at least 2)"
    members, sizes = topo.clusters(), topo.cluster_sizes
    centre = torch.stack([ev.phi[m].mean(0) for m in members])  # [C, D]
    dist = torch.cdist(centre.double(), centre.double())  # [C, C]
    best: tuple[float, int, int] | None = None
    for a in range(C):
        for b in range(a + 1, C):
            if lim.max_cluster is not None and sizes[a] + sizes[b] > lim.max_cluster:
                continue
            d = float(dist[a, b])
            if best is None or d < best[0]:
                best = (d, a, b)
    if best is None:
        return f"no two clusters fit in max_cluster_size {lim.max_cluster}"
    d, a, b = best
    clusters, adjacency = _keep(topo)
    clusters[a] = clusters[a] + clusters[b]
    adjacency[a] = None
    del clusters[b], adjacency[b]
    router = RowPlan([i for i in range(C) if i != b], [-1] * (C - 1))
    return Layout(clusters, adjacency, router, {"clusters": [a, b], "distance": round(d, 6)})


def spawn(topo: Topology, ev: Evidence, cfg: ReorganizeConfig, lim: Limits) -> Layout | str:
    N = topo.n_modules
    if N >= lim.max_modules:
        return f"already {N} modules (max_modules {lim.max_modules})"
    members = topo.clusters()
    cand = [c for c, m in enumerate(members) if lim.max_cluster is None or len(m) < lim.max_cluster]
    if not cand:
        return f"every cluster has max_cluster_size {lim.max_cluster} modules"
    losses = [float(ev.loss[members[c]].mean()) for c in cand]
    c = cand[_argmax(losses)]
    parent = members[c][int(ev.loss[members[c]].argmin())]
    clusters, adjacency = _keep(topo)
    clusters[c].append(New(parent))
    adjacency[c] = None
    detail = {"cluster": c, "parent": parent, "cluster_loss": round(losses[cand.index(c)], 4)}
    return Layout(clusters, adjacency, None, detail)


def prune(topo: Topology, ev: Evidence, cfg: ReorganizeConfig, lim: Limits) -> Layout | str:
    members = topo.clusters()
    cand = [m for ids in members if len(ids) > lim.min_cluster for m in ids]
    if not cand:
        return f"every cluster is at min_cluster_size {lim.min_cluster}"
    # fewest board writes first, then the highest probe loss, then the lowest id
    heard = ev.heard if ev.heard is not None else torch.zeros_like(ev.loss)
    m = min(cand, key=lambda i: (float(heard[i]), -float(ev.loss[i]), i))
    c = topo.cluster_of(m)
    clusters, adjacency = _keep(topo)
    j = members[c].index(m)
    del clusters[c][j]
    a = adjacency[c]
    assert a is not None
    keep = [i for i in range(a.shape[0]) if i != j]
    adjacency[c] = a[keep][:, keep]  # the rest of the cluster keeps its wiring
    detail = {
        "module": m,
        "cluster": c,
        "heard": None if ev.heard is None else float(ev.heard[m]),
        "probe_loss": round(float(ev.loss[m]), 4),
    }
    return Layout(clusters, adjacency, None, detail)


def rewire(topo: Topology, ev: Evidence, cfg: ReorganizeConfig, lim: Limits) -> Layout | str:
    members = topo.clusters()
    cand = [c for c, m in enumerate(members) if len(m) >= 3]
    if not cand:
        return "no cluster has 3 modules"
    spreads = [spread(ev.phi[members[c]]) for c in cand]
    c = cand[_argmax(spreads)]
    ids = members[c]
    n = len(ids)
    degree = min(cfg.rewire_degree or math.ceil((n - 1) / 2), n - 1)
    d = torch.cdist(ev.phi[ids].double(), ev.phi[ids].double())  # [n, n]
    d.fill_diagonal_(math.inf)
    # each module reads its `degree` nearest mates (stable: ties to the lower slot)
    near = torch.argsort(d, dim=1, stable=True)[:, :degree]  # [n, degree]
    new = torch.zeros(n, n).scatter_(1, near, 1.0)
    clusters, adjacency = _keep(topo)
    old = adjacency[c]
    assert old is not None
    if torch.equal(new, old):
        return f"cluster {c} is already wired to its {degree} nearest mates"
    adjacency[c] = new
    detail = {
        "cluster": c,
        "degree": degree,
        "edges_before": int(old.sum()),
        "edges_after": int(new.sum()),
    }
    return Layout(clusters, adjacency, None, detail)


for _action in (replace, split, merge, spawn, prune, rewire):
    ACTIONS.add(_action.__name__, _action)
