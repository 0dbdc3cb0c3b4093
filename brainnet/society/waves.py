"""The static index tensors of a plan's waves: who fires together, which rows of each bank that
is, and what each firing may read (mates, inter-cluster inputs, the blackboard).

Built once per (plan, layout) on the host and kept on the device, so the step itself does no
host work per wave.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from brainnet.society.clock import Plan
from brainnet.society.topology import Topology


@dataclass
class Wave:
    """Static index tensors of one wave of a plan."""

    clusters: Tensor  # [w] long
    bank_idx: list[Tensor | None]  # per bank: rows of the wave's modules (None = all rows)
    row_pos: list[Tensor]  # per bank [r_b]: wave position of each row's cluster (unequal only)
    dest: list[Tensor]  # per bank [r_b]: flat slot (position * n + slot) of each row (unequal)
    mates: Tensor  # [w] bool: the cluster has fired before (its mates' messages exist)
    inputs: Tensor  # [w, I] long: inter-cluster sources, clamped to >= 0
    input_ok: Tensor  # [w, I] bool: that source exists and has fired before
    board: bool  # the blackboard has been written before this wave
    attend: bool  # attention topology: the other clusters have spoken before this wave
    any_memory: bool
    in_wave: Tensor  # [C] bool

    def all_alone(self, n_clusters: int) -> bool:
        """Every cluster fires in this wave and none reads memory: each module's prediction is
        its own, alone (what consolidation distils)."""
        return len(self.clusters) == n_clusters and not self.any_memory


def wave_tensors(topo: Topology, plan: Plan, has_mates: bool, device: torch.device) -> list[Wave]:
    """One ``Wave`` per (start time, firings) of ``plan`` on ``topo``'s padded [C, n] layout."""
    C, n = topo.n_clusters, topo.cluster_size
    fired: set[int] = set()
    width = max([len(i) for i in topo.inputs] + [1])
    waves = []
    for i, (_, firings) in enumerate(plan.waves):
        cl = sorted({f.cluster for f in firings})
        full = len(cl) == C
        bank_idx, row_pos, dest = [], [], []
        for b in range(topo.n_banks):  # rows of the wave's clusters, cluster-major
            rows, pos, slot = [], [], []
            for p, c in enumerate(cl):
                n_bc, first = topo.sizes[c][b], topo.row_start(b, c)
                before = sum(topo.sizes[c][:b])  # slots of earlier banks in cluster c
                rows += range(first, first + n_bc)
                pos += [p] * n_bc
                slot += [p * n + before + j for j in range(n_bc)]
            bank_idx.append(None if full else torch.tensor(rows, dtype=torch.long, device=device))
            row_pos.append(torch.tensor(pos, dtype=torch.long, device=device))
            dest.append(torch.tensor(slot, dtype=torch.long, device=device))
        src = [topo.inputs[c] + [-1] * (width - len(topo.inputs[c])) for c in cl]
        ok = [[s >= 0 and s in fired for s in row] for row in src]
        mates = [c in fired for c in cl]
        board = topo.blackboard and i > 0
        attend = topo.spec.attend and C > 1 and bool(fired)
        any_memory = board or attend or (has_mates and any(mates)) or any(map(any, ok))
        clusters = torch.tensor(cl, device=device)
        waves.append(
            Wave(
                clusters=clusters,
                bank_idx=bank_idx,
                row_pos=row_pos,
                dest=dest,
                mates=torch.tensor(mates, device=device),
                inputs=torch.tensor(src, device=device).clamp(min=0),
                input_ok=torch.tensor(ok, device=device, dtype=torch.bool),
                board=board,
                attend=attend,
                any_memory=any_memory,
                in_wave=torch.isin(torch.arange(C, device=device), clusters),
            )
        )
        fired.update(cl)
    return waves
