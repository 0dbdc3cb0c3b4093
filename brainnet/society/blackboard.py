"""The blackboard (global workspace / working memory): S slots per sequence and token position.

Why: a few slots that every module reads next round is sparse, broadcast communication between
clusters (never all-to-all). Access is a competition: each round the old slots (their strength
decayed) and the new proposals (message, strength = sigmoid(salience)) compete, and the S
strongest above a threshold win. Old content survives only while it stays strong enough.

Tie-breaking is exact and deterministic: a stable sort keeps candidates in their index order
(old slots first, then proposers in order), so old content and lower proposers win ties.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from brainnet.config import BlackboardConfig  # noqa: F401 (re-exported)


class BoardWrite(NamedTuple):
    """The board after one round; slots are ordered by strength, strongest first."""

    slots: Tensor  # [B, T, S, Dm] content (0 where empty)
    strength: Tensor  # [B, T, S] strength of the content (0 = empty)
    source: Tensor  # [B, T, S] long: winning candidate (0..S-1 old slot, S+k proposal k), -1
    occupancy: Tensor  # [B, T, S] bool: the slot holds content


def empty(
    B: int,
    T: int,
    S: int,
    Dm: int,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> BoardWrite:
    """An empty board: no content, strength 0, source -1."""
    slots = torch.zeros(B, T, S, Dm, device=device, dtype=dtype)  # [B, T, S, Dm]
    strength = torch.zeros(B, T, S, device=device, dtype=dtype)  # [B, T, S]
    source = torch.full((B, T, S), -1, dtype=torch.long, device=device)  # [B, T, S]
    occupancy = torch.zeros(B, T, S, dtype=torch.bool, device=device)  # [B, T, S]
    return BoardWrite(slots, strength, source, occupancy)


def write(
    slots: Tensor,
    strength: Tensor,
    proposals: Tensor,
    prop_strength: Tensor,
    threshold: float | Tensor,
    decay: float | Tensor,
) -> BoardWrite:
    """One round of competition for the S slots of every (sequence, position).

    slots [B, T, S, Dm], strength [B, T, S] (0 = empty): the current board.
    proposals [B, T, K, Dm], prop_strength [B, T, K] in [0, 1]: the modules' bids (pass
    sigmoid(salience); -inf or 0 for absent proposers).
    Candidates are the S old slots with strength * decay, then the K proposals. A candidate is
    eligible iff strength >= threshold and > 0; the S strongest eligible ones win. Gradients flow
    to the winners' content and strength only (losers get exactly zero).
    """
    S = slots.shape[2]
    cand = torch.cat([slots, proposals], dim=2)  # [B, T, S+K, Dm]
    cand_strength = torch.cat([strength * decay, prop_strength], dim=2)  # [B, T, S+K]
    eligible = (cand_strength >= threshold) & (cand_strength > 0)  # [B, T, S+K]

    key = torch.where(eligible, cand_strength.detach(), float("-inf"))  # [B, T, S+K]
    # Ascending stable sort of -key: strongest first, ties in candidate order (deterministic).
    order = torch.sort(-key, dim=-1, stable=True).indices[..., :S]  # [B, T, S]
    won = eligible.gather(-1, order)  # [B, T, S]

    new_strength = torch.where(won, cand_strength.gather(-1, order), 0.0)  # [B, T, S]
    idx = order.unsqueeze(-1).expand(*order.shape, cand.shape[-1])  # [B, T, S, Dm]
    content = cand.gather(2, idx).masked_fill(~won.unsqueeze(-1), 0.0)  # [B, T, S, Dm]
    source = torch.where(won, order, -1)  # [B, T, S]
    return BoardWrite(content, new_strength, source, won)
