"""Dense local clusters: message passing among mates and merging of predictions.

All ops work on every cluster of a wave at once (a leading cluster axis), never in a Python
loop over clusters or modules.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def take(x: Tensor, index: Tensor) -> Tensor:
    """``x[index]`` along dim 0 for an index of any shape: x [R, *rest], index [*I] long ->
    [*I, *rest]. Through ``index_select``, whose backward is an ``index_add`` (advanced
    indexing's is an accumulating ``index_put``, several times slower on the CPU)."""
    return x.index_select(0, index.reshape(-1)).view(*index.shape, *x.shape[1:])


def aggregate_mates(messages: Tensor, adjacency: Tensor) -> Tensor:
    """Mean of each module's in-neighbours' messages inside its cluster.

    messages [C, n, *rest], adjacency [C, n, n] (adjacency[c, i, j] = 1: i reads j)
    -> [C, n, *rest]; zeros for a module without mates.
    """
    C, n = messages.shape[:2]
    deg = adjacency.sum(-1, keepdim=True).clamp(min=1)  # [C, n, 1]
    flat = messages.reshape(C, n, -1)  # [C, n, R]
    return torch.bmm(adjacency.to(flat.dtype) / deg.to(flat.dtype), flat).view_as(messages)


def cluster_log_probs(module_lp: Tensor, member: Tensor | None = None) -> Tensor:
    """Log of the mean of the cluster's modules' next-token distributions (an ensemble).

    module_lp [C, n, cap, T, V]: the modules' log-probabilities -> [C, cap, T, V].
    member [C, n] bool (unequal clusters): only a cluster's own slots are averaged.
    """
    if member is None:
        return torch.logsumexp(module_lp, dim=1) - math.log(module_lp.shape[1])
    keep = member[:, :, None, None, None]  # [C, n, 1, 1, 1]
    lp = module_lp.masked_fill(~keep, float("-inf"))
    return torch.logsumexp(lp, dim=1) - member.sum(1).float().log()[:, None, None, None]


def merge_routed(
    cluster_lp: Tensor, slot: Tensor, chosen: Tensor, kept: Tensor, gates: Tensor
) -> Tensor:
    """Router-weighted mixture of the chosen clusters' predictions for each sequence.

    cluster_lp [C, cap, T, V]; chosen, slot, kept, gates [B, k]
    -> log p [B, T, V]. Gates are renormalised over the kept choices; a sequence whose every
    choice was dropped (over capacity) gets the uniform distribution.
    """
    C, cap, T, V = cluster_lp.shape
    flat = torch.cat([cluster_lp.reshape(C * cap, T, V), cluster_lp.new_zeros(1, T, V)])
    index = torch.where(kept, chosen * cap + slot, C * cap)  # [B, k], dropped -> zero row
    picked = take(flat, index)  # [B, k, T, V]
    w = gates.float() * kept  # [B, k]
    total = w.sum(-1, keepdim=True)  # [B, 1]
    # never take log(0) or a logsumexp over nothing: their gradients are NaN even when masked
    log_w = torch.log(torch.where(kept, w, 1.0) / total.clamp(min=1e-9))  # [B, k]
    log_w = log_w.masked_fill(~kept, float("-inf"))
    first = torch.arange(kept.shape[1], device=kept.device) == 0  # [k]
    log_w = torch.where((total == 0) & first, 0.0, log_w)  # all dropped: a finite dummy
    mixed = torch.logsumexp(picked + log_w[:, :, None, None], dim=1)  # [B, T, V]
    uniform = torch.full_like(mixed, -math.log(V))
    return torch.where((total > 0)[:, :, None], mixed, uniform)


def merge_uniform(cluster_lp: Tensor) -> Tensor:
    """Equal-weight mixture over clusters: [C, B, T, V] -> [B, T, V]."""
    return torch.logsumexp(cluster_lp, dim=0) - math.log(cluster_lp.shape[0])
