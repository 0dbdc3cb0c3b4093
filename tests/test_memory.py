"""Reading memory: the CPU path (memory in its own Dm-dim space, hand-written backward) equals
the generic one (keys and values projected per slot), which equals a per-query softmax."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from brainnet.modules.bank import bmm_linear
from brainnet.modules.memory import (
    MemoryReader,
    attend_with_memory,
    fast_memory,
    memory_attention,
    normalized_memory,
)

TOL = dict(atol=1e-5, rtol=1e-5)


def test_attend_with_memory_equals_per_query_softmax():
    g = torch.Generator().manual_seed(2)
    Z, H, T, P, hd = 2, 3, 5, 4, 6
    q, k, v = (torch.randn(Z, H, T, hd, generator=g) for _ in range(3))
    km, vm = (torch.randn(Z, H, T, P, hd, generator=g) for _ in range(2))
    mask = torch.rand(Z, H, T, P, generator=g) > 0.4
    out = attend_with_memory(q, k, v, km, vm, mask, 0.0)
    for z in range(Z):
        for h in range(H):
            for t in range(T):
                keys = torch.cat([k[z, h, : t + 1], km[z, h, t][mask[z, h, t]]])
                vals = torch.cat([v[z, h, : t + 1], vm[z, h, t][mask[z, h, t]]])
                w = (keys @ q[z, h, t] / hd**0.5).softmax(0)
                torch.testing.assert_close(out[z, h, t], w @ vals, **TOL)


@pytest.mark.parametrize("bias", [True, False])
def test_normalized_memory_is_layer_norm_of_the_projection(bias):
    g = torch.Generator().manual_seed(4)
    M, R, Dm, D = 3, 7, 5, 12
    memory = torch.randn(M, 2, R, 1, Dm, generator=g, dtype=torch.double)
    w = torch.randn(M, Dm, D, generator=g, dtype=torch.double)
    b = torch.randn(M, D, generator=g, dtype=torch.double) if bias else None
    mh, wc = normalized_memory(memory, w, b)
    assert mh.shape == (M, 2, R, 1, Dm + 2) and wc.shape == (M, Dm + 1, D)
    assert torch.all(mh[..., -1] == 1)
    want = F.layer_norm(bmm_linear(memory, w, b), (D,))
    got = mh[..., :-1] @ wc[:, None, None]  # [M, 2, R, 1, D]
    torch.testing.assert_close(got, want)


def _layer_inputs(M, B, T, P, D, Dm, bias, g):
    """The q | k | v projection, memory and weights of one layer (fp64, requiring grad)."""
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.double)  # noqa: E731
    xs = {"qkv": r(M, B, T, 3 * D), "memory": r(M, B, T, P, Dm), "mem_w": r(M, Dm, D) / Dm**0.5}
    xs["a_w"] = r(M, D, 3 * D)
    if bias:
        xs |= {"mem_b": r(M, D), "a_b": r(M, 3 * D)}
    return {n: t.requires_grad_() for n, t in xs.items()}


def _read(xs, mask, H, fast):
    """One layer's memory read, q, k, v as the strided views the bank hands over."""
    q, k, v = xs["qkv"].chunk(3, -1)
    reader = MemoryReader(xs["memory"], xs["mem_w"], xs.get("mem_b"), mask, H, fast)
    return reader.attend(q, k, v, xs["a_w"], xs.get("a_b"), 0.0)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("masked", [True, False])
def test_cpu_memory_read_equals_generic_path(bias, masked):
    """The CPU path (``fast``) and the generic one (per-slot keys / values, ``attend_with_memory``)
    give the same output and the same gradients for q, k, v, the memory and every weight."""
    g = torch.Generator().manual_seed(3)
    M, B, T, P, H, Dm = 2, 3, 6, 4, 3, 5
    D = 4 * H
    xs = _layer_inputs(M, B, T, P, D, Dm, bias, g)
    mask = None
    if masked:
        mask = torch.rand(M, B, T, P, generator=g) > 0.5
        mask[0, 0, 2] = False  # a position with no memory at all
        mask[1, 2, 0] = True  # every slot full
    go = torch.randn(M, B, T, D, generator=g, dtype=torch.double)
    outs = []
    for fast in (True, False):
        out = _read(xs, mask, H, fast)
        outs.append((out, torch.autograd.grad(out, list(xs.values()), go)))
    (fast_out, fast_grads), (ref_out, ref_grads) = outs
    torch.testing.assert_close(fast_out, ref_out)
    for name, a, b in zip(xs, fast_grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, msg=lambda m, n=name: f"grad {n}: {m}")


def test_memory_read_with_all_slots_empty_is_plain_causal_attention():
    """No slot to read: the output and the q, k, v gradients are plain causal attention's, and
    the memory and its weights get exactly zero gradient."""
    g = torch.Generator().manual_seed(5)
    M, B, T, P, H, Dm, D = 2, 2, 5, 3, 2, 4, 8
    xs = _layer_inputs(M, B, T, P, D, Dm, True, g)
    none = torch.zeros(M, B, T, P, dtype=torch.bool)
    go = torch.randn(M, B, T, D, generator=g, dtype=torch.double)
    out = _read(xs, none, H, fast=True)
    grads = dict(zip(xs, torch.autograd.grad(out, list(xs.values()), go), strict=True))
    qkv = xs["qkv"].detach().requires_grad_()
    q, k, v = (t.reshape(M * B, T, H, D // H).transpose(1, 2) for t in qkv.chunk(3, -1))
    want = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    want = want.transpose(1, 2).reshape(M, B, T, D)
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(grads["qkv"], torch.autograd.grad(want, qkv, go)[0])
    for name in ("memory", "mem_w", "mem_b", "a_b"):
        assert grads[name].abs().max() == 0, name
    assert grads["a_w"][:, :, D:].abs().max() == 0  # the k, v weights saw no memory key / value


def test_fast_path_only_on_a_plain_cpu_pass():
    x = torch.zeros(2, 3)
    assert fast_memory(x, 0.0)
    assert not fast_memory(x, 0.1)  # attention dropout: the generic path
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not fast_memory(x, 0.0)


def test_generic_memory_attention_in_bank_layout():
    """``memory_attention`` (bank layout, kv heads side by side) is ``attend_with_memory``."""
    g = torch.Generator().manual_seed(6)
    M, B, T, P, H, hd = 2, 2, 4, 3, 2, 3
    D = H * hd
    q, k, v = (torch.randn(M, B, T, D, generator=g) for _ in range(3))
    kv = torch.randn(M, B, T, P, 2 * D, generator=g)
    got = memory_attention(q, k, v, kv, None, H, 0.0)
    head = lambda t: t.view(M * B, T, H, hd).transpose(1, 2)  # noqa: E731
    km, vm = (kv[..., i * D : (i + 1) * D].view(M * B, T, P, H, hd).permute(0, 3, 1, 2, 4)
              for i in range(2))  # fmt: skip
    want = attend_with_memory(head(q), head(k), head(v), km, vm, None, 0.0)
    torch.testing.assert_close(got, want.transpose(1, 2).reshape(M, B, T, D))
