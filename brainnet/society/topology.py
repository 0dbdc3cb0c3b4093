"""Who talks to whom: the society graph (networkx) and the firing plan each topology implies.

This is the only networkx user in the core. It turns a scenario into

* clusters: C equal clusters; cluster c holds rows ``[c*n_b, (c+1)*n_b)`` of every bank b
  (so a cluster may mix module types, and intra-cluster message passing is one batched matmul
  with the ``[C, n, n]`` adjacency);
* the intra-cluster graph (complete by default; ring or small-world), as a tensor;
* inter-cluster links (pipeline: c-1 -> c; feedback: also c+1 -> c top-down);
* the firings ``(cluster, round)`` with the firings each one waits for — the clock turns these
  dependencies into simulated times, and firings at the same instant run as one bank call;
* how cluster outputs are merged into the society's prediction.

Topologies (``society.topology``):

============  =============================================================================
pipeline      clusters in a chain; cluster c reads cluster c-1's messages (wavefront rounds)
ensemble      modules work alone (no messages); the prediction averages all clusters
feedback      a chain bottom-up plus top-down messages from c+1 to c over the rounds
routing       the router picks top-k clusters per sequence; dense talk inside clusters
brain         routing + blackboard + feedback rounds + arousal (the default society)
all_to_all    baseline: one cluster in which every module reads every other
monolith      baseline: one big module, no communication
============  =============================================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx
import torch
from torch import Tensor

TOPOLOGIES = ("pipeline", "ensemble", "feedback", "routing", "brain", "all_to_all", "monolith")


@dataclass(frozen=True)
class Firing:
    """One cluster firing in one round, and the firings whose messages it reads."""

    cluster: int
    round: int
    after: tuple[tuple[int, int], ...]  # (cluster, round) firings this one waits for


@dataclass
class Topology:
    kind: str
    n_clusters: int  # C
    bank_sizes: list[int]  # modules of each bank in one cluster (n_b)
    adjacency: Tensor  # [C, n, n] float 0/1, adjacency[c, i, j] = 1: module i reads module j
    inputs: list[list[int]]  # inter-cluster in-neighbours of each cluster
    routed: bool  # the router chooses clusters per sequence
    blackboard: bool  # a global workspace is shared (per sequence)
    merge: list[int]  # clusters whose outputs form the prediction (when not routed)
    graph: nx.DiGraph = field(repr=False)  # module-level graph, with router / blackboard nodes

    @property
    def cluster_size(self) -> int:  # n
        return sum(self.bank_sizes)

    @property
    def n_modules(self) -> int:
        return self.n_clusters * self.cluster_size

    def to_json(self) -> dict:
        """The module-level graph as node-link JSON (what viz/ draws)."""
        return nx.node_link_data(self.graph, edges="links")

    def cluster_of(self, module: int) -> int:
        """Global module id (banks concatenated, each cluster-major) -> cluster."""
        for n_b in self.bank_sizes:
            size = self.n_clusters * n_b
            if module < size:
                return module // n_b
            module -= size
        raise IndexError(module)

    def module_id(self, cluster: int, j: int) -> int:
        """Position j in cluster (banks in order) -> global module id."""
        offset = 0
        for n_b in self.bank_sizes:
            if j < n_b:
                return offset + cluster * n_b + j
            j -= n_b
            offset += self.n_clusters * n_b
        raise IndexError(j)

    def firings(self, rounds: int) -> list[Firing]:
        """Every (cluster, round) firing of one step with what it waits for.

        rounds R = extra rounds after the first pass (R = 0: every cluster fires once).
        Chains (pipeline, feedback) fire as a wavefront; the others fire round by round,
        and with a blackboard every round waits for the whole previous round (the board's
        competition needs every proposal).
        """
        C = self.n_clusters
        out = []
        for r in range(rounds + 1):
            for c in range(C):
                after: list[tuple[int, int]] = []
                if r > 0:
                    after += [(c2, r - 1) for c2 in range(C)] if self.blackboard else [(c, r - 1)]
                if self.kind in ("pipeline", "feedback") and c > 0:
                    after.append((c - 1, r))  # bottom-up, same round
                if self.kind == "feedback" and r > 0 and c < C - 1:
                    after.append((c + 1, r - 1))  # top-down, previous round
                out.append(Firing(c, r, tuple(dict.fromkeys(after))))
        return out


def build_topology(
    kind: str, n_clusters: int, group_counts: list[int], intra: str = "complete", seed: int = 0
) -> Topology:
    """The society graph for ``kind`` with C clusters over module groups of the given counts."""
    if kind in ("all_to_all", "monolith"):
        n_clusters = 1
    C = n_clusters
    bank_sizes = [count // C for count in group_counts]
    n = sum(bank_sizes)
    if kind == "ensemble":
        intra = "none"
    adjacency = torch.stack([_intra_adjacency(intra, n, seed + c) for c in range(C)])
    inputs = [[] for _ in range(C)]
    if kind in ("pipeline", "feedback"):
        for c in range(1, C):
            inputs[c].append(c - 1)
    if kind == "feedback":
        for c in range(C - 1):
            inputs[c].append(c + 1)
    routed = kind in ("routing", "brain")
    blackboard = kind == "brain"
    merge = [C - 1] if kind == "pipeline" else list(range(C))
    topo = Topology(kind, C, bank_sizes, adjacency, inputs, routed, blackboard, merge, nx.DiGraph())
    topo.graph = _module_graph(topo)
    return topo


def _intra_adjacency(kind: str, n: int, seed: int) -> Tensor:
    """[n, n] 0/1 adjacency (i reads j) of one cluster, no self-loops."""
    if kind == "none" or n == 1:
        g = nx.empty_graph(n)
    elif kind == "complete":
        g = nx.complete_graph(n)
    elif kind == "ring":
        g = nx.cycle_graph(n)
    elif kind == "small_world":
        g = nx.connected_watts_strogatz_graph(n, k=min(4, n - 1), p=0.3, seed=seed)
    else:
        raise ValueError(f"intra = {kind!r}: allowed: complete, ring, small_world, none")
    a = torch.from_numpy(nx.to_numpy_array(g, nodelist=range(n), dtype=float)).float()
    return a.fill_diagonal_(0)


def _module_graph(t: Topology) -> nx.DiGraph:
    """Module-level directed graph (edge u -> v: v receives from u), for checks and drawing."""
    g = nx.DiGraph()
    n = t.cluster_size
    for c in range(t.n_clusters):
        for j in range(n):
            g.add_node(t.module_id(c, j), kind="module", cluster=c)
    for c in range(t.n_clusters):
        ii, jj = t.adjacency[c].nonzero(as_tuple=True)
        for i, j in zip(ii.tolist(), jj.tolist(), strict=True):
            g.add_edge(t.module_id(c, j), t.module_id(c, i), kind="mate")
        for src in t.inputs[c]:
            kind = "bottom_up" if src < c else "top_down"
            for j in range(n):
                for i in range(n):
                    g.add_edge(t.module_id(src, j), t.module_id(c, i), kind=kind)
    if t.routed:
        g.add_node("router", kind="router")
        for m in range(t.n_modules):
            g.add_edge("router", m, kind="route")
    if t.blackboard:
        g.add_node("blackboard", kind="blackboard")
        for m in range(t.n_modules):
            g.add_edge(m, "blackboard", kind="write")
            g.add_edge("blackboard", m, kind="read")
    return g
