"""The bank equals a loop of independent per-module models: forward, gradients, subsets, memory."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from brainnet.modules.bank import bank_layer_norm, bmm_linear, module_cross_entropy
from brainnet.modules.tiny_lm import TinyLM, TransformerBank, TransformerConfig

V, T, B, P, DM = 13, 12, 3, 4, 8
TOL = dict(atol=1e-5, rtol=1e-5)


def make_bank(M: int = 5, **kw) -> TransformerBank:
    torch.manual_seed(0)
    cfg = TransformerConfig(count=M, n_layer=2, n_head=2, d_model=16, message_dim=DM, **kw)
    return TransformerBank(cfg, V, T)


def per_module_loss(logits, message, salience, y, proj):
    """A loss touching all three outputs, so every parameter gets a gradient."""
    ce = F.cross_entropy(logits.reshape(-1, V), y.reshape(-1))
    return ce + (message * proj).sum() + salience.square().mean()


@pytest.mark.parametrize("bias,tie", [(True, True), (False, False)])
@pytest.mark.parametrize("with_memory", [False, True])
@pytest.mark.parametrize("subset", [None, [3, 0, 4]])
def test_bank_equals_per_module_models(bias, tie, with_memory, subset):
    """fp32 forward and gradients of the bank == independent TinyLM copies, all or a subset."""
    bank = make_bank(bias=bias, tie_weights=tie)
    ids = list(range(bank.n_modules)) if subset is None else subset
    idx = None if subset is None else torch.tensor(subset)
    M = len(ids)
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, V, (M, B, T), generator=g)
    y = torch.randint(0, V, (M, B, T), generator=g)
    memory = torch.randn(M, B, P, DM, generator=g) if with_memory else None
    proj = torch.randn(M, B, DM, generator=g)

    out = bank(tokens, memory, idx)
    assert out.logits.shape == (M, B, T, V)
    assert out.message.shape == (M, B, DM)
    assert out.salience.shape == (M, B)
    loss = sum(
        per_module_loss(out.logits[i], out.message[i], out.salience[i], y[i], proj[i])
        for i in range(M)
    )
    loss.backward()

    for i, m in enumerate(ids):
        ref = bank.export(m)
        assert isinstance(ref, TinyLM)
        r_logits, r_msg, r_sal = ref(tokens[i], None if memory is None else memory[i])
        torch.testing.assert_close(out.logits[i], r_logits, **TOL)
        torch.testing.assert_close(out.message[i], r_msg, **TOL)
        torch.testing.assert_close(out.salience[i], r_sal, **TOL)
        per_module_loss(r_logits, r_msg, r_sal, y[i], proj[i]).backward()
        ref_grads = ref.bank_grads()
        for name in bank.param_names:
            p = getattr(bank, name)
            if p is None:
                assert ref_grads[name] is None
                continue
            if not with_memory and name.startswith("mem_"):
                assert p.grad is None or p.grad[m].abs().max() == 0
                continue
            torch.testing.assert_close(p.grad[m], ref_grads[name], **TOL, msg=name)

    untouched = sorted(set(range(bank.n_modules)) - set(ids))
    for name, p in bank.named_parameters():
        if untouched and p.grad is not None:
            assert p.grad[untouched].abs().max() == 0, f"{name}: unselected module got a gradient"


def test_memory_changes_outputs_and_is_not_causally_masked():
    """Memory is a prefix every token attends to: changing it changes the first token's logits."""
    bank = make_bank(M=2).eval()
    tokens = torch.randint(0, V, (2, B, T))
    mem = torch.randn(2, B, P, DM)
    a = bank(tokens, mem).logits
    b = bank(tokens, mem + 1.0).logits
    assert (a[:, :, 0] - b[:, :, 0]).abs().max() > 1e-4
    # and a token never sees the future: changing the last token leaves earlier logits unchanged
    t2 = tokens.clone()
    t2[:, :, -1] = (t2[:, :, -1] + 1) % V
    c = bank(t2, mem).logits
    torch.testing.assert_close(a[:, :, :-1], c[:, :, :-1])


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
