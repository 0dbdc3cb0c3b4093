"""Who talks to whom: the society graph (networkx) and the firing plan each topology implies.

This is the only networkx user in the core. It turns a scenario into

* clusters: C clusters; ``sizes[c][b]`` modules of bank b sit in cluster c, and every bank's
  rows are laid out cluster-major (cluster 0's rows first). A scenario starts with equal
  clusters (``[c*n_b, (c+1)*n_b)``); reorganisation (split / merge / spawn / prune) makes them
  unequal. A cluster's modules occupy *slots* ``0..n_c-1`` (bank order) of a padded
  ``[C, n]`` layout, n = the largest cluster, so intra-cluster message passing stays one
  batched matmul with the ``[C, n, n]`` adjacency (empty slots have no edges);
* the intra-cluster graph (complete by default; ring or small-world), as a tensor;
* inter-cluster links (pipeline: c-1 -> c; feedback and brain: also c+1 -> c top-down;
  attention: every module reads every other cluster's modules);
* the firings ``(cluster, round)`` with the firings each one waits for — the clock turns these
  dependencies into simulated times, and firings at the same instant run as one bank call;
* how cluster outputs are merged into the society's prediction.

Topologies (``society.topology``) are the ``Kind`` entries of ``brainnet.registry.TOPOLOGIES``
(a plugin adds one with ``TOPOLOGIES.add(name, Kind(...))``); ``brainnet scenarios`` and the
table in docs/architecture.md list them. ``independent`` is the degenerate society of modules
that work alone, each on its own loss (what ``society: null`` means).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx
import torch
from torch import Tensor

from brainnet.registry import TOPOLOGIES


@dataclass(frozen=True)
class Kind:
    """What a topology name means: how its clusters are wired and how they are merged."""

    doc: str  # one line, for listings
    chain: bool = False  # cluster c reads cluster c-1's messages (bottom-up, same round)
    top_down: bool = False  # ... and cluster c+1's from the previous round (feedback)
    routed: bool = False  # the router picks top-k clusters per sequence
    blackboard: bool = False  # a global workspace is shared (per sequence)
    one_cluster: bool = False  # one cluster whatever ``society.clusters`` says
    attend: bool = False  # each module reads every other cluster's modules (previous round)
    intra: str | None = None  # forced intra-cluster wiring ("none": no mates) or the config's
    merge: str = "all"  # "all" clusters, the "last" one, or "none": each module is its own task

    def __post_init__(self) -> None:
        if self.routed and self.attend:
            raise ValueError("attention over module outputs reads every cluster: not routed")
        if self.merge not in ("all", "last", "none"):
            raise ValueError(f"merge = {self.merge!r}: allowed: 'all', 'last', 'none'")


for _name, _kind in {
    "pipeline": Kind("clusters in a chain; cluster c reads cluster c-1's messages", chain=True,
                     merge="last"),
    "ensemble": Kind("modules work alone (no messages); the prediction averages all clusters",
                     intra="none"),
    "feedback": Kind("a chain bottom-up plus top-down messages from c+1 to c over the rounds",
                     chain=True, top_down=True),
    "routing": Kind("the router picks top-k clusters per sequence; dense talk inside clusters",
                    routed=True),
    "brain": Kind("all four kinds: routing, serial links, top-down links over the rounds, "
                  "blackboard (+ arousal)", routed=True, blackboard=True, chain=True,
                  top_down=True),
    "attention": Kind("each module reads every other cluster's modules through its learned "
                      "attention (dense but selective)", attend=True),
    "all_to_all": Kind("baseline: one cluster in which every module reads every other",
                       one_cluster=True),
    "monolith": Kind("baseline: one big module, no communication", one_cluster=True),
    "independent": Kind("modules alone, each trained on its own loss (society: null)",
                        one_cluster=True, intra="none", merge="none"),
}.items():  # fmt: skip
    TOPOLOGIES.add(_name, _kind)


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
    sizes: list[list[int]]  # sizes[c][b]: modules of bank b in cluster c
    adjacency: Tensor  # [C, n, n] float 0/1, adjacency[c, i, j] = 1: slot i reads slot j
    inputs: list[list[int]]  # inter-cluster in-neighbours of each cluster
    routed: bool  # the router chooses clusters per sequence
    blackboard: bool  # a global workspace is shared (per sequence)
    merge: list[int]  # clusters whose outputs form the prediction (when not routed)
    intra: str = "complete"  # how a new or changed cluster is wired inside
    graph: nx.DiGraph = field(default_factory=nx.DiGraph, repr=False)  # module-level graph

    @property
    def spec(self) -> Kind:
        return TOPOLOGIES.get(self.kind)

    @property
    def merged(self) -> bool:
        """The society makes one prediction from its clusters (every kind but independent)."""
        return self.spec.merge != "none"

    @property
    def n_banks(self) -> int:
        return len(self.sizes[0])

    @property
    def cluster_sizes(self) -> list[int]:
        """n_c: modules in each cluster (all banks)."""
        return [sum(s) for s in self.sizes]

    @property
    def cluster_size(self) -> int:  # n: slots of the padded layout (the largest cluster)
        return max(self.cluster_sizes)

    @property
    def uniform(self) -> bool:
        """Every cluster holds the same number of modules of every bank (no padding)."""
        return all(s == self.sizes[0] for s in self.sizes)

    @property
    def bank_totals(self) -> list[int]:
        """M_b: rows of each bank."""
        return [sum(s[b] for s in self.sizes) for b in range(self.n_banks)]

    @property
    def n_modules(self) -> int:
        return sum(self.bank_totals)

    def to_json(self) -> dict:
        """The module-level graph as node-link JSON (what viz/ draws)."""
        return nx.node_link_data(self.graph, edges="links")

    def row_start(self, bank: int, cluster: int) -> int:
        """First row of ``cluster`` in bank ``bank``."""
        return sum(self.sizes[c][bank] for c in range(cluster))

    def bank_offset(self, bank: int) -> int:
        """Global id of bank ``bank``'s row 0 (banks are concatenated)."""
        return sum(self.bank_totals[:bank])

    def members(self, cluster: int) -> list[int]:
        """Global module ids of ``cluster``'s slots, in slot order (bank by bank)."""
        out = []
        for b, n_b in enumerate(self.sizes[cluster]):
            first = self.bank_offset(b) + self.row_start(b, cluster)
            out += range(first, first + n_b)
        return out

    def clusters(self) -> list[list[int]]:
        """Every cluster's members."""
        return [self.members(c) for c in range(self.n_clusters)]

    def bank_of(self, module: int) -> int:
        """Global module id -> its bank."""
        for b, total in enumerate(self.bank_totals):
            if module < total:
                return b
            module -= total
        raise IndexError(module)

    def cluster_of(self, module: int) -> int:
        """Global module id (banks concatenated, each cluster-major) -> cluster."""
        b = self.bank_of(module)
        row = module - self.bank_offset(b)
        for c in range(self.n_clusters):
            row -= self.sizes[c][b]
            if row < 0:
                return c
        raise IndexError(module)

    def module_id(self, cluster: int, j: int) -> int:
        """Slot j of ``cluster`` (banks in order) -> global module id."""
        return self.members(cluster)[j]

    def member_mask(self) -> Tensor:
        """[C, n] bool: the slot holds a module."""
        n = self.cluster_size
        return torch.arange(n)[None, :] < torch.tensor(self.cluster_sizes)[:, None]

    def slot_ids(self, fill: int) -> Tensor:
        """[C, n] long: global module id in every slot, ``fill`` in empty slots."""
        n = self.cluster_size
        return torch.tensor([m + [fill] * (n - len(m)) for m in self.clusters()])

    def relayout(
        self, sizes: list[list[int]], adjacency: list[Tensor | None], seed: int
    ) -> Topology:
        """The same kind of society with new clusters: ``sizes[c][b]`` as above and each
        cluster's own [n_c, n_c] adjacency (None: wire it as ``intra`` says). Inter-cluster
        inputs (chains) and the merge list are kept when the number of clusters is; otherwise
        they are rebuilt for the new clusters in their order, as the kind says."""
        same = len(sizes) == self.n_clusters
        C = len(sizes)
        n = max(sum(s) for s in sizes)
        adj = torch.zeros(C, n, n)
        for c, (s, a) in enumerate(zip(sizes, adjacency, strict=True)):
            n_c = sum(s)
            if a is None:
                a = _intra_adjacency(self.intra, n_c, seed + c)
            if tuple(a.shape) != (n_c, n_c):
                raise ValueError(f"cluster {c}: adjacency {tuple(a.shape)} for {n_c} modules")
            adj[c, :n_c, :n_c] = a
        inputs, merge = _links(self.spec, C)
        if same:
            inputs, merge = [list(i) for i in self.inputs], list(self.merge)
        topo = Topology(self.kind, C, [list(s) for s in sizes], adj, inputs, self.routed,
                        self.blackboard, merge, self.intra)  # fmt: skip
        topo.graph = _module_graph(topo)
        return topo

    def summary(self) -> dict:
        """Compact description for events: members of each cluster and intra-cluster edges."""
        return {
            "clusters": self.clusters(),
            "edges": [int(self.adjacency[c].sum()) for c in range(self.n_clusters)],
        }

    def firings(self, rounds: int) -> list[Firing]:
        """Every (cluster, round) firing of one step with what it waits for.

        rounds R = extra rounds after the first pass (R = 0: every cluster fires once).
        Chains (pipeline, feedback, brain) fire as a wavefront; the others fire round by round,
        and with a blackboard (or attention over every cluster) every round waits for the
        whole previous round (the board's competition needs every proposal).
        """
        C, spec = self.n_clusters, self.spec
        out = []
        for r in range(rounds + 1):
            for c in range(C):
                after: list[tuple[int, int]] = []
                if r > 0:
                    every = self.blackboard or spec.attend  # reads the whole previous round
                    after += [(c2, r - 1) for c2 in range(C)] if every else [(c, r - 1)]
                if spec.chain and c > 0:
                    after.append((c - 1, r))  # bottom-up, same round
                if spec.top_down and r > 0 and c < C - 1:
                    after.append((c + 1, r - 1))  # top-down, previous round
                out.append(Firing(c, r, tuple(dict.fromkeys(after))))
        return out


def build_topology(
    kind: str, n_clusters: int, group_counts: list[int], intra: str = "complete", seed: int = 0
) -> Topology:
    """The society graph for ``kind`` with C clusters over module groups of the given counts."""
    spec: Kind = TOPOLOGIES.get(kind)
    C = 1 if spec.one_cluster else n_clusters
    bank_sizes = [count // C for count in group_counts]
    n = sum(bank_sizes)
    intra = spec.intra or intra
    adjacency = torch.stack([_intra_adjacency(intra, n, seed + c) for c in range(C)])
    inputs, merge = _links(spec, C)
    sizes = [list(bank_sizes) for _ in range(C)]
    topo = Topology(kind, C, sizes, adjacency, inputs, spec.routed, spec.blackboard, merge, intra)
    topo.graph = _module_graph(topo)
    return topo


def _links(spec: Kind, C: int) -> tuple[list[list[int]], list[int]]:
    """Inter-cluster inputs of each of C clusters (serial c-1 -> c, top-down c+1 -> c) and the
    clusters whose outputs are merged, as ``spec`` says."""
    inputs: list[list[int]] = [[] for _ in range(C)]
    if spec.chain:
        for c in range(1, C):
            inputs[c].append(c - 1)
    if spec.top_down:
        for c in range(C - 1):
            inputs[c].append(c + 1)
    merge = {"last": [C - 1], "none": []}.get(spec.merge, list(range(C)))
    return inputs, merge


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
    members = t.clusters()
    for c, ids in enumerate(members):
        for m in ids:
            g.add_node(m, kind="module", cluster=c)
    for c, ids in enumerate(members):
        ii, jj = t.adjacency[c].nonzero(as_tuple=True)
        for i, j in zip(ii.tolist(), jj.tolist(), strict=True):
            g.add_edge(ids[j], ids[i], kind="mate")
        for src in t.inputs[c]:
            kind = "bottom_up" if src < c else "top_down"
            for u in members[src]:
                for v in ids:
                    g.add_edge(u, v, kind=kind)
    if t.spec.attend:
        for c, ids in enumerate(members):
            for c2, src in enumerate(members):
                if c2 != c:
                    g.add_edges_from(((u, v) for u in src for v in ids), kind="attend")
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
