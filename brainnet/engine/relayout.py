"""Reorganisation in a running simulation: the actions of ``reorganize.actions`` after an
emergence event, carried out on every part that is sized by the layout — banks (with their
AdamW state and EMA rows), the router's rows, the topology, arousal's routing statistics, the
probes' per-module state and the blackboard-write counts the actions read — keeping every
surviving module exactly. Also the layout's part of a checkpoint.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from brainnet.config import Scenario
from brainnet.learning.actions import Evidence, Limits
from brainnet.learning.consolidation import Consolidation
from brainnet.learning.layout import Layout, New, Ref, bank_plans
from brainnet.learning.probes import Probes
from brainnet.metrics import RunWriter
from brainnet.modules.bank import module_cross_entropy
from brainnet.modules.resize import RowPlan, resize_bank
from brainnet.registry import ACTIONS
from brainnet.society import Arousal, Society


class Relayout:
    """Owns the layout-dependent state of a simulation that no single part owns."""

    def __init__(
        self,
        sc: Scenario,
        society: Society,
        optimizer: torch.optim.Optimizer,
        consolidation: Consolidation,
        probes: Probes,
        arousal: Arousal | None,
    ) -> None:
        self.sc = sc
        self.society, self.optimizer = society, optimizer
        self.consolidation, self.probes, self.arousal = consolidation, probes, arousal
        self.initial = (society.topology.n_clusters, society.n_modules)  # reorganisation limits
        self.heard = torch.zeros(society.n_modules)  # board writes per module since a relayout

    def hear(self, writes: Tensor) -> None:
        """Add an interval's board writes per module [N] (NaN: none measured)."""
        self.heard += torch.nan_to_num(writes.float().cpu())

    @torch.no_grad()
    def reorganize(
        self, w: RunWriter, step: int, logits: list[Tensor], cause: str, res: dict
    ) -> None:
        """Run ``reorganize.actions`` in order after an emergence event and log each one.

        The actions (learning/actions.py) decide from the probe set's evidence — φ, probe loss
        and board writes per module — and ``apply`` carries their layout out. Each action is
        one ``reorganize`` event with the topology before and after; the graph after it goes to
        ``topology_step<step>_<i>_<action>.json``."""
        cfg = self.sc.reorganize
        emergence = self.probes.emergence
        assert cfg is not None and emergence is not None
        gen = torch.Generator(device=self.society.adjacency.device)
        gen.manual_seed(self.sc.seed + 7 * step)
        phi = res.get("phi")  # the probe's φ [N, S, C], if the caller has it
        if phi is None:
            phi = torch.cat([emergence.phi(z) for z in logits])
        phi = phi.flatten(1).float().cpu()  # [N, S·C]
        y = self.probes.batch.y
        loss = torch.cat([module_cross_entropy(z, y) for z in logits]).float().cpu()
        ev = Evidence(phi, loss, self.heard.clone() if self.society.slots > 0 else None)
        topo = self.society.topology
        limits = Limits.of(cfg, *self.initial)
        for i, name in enumerate(cfg.actions):
            before = topo.summary()
            layout = ACTIONS[name](topo, ev, cfg, limits)
            common = {"action": name, "cause": cause, "delta_phi": res["delta_phi"],
                      "theta": res["theta"]}  # fmt: skip
            if isinstance(layout, str):
                w.event("reorganize", step, **common, skipped=layout)
                continue
            rows, parents = self.apply(layout, gen, seed=self.sc.seed + step + i)
            ev = ev.follow(rows, parents)
            topo = self.society.topology
            graph = None
            if topo.merged:
                graph = f"topology_step{step:06d}_{i}_{name}.json"
                w.write_json(graph, topo.to_json())
            w.event("reorganize", step, **common, **layout.detail, before=before,
                    after=topo.summary(), graph=graph)  # fmt: skip

    @torch.no_grad()
    def apply(
        self, layout: Layout, generator: torch.Generator | None = None, seed: int = 0
    ) -> tuple[Tensor, Tensor]:
        """Resize every bank (with its AdamW state and EMA rows), the router's cluster rows and
        the topology to ``layout``. Returns (rows [N_new]: old global id of each module, -1 for
        a new one; parents [N_new]: the old module a new one copies, -1 for survivors)."""
        cfg = self.sc.reorganize
        noise = 0.0 if cfg is None else cfg.noise
        soc, teacher = self.society, self.consolidation.teacher
        topo = soc.topology
        offsets = [topo.bank_offset(b) for b in range(topo.n_banks)]
        sizes, plans, perms, rows = bank_plans(topo.bank_of, offsets, layout.clusters)
        for b, (bank, plan) in enumerate(zip(soc.banks, plans, strict=True)):
            mirror = None if teacher is None else teacher.mirror(b)
            resize_bank(bank, plan, self.optimizer, noise=noise, generator=generator,
                        teacher_bank=mirror)  # fmt: skip
        parents = torch.tensor(
            [p + offsets[b] if s < 0 else -1 for b, pl in enumerate(plans)
             for s, p in zip(pl.source, pl.parent, strict=True)], dtype=torch.long
        )  # fmt: skip
        adjacency = [
            None if a is None else a[perm][:, perm]
            for a, perm in zip(layout.adjacency, perms, strict=True)
        ]
        new = soc.adopt_layout(sizes, adjacency, layout.router, seed, self.optimizer, noise,
                               generator)  # fmt: skip
        if self.arousal is not None and (  # routing statistics follow the clusters' identity
            self.arousal.n_clusters != new.n_clusters or layout.router is not None
        ):
            self.arousal.resize(new.n_clusters)
        self.consolidation.relayout()
        self.probes.select_rows(rows)
        self.heard = self.heard[torch.where(rows >= 0, rows, parents)]  # a copy: its parent's
        return rows, parents

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        """The society's shape after any reorganisation (a checkpoint restores it first)."""
        topo = self.society.topology
        return {"sizes": topo.sizes, "adjacency": topo.adjacency.cpu(), "heard": self.heard}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Give banks, router and topology the checkpoint's shape (values are loaded next)."""
        sizes, adj = state["sizes"], state["adjacency"]
        topo = self.society.topology
        if sizes != topo.sizes:
            clusters: list[list[Ref]] = [  # placeholders: copies of each bank's first module
                [New(topo.bank_offset(b)) for b, n_b in enumerate(s) for _ in range(n_b)]
                for s in sizes
            ]
            n = [sum(s) for s in sizes]
            C, C_old = len(sizes), topo.n_clusters
            router = None if C == C_old else RowPlan([-1] * C, [0] * C)
            adjacency = [adj[c, : n[c], : n[c]] for c in range(C)]
            self.apply(Layout(clusters, adjacency, router, {}))
        self.heard = state["heard"].clone()
