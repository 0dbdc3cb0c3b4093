"""Peer-set builders the distillation tests use to write [M, P, B, T, V] peer tensors by hand
(the library gathers peers as a pool with weights, ``peer_weights``): cluster mates
(``peer_logits_from_clusters`` with the index ``mates_index``) and arbitrary peer lists
(``gather_peers``)."""

from __future__ import annotations

import torch
from torch import Tensor


def gather_peers(logits: Tensor, peer_index: Tensor) -> Tensor:
    """Peers' logits per module: logits [M, B, T, V], peer_index [M, P] long -> [M, P, B, T, V].

    For router-selected (or any other) peer sets; one batched gather.
    """
    M, P = peer_index.shape
    return logits.index_select(0, peer_index.reshape(-1)).view(M, P, *logits.shape[1:])


def mates_index(n: int, device: torch.device | None = None) -> Tensor:
    """[n, n − 1] long: row i lists 0..n−1 without i (built with tensor ops, no loop)."""
    j = torch.arange(n - 1, device=device)  # [n-1]
    i = torch.arange(n, device=device)  # [n]
    return j[None, :] + (j[None, :] >= i[:, None]).long()  # [n, n-1]


def peer_logits_from_clusters(logits: Tensor) -> Tensor:
    """Each module's cluster mates: logits [C, n, B, T, V] -> [C·n, n − 1, B, T, V].

    Row c·n + i holds the logits of modules (c, j), j ≠ i, in increasing j. One gather with an
    index tensor; n = 1 gives an empty peer axis.
    """
    C, n = logits.shape[:2]
    peers = logits[:, mates_index(n, logits.device)]  # [C, n, n-1, B, T, V]
    return peers.reshape(C * n, n - 1, *logits.shape[2:])
