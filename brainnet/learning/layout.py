"""Layouts: what a reorganisation action decides (clusters of old or new modules, their wiring,
the router's rows), and the per-bank row plans that carry it out (``bank_plans``).

The row mechanics (``RowPlan``, ``resize_bank``, ``resize_rows``) live in
brainnet/modules/resize.py, below the society, so that banks and the router resize themselves.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from brainnet.modules.resize import RowPlan


@dataclass(frozen=True)
class New:
    """A new module in a layout: a noisy copy of old module ``parent`` (global id)."""

    parent: int


Ref = int | New  # an old module (global id) or a new one


@dataclass
class Layout:
    """What a reorganisation action decided: the new clusters, their wiring, the router.

    ``clusters[c]`` lists the new cluster's modules (old global ids or ``New``);
    ``adjacency[c]`` its [n_c, n_c] intra-cluster graph in that order (None: wired as the
    topology's ``intra`` says); ``router`` the new gate rows (old cluster c or a copy), None
    when the clusters' identities are unchanged; ``detail`` goes to the event log."""

    clusters: list[list[Ref]]
    adjacency: list[Tensor | None]
    router: RowPlan | None
    detail: dict[str, Any]


def bank_plans(
    bank_of: Callable[[int], int], offsets: list[int], clusters: list[list[Ref]]
) -> tuple[list[list[int]], list[RowPlan], list[list[int]], Tensor]:
    """Row plans that lay every bank out cluster-major for ``clusters``.

    ``bank_of`` maps an old global id to its bank, ``offsets[b]`` is the global id of bank b's
    row 0. Within a cluster, modules are ordered bank by bank (stable), the slot order.
    Returns (sizes[c][b], one RowPlan per bank, each cluster's permutation from the listed order
    to slot order, rows [N_new]: the old global id of every new global id, -1 = new module).
    """
    B = len(offsets)
    src: list[list[int]] = [[] for _ in range(B)]
    par: list[list[int]] = [[] for _ in range(B)]
    sizes, perms = [], []
    for refs in clusters:
        banks = [bank_of(r.parent if isinstance(r, New) else r) for r in refs]
        order = sorted(range(len(refs)), key=lambda i: banks[i])  # stable: slot order
        perms.append(order)
        sizes.append([banks.count(b) for b in range(B)])
        for i in order:
            r, b = refs[i], banks[i]
            if isinstance(r, New):
                src[b].append(-1)
                par[b].append(r.parent - offsets[b])
            else:
                src[b].append(r - offsets[b])
                par[b].append(-1)
    plans = [RowPlan(s, p) for s, p in zip(src, par, strict=True)]
    rows = [s + offsets[b] if s >= 0 else -1 for b in range(B) for s in src[b]]
    return sizes, plans, perms, torch.tensor(rows, dtype=torch.long)
