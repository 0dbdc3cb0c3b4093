"""The bank equals a loop of independent per-module models: forward, gradients, subsets, memory."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from bank_reference import assert_bank_matches_copies, bank_layer_norm

from brainnet.modules.bank import (
    bmm_linear,
    fold_layer_norm,
    module_cross_entropy,
    norm_linear,
    norm_linear_parts,
    row_pieces,
)
from brainnet.modules.tiny_lm import (
    CPU_CHUNK_BYTES,
    TinyLM,
    TransformerBank,
    TransformerConfig,
)

V, T, B, P, DM = 13, 12, 3, 4, 8
TOL = dict(atol=1e-5, rtol=1e-5)


def make_bank(M: int = 5, **kw) -> TransformerBank:
    torch.manual_seed(0)
    cfg = TransformerConfig(count=M, n_layer=2, n_head=2, d_model=16, message_dim=DM, **kw)
    return TransformerBank(cfg, V, T)


@pytest.mark.parametrize("bias,tie", [(True, True), (False, False)])
@pytest.mark.parametrize("with_memory", [False, True])
@pytest.mark.parametrize("subset", [None, [3, 0, 4]])
@pytest.mark.parametrize("chunk", [None, 2])
def test_bank_equals_per_module_models(bias, tie, with_memory, subset, chunk):
    """fp32 forward and gradients of the bank == independent TinyLM copies, all or a subset,
    in one pass or with the module axis in chunks of 2."""
    bank = make_bank(bias=bias, tie_weights=tie, chunk=chunk)
    assert isinstance(bank.export(0), TinyLM)
    assert_bank_matches_copies(bank, subset, with_memory, B=B, P=P)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("with_memory", [False, True])
@pytest.mark.parametrize("subset", [None, [4, 1, 0, 2]])
def test_chunked_forward_equals_whole_bank(bias, with_memory, subset):
    """Chunks of 3 (not dividing 5 modules, nor a 4-module subset) give the whole-bank pass's
    outputs and gradients, and only the selected rows get a gradient."""
    M = 5 if subset is None else len(subset)
    idx = None if subset is None else torch.tensor(subset)
    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, V, (M, B, T), generator=g)
    memory = torch.randn(M, B, T, P, DM, generator=g) if with_memory else None
    mask = torch.rand(M, B, T, P, generator=g) > 0.3 if with_memory else None
    proj = [torch.randn(M, B, T, *s, generator=g) for s in ((V,), (DM,), ())]
    results = []
    for chunk in (None, 3):
        bank = make_bank(bias=bias, tie_weights=False)
        bank.chunk = chunk
        assert bank.chunk_size(M, B * T, tokens.device) == (3 if chunk else M)
        out = bank(tokens, memory, mask, idx=idx)
        sum((o * p).sum() for o, p in zip(out, proj, strict=True)).backward()
        grads = {n: p.grad for n, p in bank.named_parameters()}
        results.append((out, grads))
    (whole, g_whole), (chunked, g_chunked) = results
    for a, b in zip(whole, chunked, strict=True):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-6)
    for name, grad in g_whole.items():
        if grad is None:
            assert g_chunked[name] is None, name
            continue
        torch.testing.assert_close(g_chunked[name], grad, atol=1e-6, rtol=1e-6, msg=name)
        if subset is not None:
            assert g_chunked[name][3].abs().max() == 0, name  # module 3 was not selected


def test_chunks_are_as_equal_as_possible(monkeypatch):
    """At most ``chunk`` modules per chunk, sizes differing by at most one (10 at 3: 3, 3, 2, 2,
    not 3, 3, 3, 1); the chunked pass still equals the whole one."""
    bank = make_bank(M=10)
    tokens = torch.randint(0, V, (10, B, T), generator=torch.Generator().manual_seed(1))
    whole = bank(tokens).logits
    seen, rows = [], bank._rows
    monkeypatch.setattr(bank, "_rows", lambda w, t, *a: seen.append(t.shape[0]) or rows(w, t, *a))
    bank.chunk = 3
    torch.testing.assert_close(bank(tokens).logits, whole, atol=1e-6, rtol=1e-6)
    assert seen == [3, 3, 2, 2]


def test_automatic_chunk_size():
    """Automatic: the whole bank on a GPU; on a CPU about CPU_CHUNK_BYTES of MLP activation per
    chunk, at least one module; an explicit ``chunk`` (config or attribute) wins."""
    cfg = TransformerConfig(count=64, n_layer=1, n_head=2, d_model=64)
    bank = TransformerBank(cfg, V, 64)
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert bank.chunk is None
    assert bank.chunk_size(64, 1024, gpu) == 64
    per_module = 1024 * 4 * 64 * 4  # fp32 [B*T, 4D]
    assert bank.chunk_size(64, 1024, cpu) == max(1, CPU_CHUNK_BYTES // per_module)
    assert bank.chunk_size(64, 2**20, cpu) == 1
    assert bank.chunk_size(64, 768, cpu) == CPU_CHUNK_BYTES // (768 * 4 * 64 * 4) == 21
    assert bank.chunk_size(2, 4, cpu) == 2  # never more than the modules there are
    bank.chunk = 5
    assert bank.chunk_size(64, 1024, gpu) == 5 and bank.chunk_size(3, 1024, cpu) == 3
    assert TransformerBank(cfg.model_copy(update={"chunk": 7}), V, 64).chunk == 7


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


def test_folded_layer_norm_and_qkv_parts_equal_plain_ops():
    """LN affine folded into the next linear == LN with affine then the linear; q, k, v parts
    == one matmul cut in three."""
    g = torch.Generator().manual_seed(4)
    M, D, O = 3, 8, 12
    x = torch.randn(M, 2, 5, D, generator=g)
    ln_w, ln_b = torch.randn(M, D, generator=g), torch.randn(M, D, generator=g)
    w, b = torch.randn(M, D, O, generator=g), torch.randn(M, O, generator=g)
    for lb, bb in ((ln_b, b), (None, None)):
        ref = bmm_linear(bank_layer_norm(x, ln_w, lb), w, bb)
        torch.testing.assert_close(
            bmm_linear(F.layer_norm(x, (D,)), *fold_layer_norm(ln_w, lb, w, bb)), ref, **TOL
        )

    # q, k, v: one matmul cut into three
    parts = norm_linear_parts(x, w, b, 3)
    whole = bmm_linear(F.layer_norm(x, (D,)), w, b)
    assert [p.shape[-1] for p in parts] == [O // 3] * 3
    torch.testing.assert_close(torch.cat(parts, -1), whole, **TOL)
    torch.testing.assert_close(norm_linear(x, w, b), whole, **TOL)


def test_row_pieces_equal_split_and_unbind():
    """Row blocks (and layers) of a parameter as views; gradients of the pieces, and zeros for
    a piece that got none, land in one tensor, as split / unbind would put them."""
    p = torch.randn(5, 3, 4, requires_grad=True)
    pieces = row_pieces(p, [2, 2, 1], layered=True)
    assert [len(t) for t in pieces] == [3, 3, 3]
    torch.testing.assert_close(pieces[1][2], p[2:4, 2])
    assert pieces[1][2].data_ptr() == p[2:4, 2].data_ptr()  # a view, not a copy
    (pieces[0][1].sum() * 2 + (pieces[2][0] * 3).sum()).backward()
    want = torch.zeros(5, 3, 4)
    want[0:2, 1] = 2
    want[4, 0] = 3
    torch.testing.assert_close(p.grad, want)
    q = torch.randn(5, 4, requires_grad=True)
    blocks = row_pieces(q, [3, 2], layered=False)
    (blocks[1] ** 2).sum().backward()
    torch.testing.assert_close(q.grad, torch.cat([torch.zeros(3, 4), 2 * q[3:].detach()]))
    assert row_pieces(q, [5], layered=False)[0] is q  # one block: the parameter itself


def test_bank_trains_under_dropout_and_cpu_autocast():
    """The paths that keep the plain autograd graph: dropout in training, bf16 autocast."""
    bank = make_bank(dropout=0.1)
    bank.chunk = 2
    tokens = torch.randint(0, V, (5, B, T))
    module_cross_entropy(bank(tokens).logits, tokens).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in bank.parameters() if p.grad is not None)
    bank.eval().zero_grad()
    ref = bank(tokens).logits
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = bank(tokens)
        module_cross_entropy(out.logits, tokens).sum().backward()
    torch.testing.assert_close(out.logits.float(), ref, atol=0.05, rtol=0.05)
    assert bank.wte.grad is not None and torch.isfinite(bank.wte.grad).all()


def test_bank_memory_paths_agree(monkeypatch):
    """The CPU memory read and the generic one (what a GPU, autocast or dropout uses) give the
    bank the same logits and gradients; attention dropout with memory trains (generic path)."""
    import brainnet.modules.tiny_lm as tiny_lm

    bank = make_bank(M=4, chunk=3)
    g = torch.Generator().manual_seed(7)
    tokens = torch.randint(0, V, (4, B, T), generator=g)
    memory = torch.randn(4, B, T, P, DM, generator=g)
    mask = torch.rand(4, B, T, P, generator=g) > 0.3
    results = []
    for generic in (False, True):
        if generic:
            monkeypatch.setattr(tiny_lm, "fast_memory", lambda x, p: False)
        bank.zero_grad()
        out = bank(tokens, memory, mask)
        loss = module_cross_entropy(out.logits, tokens).sum()
        (loss + out.message.square().mean() + out.salience.mean()).backward()
        results.append(
            (out.logits.detach(), {n: p.grad.clone() for n, p in bank.named_parameters()})
        )
    (fast, fast_grads), (generic, generic_grads) = results
    torch.testing.assert_close(fast, generic, **TOL)
    for name, grad in fast_grads.items():
        torch.testing.assert_close(grad, generic_grads[name], atol=1e-5, rtol=1e-4, msg=name)
    monkeypatch.undo()
    dropped = make_bank(M=2, dropout=0.2)  # training with attention dropout: the generic path
    out = dropped(tokens[:2], memory[:2], mask[:2])
    module_cross_entropy(out.logits, tokens[:2]).sum().backward()
    assert torch.isfinite(dropped.mem_w.grad).all() and dropped.mem_w.grad.abs().sum() > 0
    bank.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast: the generic path too
        out = bank(tokens, memory, mask)
        module_cross_entropy(out.logits, tokens).sum().backward()
    torch.testing.assert_close(out.logits.float(), fast, atol=0.05, rtol=0.05)
    assert torch.isfinite(bank.mem_w.grad).all() and bank.mem_w.grad.abs().sum() > 0
