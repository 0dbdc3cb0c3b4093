"""Reading memory: causal self-attention where each position also attends to its own memory.

The society hands a module P memory vectors for every position (blackboard slots, mates'
messages: ``memory [M, B, T, P, Dm]``, each built from tokens <= t). In every layer, the token
at position t attends, in ONE softmax, to the tokens <= t and to its P memory vectors; the
memory's keys and values come from the layer's own k, v projections of the LayerNorm'd,
width-D projected memory::

    h_p  = LN(m_p @ mem_w + mem_b)                  [D]     (the same in every layer)
    k_p, v_p = h_p @ W_k + b_k,  h_p @ W_v + b_v    [D] each (the layer's LN1-folded weights)

``MemoryReader`` holds one forward pass's memory and answers every layer's ``attend``. Two
paths compute the same numbers:

- **generic** (GPU, autocast, dropout): h is materialised, each layer projects it to keys and
  values ``[M, B, T, P, 2D]`` and ``attend_with_memory`` runs head-major.
- **CPU**: nothing per slot is ever projected to width D. LayerNorm's centring is linear, so
  ``LN(m @ W + b) = r · ([m, 1] @ Wc)`` with ``Wc = [W; b]`` minus each row's mean and ``r`` the
  reciprocal standard deviation, whose variance is a quadratic form in ``[m, 1]`` (the Gram
  matrix ``wc wc^T``, Dm+1 square). With ``mh = [r·m, r, 1]`` (``E = Dm + 2`` numbers per
  slot, shared by every layer) the keys and values are ``mh_p @ Ak`` and ``mh_p @ Av``
  (``A = [Wc @ W_kv; b_kv]``, [E, 2D]). A query meets the keys through
  ``q_h · k_{p,h} = (q_h @ Ak_h^T) · mh_p`` and the values leave through
  ``Σ_p a_p v_{p,h} = (Σ_p a_p mh_p) @ Av_h``: per position, tiny [H, E] x [E, P] matmuls
  batched over all B·T·M positions, and the causal part on PyTorch's CPU flash kernels, joined
  to the memory through their log-sum-exp (``_MemoryAttention``, hand-written backward). Where
  the generic path projects B·T·P rows to 2D in every layer, this one projects B·T rows to H·E.
  For the benchmark's brain modules (2 layers, D = 64, Dm = 32, P = 5; 8 modules, 12
  sequences) a forward + backward with memory went from 2.2-2.4x to 1.4-1.6x the cost of one
  without (2-core CPU, docs/benchmarks.md).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from brainnet.modules.bank import _plain, bmm_linear

#: LayerNorm's epsilon (PyTorch's default, as in every LayerNorm of the transformer bank)
EPS = 1e-5


def attend_with_memory(
    q: Tensor, k: Tensor, v: Tensor, km: Tensor, vm: Tensor, mask: Tensor | None, dropout_p: float
) -> Tensor:
    """Causal self-attention where each query also sees its own memory vectors (the reference).

    q, k, v [Z, H, T, hd]; km, vm [Z, H, T, P, hd] (position t's memory); mask broadcastable to
    [Z, H, T, P] bool (False = empty slot) or None -> [Z, H, T, hd].
    One softmax over the T causal keys and the P memory keys of each query.
    """
    T, hd = q.shape[-2], q.shape[-1]
    scale = 1.0 / hd**0.5
    self_scores = (q @ k.transpose(-1, -2)) * scale  # [Z, H, T, T]
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    self_scores = self_scores.masked_fill(~causal, float("-inf"))
    mem_scores = torch.einsum("zhtd,zhtpd->zhtp", q, km) * scale  # [Z, H, T, P]
    if mask is not None:
        mem_scores = mem_scores.masked_fill(~mask, float("-inf"))
    att = torch.cat([self_scores, mem_scores], dim=-1).softmax(dim=-1)  # [Z, H, T, T+P]
    att = F.dropout(att, dropout_p, dropout_p > 0)
    return att[..., :T] @ v + torch.einsum("zhtp,zhtpd->zhtd", att[..., T:], vm)


def memory_attention(
    q: Tensor, k: Tensor, v: Tensor, kv: Tensor, mask: Tensor | None, n_head: int, dropout_p: float
) -> Tensor:
    """``attend_with_memory`` in the bank's own layout, heads side by side (the generic path).

    q, k, v [M, B, T, D]; kv [M, B, T, P, 2D] each position's memory keys | values (heads side
    by side, as the qkv projection writes them); mask [M, B, T, P] bool | None -> [M, B, T, D].
    """
    M, B, T, D = q.shape
    P, hd = kv.shape[3], D // n_head
    q, k, v = (t.reshape(M * B, T, n_head, hd).transpose(1, 2) for t in (q, k, v))
    km, vm = kv.view(M * B, T, P, 2, n_head, hd).permute(3, 0, 4, 1, 2, 5)  # [M*B, H, T, P, hd]
    m = None if mask is None else mask.reshape(M * B, 1, T, P)
    a = attend_with_memory(q, k, v, km, vm, m, dropout_p)  # [M*B, H, T, hd]
    return a.transpose(1, 2).reshape(M, B, T, D)


class MemoryReader:
    """One forward pass's memory, read by every layer (``attend``); see the module docstring.

    memory [M, B, T, P, Dm]; mem_w [M, Dm, D], mem_b [M, D] | None (the memory's projection to
    width D); mask [M, B, T, P] bool | None (False: an empty slot); ``fast``: the CPU path
    (``fast_memory`` says when it applies; it has no attention dropout)."""

    def __init__(
        self,
        memory: Tensor,
        mem_w: Tensor,
        mem_b: Tensor | None,
        mask: Tensor | None,
        n_head: int,
        fast: bool,
    ) -> None:
        self.mask, self.n_head, self.fast = mask, n_head, fast
        memory = memory.to(mem_w.dtype)
        if fast:
            self.mh, self.wc = normalized_memory(memory, mem_w, mem_b)
        else:  # [M, B, T, P, D], the same normalised memory in every layer
            self.h = F.layer_norm(bmm_linear(memory, mem_w, mem_b), mem_w.shape[-1:], eps=EPS)

    def attend(
        self, q: Tensor, k: Tensor, v: Tensor, a_w: Tensor, a_b: Tensor | None, dropout_p: float
    ) -> Tensor:
        """One layer's attention. q, k, v [M, B, T, D]; a_w [M, D, 3D], a_b [M, 3D] | None: the
        layer's q | k | v projection (its LN1 affine folded in) -> [M, B, T, D]."""
        D, H = q.shape[-1], self.n_head
        if self.fast:
            assert dropout_p == 0, "the CPU memory read has no attention dropout (fast_memory)"
            wk, wv = memory_projections(self.wc, a_w, a_b, H)
            M, B, T, _ = q.shape
            qh = torch.bmm(q.reshape(M, B * T, D), wk).view(M, B, T, H, -1)  # [M, B, T, H, E]
            return _MemoryAttention.apply(q, k, v, qh, self.mh, wv, self.mask, H)
        kv = bmm_linear(self.h, a_w[:, :, D:], None if a_b is None else a_b[:, D:])  # [.., P, 2D]
        return memory_attention(q, k, v, kv, self.mask, H, dropout_p)


def fast_memory(x: Tensor, dropout_p: float) -> bool:
    """The CPU path applies: a CPU tensor outside autocast, no attention dropout, and PyTorch
    has the CPU flash kernels (a private op, checked on torch 2.13)."""
    return not _plain(x) and dropout_p == 0 and None not in (_FLASH, _FLASH_BACKWARD)


def normalized_memory(
    memory: Tensor, mem_w: Tensor, mem_b: Tensor | None, eps: float = EPS
) -> tuple[Tensor, Tensor]:
    """The memory with LayerNorm applied in its own Dm-dim space.

    memory [M, B, T, P, Dm], mem_w [M, Dm, D], mem_b [M, D] | None -> (mh [M, B, T, P, Dm+2],
    wc [M, Dm+1, D]) with ``LN(memory @ mem_w + mem_b) == mh[..., :Dm+1] @ wc`` (LN without
    affine): wc is ``[mem_w; mem_b]`` minus each row's mean (LN's centring, done on the
    weights), ``mh = [r·memory, r, 1]`` with r = 1 / sqrt(var + eps), var = |[m, 1] @ wc|² / D
    computed as a quadratic form with the (Dm+1)² Gram matrix. The last column, 1, carries the
    key / value biases (``memory_projections``).

    Precision: the quadratic form's fp32 rounding grows with (|[m, 1]| · |wc|)² / var, the square
    of what ``F.layer_norm`` sees; with memory vectors of order 1 it agrees with ``F.layer_norm``
    to about 1e-6, but a memory whose projection nearly cancels its bias (var tiny against
    |m|² |wc|²) loses digits. The generic path (``fast=False``) materialises the projection."""
    M, Dm, D = mem_w.shape
    b = mem_w.new_zeros(M, D) if mem_b is None else mem_b
    wt = torch.cat([mem_w, b.unsqueeze(1)], 1)  # [M, Dm+1, D]: the bias as one more input row
    wc = wt - wt.mean(-1, keepdim=True)  # [M, Dm+1, D]
    one = memory.new_ones(M, memory[0].numel() // Dm, 1)
    m1 = torch.cat([memory.reshape(M, -1, Dm), one], -1)  # [M, R, Dm+1], R = B*T*P
    gram = torch.bmm(wc, wc.transpose(1, 2))  # [M, Dm+1, Dm+1]
    var = (torch.bmm(m1, gram) * m1).sum(-1, keepdim=True) / D  # [M, R, 1]
    mh = torch.cat([m1 * torch.rsqrt(var.clamp(min=0) + eps), one], -1)  # [M, R, Dm+2]
    return mh.view(*memory.shape[:-1], Dm + 2), wc


def memory_projections(
    wc: Tensor, a_w: Tensor, a_b: Tensor | None, n_head: int
) -> tuple[Tensor, Tensor]:
    """A layer's key and value maps from ``normalized_memory``'s space, block diagonal per head.

    wc [M, Dm+1, D]; a_w [M, D, 3D], a_b [M, 3D] | None (q | k | v) -> (wk [M, D, H·E]: a
    query [D] to its H absorbed queries [E] (``q_h @ Ak_h^T``), wv [M, H·E, D]: the H mixed
    memories [E] to the heads' values (``u_h @ Av_h``)), E = Dm + 2. Weight-sized work only."""
    M, D = a_w.shape[0], a_w.shape[1]
    H, hd = n_head, D // n_head
    kv_b = a_w.new_zeros(M, 1, 2 * D) if a_b is None else a_b[:, None, D:]
    A = torch.cat([torch.bmm(wc, a_w[:, :, D:]), kv_b], 1)  # [M, E, 2D]: k | v of mh
    E = A.shape[1]
    eye = torch.eye(H, dtype=A.dtype, device=A.device)
    wk = torch.einsum("mehd,hg->mhdge", A[..., :D].reshape(M, E, H, hd), eye)
    wv = torch.einsum("mehd,hg->mgehd", A[..., D:].reshape(M, E, H, hd), eye)
    return wk.reshape(M, D, H * E), wv.reshape(M, H * E, D)


#: PyTorch's CPU flash-attention kernels, which return (and take back) the log-sum-exp of each
#: query's scores: the memory keys join the same softmax through it
_FLASH = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
_FLASH_BACKWARD = getattr(
    torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None
)


class _MemoryAttention(torch.autograd.Function):
    """Causal self-attention plus per-position memory, one softmax over T + P keys, with the
    memory in ``normalized_memory``'s space.

    The causal part is PyTorch's CPU flash attention, which returns each query's log-sum-exp
    ``lse_s``; the memory's scores ``s_p = qh_h · mh_p / sqrt(hd)`` join the same normaliser,
    ``L = logaddexp(lse_s, logsumexp_p s_p)``, and the output is
    ``exp(lse_s - L) · out_self + (Σ_p exp(s_p - L) mh_p) @ wv``. In the backward the flash
    kernel, given ``L`` and the final output, returns exactly the causal part's gradients under
    the joint softmax (it rebuilds the probabilities as exp(s - L) and uses rowsum(dO ⊙ O)).
    Per position Z = (m, b, t): scores, mixing and their gradients are batched [H, E] x [E, P]
    matmuls."""

    @staticmethod
    def forward(
        ctx: Any,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        qh: Tensor,
        mh: Tensor,
        wv: Tensor,
        mask: Tensor | None,
        H: int,
    ) -> Tensor:
        M, B, T, D = q.shape
        Z, P, E, hd = M * B * T, mh.shape[3], mh.shape[4], D // H
        scale = hd**-0.5
        o_self, lse = _FLASH(*_head_major(q, k, v, H=H), 0.0, True, scale=scale)  # [M*B,H,T,*]
        mz = mh.reshape(Z, P, E)
        s = torch.bmm(qh.reshape(Z, H, E), mz.transpose(1, 2)).mul_(scale)  # [Z, H, P]
        if mask is not None:
            s.masked_fill_(~mask.reshape(Z, 1, P), float("-inf"))
        lse_self = lse.view(M, B, H, T).transpose(2, 3).reshape(Z, H)
        L = torch.logaddexp(lse_self, torch.logsumexp(s, -1))  # [Z, H] joint log-sum-exp
        p = s.sub_(L[..., None]).exp_()  # [Z, H, P] memory probabilities
        u = torch.bmm(p, mz)  # [Z, H, E] each head's mixture of the memory
        alpha = torch.exp(lse_self - L).view(M, B, T, H, 1)  # the causal part's share
        out = torch.mul(alpha, o_self.view(M, B, H, T, hd).transpose(2, 3))  # [M, B, T, H, hd]
        out = out.view(M, B * T, D).baddbmm_(u.view(M, B * T, H * E), wv)
        ctx.save_for_backward(q, k, v, qh, mh, wv, out, L, p, u)
        ctx.H = H
        return out.view(M, B, T, D)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:
        q, k, v, qh, mh, wv, out, L, p, u = ctx.saved_tensors
        H = ctx.H
        M, B, T, D = q.shape
        Z, P, E, hd = M * B * T, mh.shape[3], mh.shape[4], D // H
        scale = hd**-0.5
        g = g.contiguous()
        g3 = g.view(M, B * T, D)
        gu = torch.bmm(g3, wv.transpose(1, 2)).view(Z, H, E)  # into each head's mixture
        gwv = torch.bmm(u.view(M, B * T, H * E).transpose(1, 2), g3)  # [M, H*E, D]
        rowsum = (g.view(Z, H, hd) * out.view(Z, H, hd)).sum(-1)  # [Z, H]  dO · O
        mz = mh.reshape(Z, P, E)
        gs = torch.bmm(gu, mz.transpose(1, 2)).sub_(rowsum[..., None]).mul_(p).mul_(scale)
        L_z = L.view(M, B, T, H).permute(0, 1, 3, 2).reshape(M * B, H, T)
        gq, gk, gv = _FLASH_BACKWARD(
            *_head_major(g, q, k, v, out.view(M, B, T, D), H=H), L_z, 0.0, True, scale=scale
        )
        # [Z, P, E] via the scores and via the values, one matmul with a contraction of 2H
        # (two with a contraction of H were 4.7x slower: too small for the batched GEMM)
        gmh = torch.bmm(torch.cat([gs, p], 1).transpose(1, 2), torch.cat([qh.view(Z, H, E), gu], 1))
        gqh = torch.bmm(gs, mz)  # [Z, H, E]
        bank = lambda t: t.transpose(1, 2).reshape(M, B, T, D)  # noqa: E731  head-major -> bank
        return bank(gq), bank(gk), bank(gv), gqh.view(qh.shape), gmh.view(mh.shape), gwv, None, None


def _head_major(*xs: Tensor, H: int) -> list[Tensor]:
    """[M, B, T, D] tensors as [M*B, H, T, hd] views (what the flash kernels take)."""
    M, B, T, D = xs[0].shape
    return [x.view(M * B, T, H, D // H).transpose(1, 2) for x in xs]
