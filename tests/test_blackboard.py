"""The blackboard: top-S competition against a reference loop, ties, decay, content, gradients."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from brainnet.society.blackboard import BlackboardConfig, empty, write


def reference_write(slots, strength, proposals, prop_strength, threshold, decay):
    """Per (b, t): candidates = old slots (decayed) then proposals; keep the S strongest
    eligible ones, ties to the lower candidate index. Returns (source, strength) as lists."""
    B, T, S, _ = slots.shape
    K = proposals.shape[2]
    decayed = strength * decay  # in float32, as the board computes it
    source = [[[-1] * S for _ in range(T)] for _ in range(B)]
    strength_out = [[[0.0] * S for _ in range(T)] for _ in range(B)]
    for b in range(B):
        for t in range(T):
            cands = [(float(decayed[b, t, s]), s) for s in range(S)]
            cands += [(float(prop_strength[b, t, j]), S + j) for j in range(K)]
            ok = [(st, i) for st, i in cands if st >= threshold and st > 0]
            ok.sort(key=lambda c: (-c[0], c[1]))
            for s, (st, i) in enumerate(ok[:S]):
                source[b][t][s] = i
                strength_out[b][t][s] = st
    return source, strength_out


def random_board(B, T, S, K, Dm, g, tie_levels=None):
    """Random board and proposals; with tie_levels, strengths come from a few values (ties)."""

    def strengths(*shape):
        if tie_levels is None:
            return torch.rand(*shape, generator=g)
        levels = torch.tensor(tie_levels)
        return levels[torch.randint(0, len(levels), shape, generator=g)]

    slots = torch.randn(B, T, S, Dm, generator=g)
    strength = strengths(B, T, S)
    strength[torch.rand(B, T, S, generator=g) < 0.3] = 0.0  # some empty slots
    slots = slots * (strength > 0).unsqueeze(-1)
    proposals = torch.randn(B, T, K, Dm, generator=g)
    prop_strength = strengths(B, T, K)
    prop_strength[torch.rand(B, T, K, generator=g) < 0.2] = float("-inf")  # absent proposers
    return slots, strength, proposals, prop_strength


@pytest.mark.parametrize(
    "S,K,threshold,decay,ties",
    [
        (4, 6, 0.5, 0.5, None),
        (4, 2, 0.3, 0.9, None),  # K < S: slots must stay empty
        (3, 5, 0.0, 1.0, None),  # threshold 0: only strength 0 is ineligible
        (2, 6, 0.25, 1.0, [0.25, 0.5, 0.75]),  # exact ties on purpose (decay 1 keeps them)
        (4, 4, 0.5, 0.5, [0.5, 1.0]),  # decayed old 1.0 ties new 0.5, threshold on the tie
        (1, 3, 0.9, 0.5, None),  # most candidates below threshold
    ],
)
def test_write_matches_reference(S, K, threshold, decay, ties):
    g = torch.Generator().manual_seed(S * 10 + K)
    B, T, Dm = 3, 5, 4
    for _ in range(4):
        slots, strength, proposals, prop = random_board(B, T, S, K, Dm, g, ties)
        out = write(slots, strength, proposals, prop, threshold, decay)
        source, strength_ref = reference_write(slots, strength, proposals, prop, threshold, decay)
        assert out.source.tolist() == source
        assert torch.allclose(out.strength, torch.tensor(strength_ref), atol=0, rtol=0)
        assert out.occupancy.tolist() == [[[i >= 0 for i in row] for row in bt] for bt in source]
        # content is the winning candidate's vector, exactly; empty slots are zero
        cand = torch.cat([slots, proposals], dim=2)
        for b in range(B):
            for t in range(T):
                for s in range(S):
                    i = source[b][t][s]
                    want = cand[b, t, i] if i >= 0 else torch.zeros(Dm)
                    assert torch.equal(out.slots[b, t, s], want)
        if K < S:
            assert (~out.occupancy).any()


def test_ties_prefer_old_content_then_lower_proposer():
    board = empty(1, 1, 2, 3)
    slots = torch.tensor([[[[1.0, 1, 1], [0, 0, 0]]]])  # [1, 1, 2, 3]: slot 0 full
    strength = torch.tensor([[[1.0, 0.0]]])  # decays to 0.6
    proposals = torch.arange(9.0).view(1, 1, 3, 3)
    prop = torch.tensor([[[0.6, 0.6, 0.6]]])  # three proposers tie with the old slot
    out = write(slots, strength, proposals, prop, threshold=0.5, decay=0.6)
    assert out.source.tolist() == [[[0, 2]]]  # old slot, then proposer 0 (candidate S + 0)
    assert torch.equal(out.slots[0, 0, 1], proposals[0, 0, 0])
    assert board.source.tolist() == [[[-1, -1]]] and not board.occupancy.any()


def test_decay_keeps_then_forgets_uncontested_slot():
    S, Dm = 3, 4
    board = empty(1, 2, S, Dm)
    msg = torch.randn(1, 2, 1, Dm)
    none = torch.full((1, 2, 1), float("-inf"))
    board = write(board.slots, board.strength, msg, torch.full((1, 2, 1), 0.9), 0.2, 0.5)
    assert board.source[..., 0].tolist() == [[S, S]]
    history = []
    for _ in range(3):  # 0.9 -> 0.45 -> 0.225 -> 0.1125 (< 0.2: gone)
        board = write(board.slots, board.strength, msg, none, 0.2, 0.5)
        history.append(board.strength[0, 0, 0].item())
        if board.occupancy[0, 0, 0]:
            assert board.source[0, 0, 0].item() == 0  # kept old slot 0
            assert torch.equal(board.slots[..., 0, :], msg[..., 0, :])
    assert history == pytest.approx([0.45, 0.225, 0.0])
    assert not board.occupancy.any() and torch.equal(board.slots, torch.zeros(1, 2, S, Dm))


def test_outcompeted_old_slot_is_replaced():
    slots = torch.ones(1, 1, 1, 2)
    out = write(slots, torch.tensor([[[0.8]]]), torch.zeros(1, 1, 1, 2), torch.tensor([[[0.7]]]),
                0.1, 0.5)  # fmt: skip
    assert out.source.tolist() == [[[1]]] and out.strength.item() == pytest.approx(0.7)
    assert torch.equal(out.slots, torch.zeros(1, 1, 1, 2))


def test_gradients_reach_winners_only():
    g = torch.Generator().manual_seed(3)
    B, T, S, K, Dm = 2, 3, 2, 5, 4
    proposals = torch.randn(B, T, K, Dm, generator=g, requires_grad=True)
    salience = torch.randn(B, T, K, generator=g, requires_grad=True)
    board = empty(B, T, S, Dm)
    out = write(board.slots, board.strength, proposals, salience.sigmoid(), 0.4, 0.5)
    (out.slots * torch.randn(B, T, S, Dm, generator=g)).sum().backward(retain_graph=True)
    won = torch.zeros(B, T, K, dtype=torch.bool)
    for b in range(B):
        for t in range(T):
            for s in range(S):
                if out.source[b, t, s] >= 0:
                    won[b, t, out.source[b, t, s] - S] = True
    assert won.any() and (~won).any()
    assert (proposals.grad[won].abs().sum(-1) > 0).all()
    assert (proposals.grad[~won] == 0).all()
    out.strength.sum().backward()
    assert (salience.grad[won] != 0).all() and (salience.grad[~won] == 0).all()


def test_tensor_threshold_and_config():
    slots, strength, proposals, prop = random_board(2, 2, 3, 4, 2, torch.Generator())
    a = write(slots, strength, proposals, prop, 0.3, 0.5)
    b = write(slots, strength, proposals, prop, torch.tensor(0.3), 0.5)
    assert torch.equal(a.source, b.source) and torch.equal(a.slots, b.slots)
    assert BlackboardConfig().slots == 4
    for bad in ({"slots": 0}, {"threshold": 1.5}, {"decay": -0.1}):
        with pytest.raises(ValidationError):
            BlackboardConfig(**bad)
