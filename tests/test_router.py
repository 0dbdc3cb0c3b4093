"""The router: dispatch against a reference loop, capacity, losses by hand, noise, context."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from brainnet.society.router import (
    Router,
    RouterConfig,
    capacity,
    dispatch,
    routing_entropy,
)

V = 11


def reference_dispatch(chosen: list[list[int]], C: int, cap: int):
    """GShard priority by hand: choice i of every sequence (in batch order) before choice i+1."""
    B, k = len(chosen), len(chosen[0])
    fill = [0] * C
    slot = [[-1] * k for _ in range(B)]
    seq_index = [[B] * cap for _ in range(C)]
    load = [0] * C
    for i in range(k):
        for b in range(B):
            c = chosen[b][i]
            load[c] += 1
            if fill[c] < cap:
                slot[b][i] = fill[c]
                seq_index[c][fill[c]] = b
                fill[c] += 1
    dropped = sum(s == -1 for row in slot for s in row)
    return slot, seq_index, load, dropped


def random_chosen(B: int, k: int, C: int, g: torch.Generator) -> torch.Tensor:
    """[B, k] distinct clusters per row."""
    return torch.rand(B, C, generator=g).argsort(-1)[:, :k]


@pytest.mark.parametrize(
    "B,k,C,cap",
    [(8, 1, 4, 2), (8, 2, 4, 4), (16, 2, 4, 3), (5, 3, 3, 5), (7, 2, 5, 1), (32, 4, 8, 20)],
)
def test_dispatch_matches_reference(B, k, C, cap):
    g = torch.Generator().manual_seed(B * 100 + k * 10 + C)
    for _ in range(5):
        chosen = random_chosen(B, k, C, g)
        d = dispatch(chosen, C, cap)
        slot, seq_index, load, dropped = reference_dispatch(chosen.tolist(), C, cap)
        assert d.slot.tolist() == slot
        assert d.kept.tolist() == [[s >= 0 for s in row] for row in slot]
        assert d.seq_index.shape == (C, cap)
        assert d.seq_index.tolist() == seq_index
        assert d.load.tolist() == load
        assert d.dropped.item() == dropped
        assert d.load.sum().item() == B * k
        # consistency: a kept assignment sits where seq_index says
        for b in range(B):
            for i in range(k):
                if d.kept[b, i]:
                    assert d.seq_index[chosen[b, i], d.slot[b, i]].item() == b


def test_dispatch_first_choices_win():
    # every sequence wants cluster 0 second; sequences 2 and 3 want it first; cap 2
    chosen = torch.tensor([[1, 0], [2, 0], [0, 1], [0, 2]])
    d = dispatch(chosen, 3, cap=2)
    assert d.seq_index[0].tolist() == [2, 3]  # the first choices, although later in the batch
    assert d.kept.tolist() == [[True, False], [True, False], [True, True], [True, True]]
    assert d.slot.tolist() == [[0, -1], [0, -1], [0, 1], [1, 1]]
    assert d.seq_index.tolist() == [[2, 3], [0, 2], [1, 3]]
    assert d.load.tolist() == [4, 2, 2]
    assert d.dropped.item() == 2


def test_capacity_values():
    assert capacity(2, 16, 4, 1.5) == 12  # 2*16/4*1.5
    assert capacity(1, 10, 3, 1.5) == 5  # 5.0 exactly, no float-noise extra row
    assert capacity(1, 10, 4, 1.0) == 3  # ceil(2.5)
    assert capacity(1, 2, 8, 1.0) == 1  # at least 1
    assert capacity(4, 8, 4, 2.0) == 8  # at most B
    assert capacity(1, 7, 7, 1.0) == 1


def make_router(C: int = 4, **kw) -> Router:
    torch.manual_seed(0)
    return Router(RouterConfig(**kw), V, C)


def test_losses_by_hand():
    """B=2, C=2, k=1; logits fixed to [[0, ln 3], [0, 0]], temperature 1."""
    r = make_router(C=2, d_router=1, context=1)
    with torch.no_grad():
        r.embed.weight.fill_(1.0)
        r.gate.weight.zero_()
        r.gate.bias.copy_(torch.tensor([0.0, math.log(3.0)]))
    r.eval()
    route = r(torch.zeros(2, 5, dtype=torch.long), k=1, temperature=1.0)
    # both sequences: probs [1/4, 3/4]; both choose cluster 1 -> f = [0, 1]
    assert torch.allclose(route.probs, torch.tensor([[0.25, 0.75], [0.25, 0.75]]))
    assert route.chosen.tolist() == [[1], [1]]
    # balance = C * sum f_i P_i = 2 * (0 * 0.25 + 1 * 0.75) = 1.5
    assert route.balance_loss.item() == pytest.approx(1.5)
    # z = logsumexp([0, ln 3])^2 = (ln 4)^2 = 1.921812...
    assert route.z_loss.item() == pytest.approx(math.log(4.0) ** 2)
    assert route.z_loss.item() == pytest.approx(1.9218120556728056)
    # aux = 0.01 * 1.5 + 0.001 * 1.9218 = 0.0169218
    assert r.aux_loss(route).item() == pytest.approx(0.0169218120556728)


def test_losses_by_hand_two_clusters_mixed():
    """Logits [[ln 3, 0], [0, ln 3]]: f = [1/2, 1/2], P = [1/2, 1/2] -> balance 1."""
    r = make_router(C=2, d_router=2, context=1)
    with torch.no_grad():
        r.embed.weight.zero_()
        r.embed.weight[0, 0] = 1.0  # token 0 -> e0, token 1 -> e1
        r.embed.weight[1, 1] = 1.0
        r.gate.weight.copy_(torch.tensor([[math.log(3.0), 0.0], [0.0, math.log(3.0)]]))
        r.gate.bias.zero_()
    r.eval()
    route = r(torch.tensor([[0, 5, 5], [1, 5, 5]]), k=1, temperature=1.0)
    assert route.chosen.tolist() == [[0], [1]]
    assert torch.allclose(route.probs, torch.tensor([[0.75, 0.25], [0.25, 0.75]]))
    assert route.balance_loss.item() == pytest.approx(1.0)
    assert route.z_loss.item() == pytest.approx(math.log(4.0) ** 2)
    # entropy of [3/4, 1/4] = 0.562335 nats
    assert routing_entropy(route.probs).item() == pytest.approx(0.5623351446188083)


@pytest.mark.parametrize("k", [1, 2, 4])
def test_balance_is_one_for_uniform_routing(k):
    """f_i = P_i = 1/C gives C * sum_i (1/C)(1/C) = 1 (and uniform P alone already gives 1)."""
    C, B = 4, 8
    r = make_router(C=C, d_router=C, context=1)
    with torch.no_grad():  # token c -> one-hot e_c; gate = 0: P_i = 1/C for every sequence
        r.embed.weight.zero_()
        r.embed.weight[:C, :C] = torch.eye(C)
        r.gate.weight.zero_()
    r.eval()
    x = (torch.arange(B) % C).unsqueeze(1).expand(B, 3)  # sequence b starts with token b % C
    route = r(x, k=k, temperature=1.0)
    assert torch.allclose(route.probs, torch.full((B, C), 1 / C))
    assert route.balance_loss.item() == pytest.approx(1.0)
    assert routing_entropy(route.probs).item() == pytest.approx(math.log(C))

    with torch.no_grad():  # now sequences starting with c prefer clusters c, c+1, ...: f = 1/C
        r.gate.weight.copy_(sum(torch.eye(C).roll(i, 0) * (C - i) for i in range(C)))
    route = r(x, k=k, temperature=1.0)
    assert route.dispatch.load.tolist() == [k * B // C] * C
    assert not torch.allclose(route.probs, torch.full((B, C), 1 / C))
    assert route.balance_loss.item() == pytest.approx(1.0)


def test_gates_sum_to_one_and_k_distinct():
    r = make_router(C=6, noise=1.0)
    r.train()
    x = torch.randint(0, V, (32, 8))
    for k in (1, 3, 6):
        route = r(x, k=k, temperature=0.7)
        assert route.chosen.shape == (32, k) and route.gates.shape == (32, k)
        assert torch.allclose(route.gates.sum(-1), torch.ones(32))
        for row in route.chosen.tolist():
            assert len(set(row)) == k
        assert (route.gates[:, :-1] >= route.gates[:, 1:]).all()  # best first
    with pytest.raises(ValueError):
        r(x, k=7, temperature=1.0)


def test_eval_has_no_noise_training_noise_is_seeded():
    r = make_router(C=8, noise=2.0)
    x = torch.randint(0, V, (64, 4))
    r.eval()
    a, b = r(x, k=2, temperature=1.0), r(x, k=2, temperature=1.0)
    assert torch.equal(a.chosen, b.chosen) and torch.equal(a.gates, b.gates)
    assert torch.equal(a.chosen, a.logits.topk(2).indices)

    r.train()
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    t1 = r(x, k=2, temperature=1.0, generator=g1)
    t2 = r(x, k=2, temperature=1.0, generator=g2)
    assert torch.equal(t1.chosen, t2.chosen) and torch.equal(t1.gates, t2.gates)
    assert not torch.equal(t1.chosen, a.chosen)  # noise std 2 >> logit spread changes routes
    t3 = r(x, k=2, temperature=1.0, generator=g1)  # the generator moved on
    assert not torch.equal(t1.chosen, t3.chosen)
    assert torch.equal(t1.probs, a.probs)  # probs never see the noise


def test_tensor_temperature_and_gradients():
    r = make_router(C=4)
    r.train()
    x = torch.randint(0, V, (16, 4))
    route = r(x, k=2, temperature=torch.tensor(0.5), generator=torch.Generator().manual_seed(0))
    (route.gates[:, 0].sum() + r.aux_loss(route)).backward()
    assert r.gate.weight.grad is not None and r.gate.weight.grad.abs().sum() > 0
    assert r.embed.weight.grad is not None and r.embed.weight.grad.abs().sum() > 0


def test_router_reads_only_context_tokens():
    r = make_router(C=5, context=3)
    r.eval()
    x = torch.randint(0, V, (16, 10))
    y = x.clone()
    y[:, 3:] = torch.randint(0, V, (16, 7))
    a, b = r(x, k=2, temperature=1.0), r(y, k=2, temperature=1.0)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.chosen, b.chosen)
    y[:, 2] = (x[:, 2] + 1) % V  # a context token does matter
    assert not torch.equal(a.logits, r(y, k=2, temperature=1.0).logits)


def test_router_dispatch_in_forward():
    r = make_router(C=4, capacity_factor=1.0)
    r.eval()
    route = r(torch.randint(0, V, (20, 4)), k=2, temperature=1.0)
    assert route.dispatch.seq_index.shape == (4, capacity(2, 20, 4, 1.0))
    slot, _, load, dropped = reference_dispatch(route.chosen.tolist(), 4, 10)
    assert route.dispatch.slot.tolist() == slot
    assert route.dispatch.load.tolist() == load and route.dispatch.dropped.item() == dropped


def test_config_validation():
    assert RouterConfig(top_k=2, k_max=4).k_max == 4
    assert Router(RouterConfig(top_k=3), V, 4).k_max == 3
    with pytest.raises(ValidationError, match="k_max"):
        RouterConfig(top_k=3, k_max=2)
    with pytest.raises(ValidationError, match="capacity_factor"):
        RouterConfig(capacity_factor=0.5)
    for bad in ({"top_k": 0}, {"temperature": 0.0}, {"noise": -1.0}, {"context": 0}):
        with pytest.raises(ValidationError):
            RouterConfig(**bad)
    with pytest.raises(ValidationError, match="topk"):
        RouterConfig(topk=2)
