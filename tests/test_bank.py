"""The bank equals a loop of independent per-module models: forward, gradients, subsets, memory."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from bank_reference import assert_bank_matches_copies

from brainnet.modules.bank import (
    attend_with_memory,
    bank_layer_norm,
    bmm_linear,
    module_cross_entropy,
)
from brainnet.modules.tiny_lm import TinyLM, TransformerBank, TransformerConfig

V, T, B, P, DM = 13, 12, 3, 4, 8
TOL = dict(atol=1e-5, rtol=1e-5)


def make_bank(M: int = 5, **kw) -> TransformerBank:
    torch.manual_seed(0)
    cfg = TransformerConfig(count=M, n_layer=2, n_head=2, d_model=16, message_dim=DM, **kw)
    return TransformerBank(cfg, V, T)


@pytest.mark.parametrize("bias,tie", [(True, True), (False, False)])
@pytest.mark.parametrize("with_memory", [False, True])
@pytest.mark.parametrize("subset", [None, [3, 0, 4]])
def test_bank_equals_per_module_models(bias, tie, with_memory, subset):
    """fp32 forward and gradients of the bank == independent TinyLM copies, all or a subset."""
    bank = make_bank(bias=bias, tie_weights=tie)
    assert isinstance(bank.export(0), TinyLM)
    assert_bank_matches_copies(bank, subset, with_memory, B=B, P=P)


def test_memory_is_read_per_position_and_stays_causal():
    """Memory at position t reaches positions >= t only; an empty (masked) slot is ignored."""
    bank = make_bank(M=2).eval()
    tokens = torch.randint(0, V, (2, B, T))
    mem = torch.randn(2, B, T, P, DM)
    a = bank(tokens, mem).logits
    t = 5
    mem2 = mem.clone()
    mem2[:, :, t] += 1.0
    b = bank(tokens, mem2).logits
    torch.testing.assert_close(a[:, :, :t], b[:, :, :t])  # the past is unaffected
    assert (a[:, :, t] - b[:, :, t]).abs().max() > 1e-4  # position t reads its memory
    # a masked slot: its content does not matter
    mask = torch.ones(2, B, T, P, dtype=torch.bool)
    mask[..., 0] = False
    mem3 = mem.clone()
    mem3[..., 0, :] = 100.0
    torch.testing.assert_close(bank(tokens, mem, mask).logits, bank(tokens, mem3, mask).logits)
    # all slots masked == no memory at all
    none = torch.zeros(2, B, T, P, dtype=torch.bool)
    torch.testing.assert_close(bank(tokens, mem, none).logits, bank(tokens).logits, **TOL)
    # a token never sees the future
    t2 = tokens.clone()
    t2[:, :, -1] = (t2[:, :, -1] + 1) % V
    torch.testing.assert_close(a[:, :, :-1], bank(t2, mem).logits[:, :, :-1])


def test_attend_with_memory_equals_per_query_softmax():
    g = torch.Generator().manual_seed(2)
    Z, H, T_, P_, hd = 2, 3, 5, 4, 6
    q, k, v = (torch.randn(Z, H, T_, hd, generator=g) for _ in range(3))
    km, vm = (torch.randn(Z, H, T_, P_, hd, generator=g) for _ in range(2))
    mask = torch.rand(Z, H, T_, P_, generator=g) > 0.4
    out = attend_with_memory(q, k, v, km, vm, mask, 0.0)
    for z in range(Z):
        for h in range(H):
            for t in range(T_):
                keys = torch.cat([k[z, h, : t + 1], km[z, h, t][mask[z, h, t]]])
                vals = torch.cat([v[z, h, : t + 1], vm[z, h, t][mask[z, h, t]]])
                w = (keys @ q[z, h, t] / hd**0.5).softmax(0)
                torch.testing.assert_close(out[z, h, t], w @ vals, **TOL)


def test_modules_are_initialised_differently_and_counted():
    bank = make_bank(M=3)
    assert not torch.equal(bank.wte[0], bank.wte[1])
    ref = bank.export(0)
    assert bank.num_params_per_module() == sum(p.numel() for p in ref.parameters())
    assert sum(p.numel() for p in bank.parameters()) == 3 * bank.num_params_per_module()


def test_param_groups_decay_only_matrices():
    bank = make_bank()
    decay, no_decay = bank.param_groups(0.1)
    names = {id(p): n for n, p in bank.named_parameters()}
    assert {names[id(p)] for p in decay["params"]} == {
        "wte",
        "wpe",
        "mem_w",
        "attn_w",
        "proj_w",
        "fc_w",
        "fc2_w",
        "msg_w",
    }
    assert all(
        names[id(p)].endswith("_b") or names[id(p)].startswith(("ln", "sal"))
        for p in no_decay["params"]
    )
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0


def test_batched_ops_equal_per_module_loops():
    g = torch.Generator().manual_seed(0)
    M, N, din, dout = 4, 7, 5, 6
    x = torch.randn(M, 2, N, din, generator=g)
    w = torch.randn(M, din, dout, generator=g)
    b = torch.randn(M, dout, generator=g)
    y = bmm_linear(x, w, b)
    for m in range(M):
        torch.testing.assert_close(y[m], x[m] @ w[m] + b[m], **TOL)
    torch.testing.assert_close(bmm_linear(x, w, None)[1], x[1] @ w[1], **TOL)

    lw, lb = torch.randn(M, din, generator=g), torch.randn(M, din, generator=g)
    z = bank_layer_norm(x, lw, lb)
    for m in range(M):
        torch.testing.assert_close(z[m], F.layer_norm(x[m], (din,), lw[m], lb[m]), **TOL)

    logits = torch.randn(M, 3, 5, 11, generator=g)
    tgt = torch.randint(0, 11, (3, 5), generator=g)
    ce = module_cross_entropy(logits, tgt)
    assert ce.shape == (M,)
    for m in range(M):
        torch.testing.assert_close(
            ce[m], F.cross_entropy(logits[m].reshape(-1, 11), tgt.reshape(-1))
        )


def test_too_long_sequence_raises():
    bank = make_bank(M=1)
    with pytest.raises(ValueError, match="block_size"):
        bank(torch.zeros(1, 1, T + 1, dtype=torch.long))
