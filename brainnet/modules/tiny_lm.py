"""The tiny transformer LM, nanoGPT-shaped, as a bank of stacked modules.

One module = token + position embeddings, ``n_layer`` pre-LN blocks (causal self-attention via
``scaled_dot_product_attention``, GELU MLP), a final LayerNorm, an LM head (tied to the token
embedding or not), plus two small society heads read off the final hidden state of every
position: a *message* (what mates and the blackboard hear) and a *salience* (a scalar bid to be
heard). Both are causal: the message at position t depends on tokens <= t only.

Memory as a per-position prefix: ``memory [M, B, T, P, Dm]`` holds P vectors for every position
(blackboard slots, mates' messages, all computed from tokens <= t by the society). They are
projected to width D and, in every layer, token t attends to its own P memory vectors (keys and
values from that layer's projections, the memory itself not updated) besides the causal
self-attention over tokens <= t. ``memory_mask [M, B, T, P]`` marks empty slots.

``TinyLM`` is the same computation for ONE module with plain nn.Linear layers: the reference
that tests check the bank against, and the naive per-module loop in the benchmark.

Speed on a CPU, where a whole-bank pass streams bank-sized intermediates through memory: the
forward runs the module axis in chunks (``chunk``; automatic: ``CPU_CHUNK_BYTES`` of MLP
activation per chunk on a CPU, the whole bank on a GPU) within ONE autograd graph; each
LayerNorm's affine is folded into the linear layer that reads it (``fold_layer_norm``: a pass
over weights instead of two over activations); residual adds ride in the matmul
(``baddbmm``); q, k, v come from one matmul and the memory is read in its own Dm-dim space
with a hand-written backward (memory.py). Chunked and whole-bank passes agree to fp32 rounding
(tests/test_bank.py). (Recomputing LayerNorm and GELU in the backward instead of keeping their
outputs was measured 4-8 % slower on the 2-core benchmark machine once freed memory is reused,
see engine/allocator.py, and was dropped; so was an MLP function running 1-2 MiB groups of
modules with the GELU recomputed in the backward: 5-10 % slower, the bank's activations are
not DRAM-bound on that machine.)
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from brainnet.config import ModuleConfig
from brainnet.config_errors import Problems, check, problem
from brainnet.modules.bank import (
    HEAD_KEYS,
    OUTPUT_HEADS,
    Bank,
    BankOutput,
    fold_heads,
    fold_layer_norm,
    folded_heads,
    norm_linear,
    norm_linear_parts,
    pick,
    residual_linear,
    row_pieces,
)
from brainnet.modules.memory import MemoryReader, attend_with_memory, fast_memory
from brainnet.registry import MODULE_TYPES

#: on a CPU, the automatic chunk keeps one chunk's widest activation within this many bytes
CPU_CHUNK_BYTES = 16 * 2**20


class TransformerConfig(ModuleConfig):
    type: Literal["transformer"] = "transformer"
    n_layer: int = Field(2, ge=1, le=64, description="transformer blocks")
    n_head: int = Field(2, ge=1, le=64, description="attention heads; must divide d_model")
    d_model: int = Field(64, ge=1, le=8192, description="residual width")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on attention and residuals")
    bias: bool = Field(True, description="biases in linears and LayerNorms (nanoGPT: False)")
    tie_weights: bool = Field(True, description="LM head shares the token embedding")
    chunk: int | None = Field(
        None,
        ge=1,
        description="modules per forward pass; unset: whole bank on a GPU, cache-sized on a CPU",
    )

    @check("n_head", "d_model")
    def _heads_divide(self) -> Problems:
        if self.d_model % self.n_head:
            yield problem("n_head", self.n_head, f"must divide d_model ({self.d_model})")


@MODULE_TYPES.register("transformer")
class TransformerBank(Bank):
    """``count`` tiny transformer LMs, parameters stacked as [M, ...] (layers as [M, L, ...])."""

    Config = TransformerConfig
    matrix_names = frozenset(
        {"wte", "wpe", "attn_w", "proj_w", "fc_w", "fc2_w", "head_w", "mem_w", "msg_w"}
    )
    embedding_names = ("wpe",)
    #: every stacked parameter; optional ones (biases, untied head) may be None
    param_names = (
        "wte", "wpe", "mem_w", "mem_b", "ln1_w", "ln1_b", "attn_w", "attn_b", "proj_w",
        "proj_b", "ln2_w", "ln2_b", "fc_w", "fc_b", "fc2_w", "fc2_b",
    ) + OUTPUT_HEADS  # fmt: skip

    def __init__(self, cfg: TransformerConfig, vocab_size: int, block_size: int) -> None:
        super().__init__(cfg, vocab_size, block_size)
        L, D, V, T, Dm = cfg.n_layer, cfg.d_model, vocab_size, block_size, cfg.message_dim
        F4 = 4 * D

        p = self.stacked

        def maybe(*shape: int) -> nn.Parameter | None:
            return p(*shape) if cfg.bias else None

        self.wte = p(V, D)  # token embedding
        self.wpe = p(T, D)  # position embedding
        self.mem_w, self.mem_b = p(Dm, D), maybe(D)  # memory vector -> prefix position
        self.ln1_w, self.ln1_b = p(L, D), maybe(L, D)
        self.attn_w, self.attn_b = p(L, D, 3 * D), maybe(L, 3 * D)  # q, k, v
        self.proj_w, self.proj_b = p(L, D, D), maybe(L, D)
        self.ln2_w, self.ln2_b = p(L, D), maybe(L, D)
        self.fc_w, self.fc_b = p(L, D, F4), maybe(L, F4)
        self.fc2_w, self.fc2_b = p(L, F4, D), maybe(L, D)
        self.add_output_heads(D, V, cfg.tie_weights, cfg.bias)
        self.reset_parameters()
        #: modules per forward chunk (None: automatic, see ``chunk_size``)
        self.chunk: int | None = cfg.chunk

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """nanoGPT init: N(0, 0.02), residual projections N(0, 0.02/sqrt(2L)), norms 1, biases 0."""
        resid_std = 0.02 / math.sqrt(2 * self.cfg.n_layer)
        for name, p in self.named_parameters():
            if name in ("proj_w", "fc2_w"):
                nn.init.normal_(p, 0.0, resid_std)
            elif name in self.matrix_names or name == "sal_w":
                nn.init.normal_(p, 0.0, 0.02)
            elif name.startswith("ln") and name.endswith("_w"):
                nn.init.ones_(p)
            else:
                nn.init.zeros_(p)

    def forward(
        self,
        tokens: Tensor,
        memory: Tensor | None = None,
        memory_mask: Tensor | None = None,
        idx: Tensor | None = None,
    ) -> BankOutput:
        M, B, T = tokens.shape
        if T > self.block_size:
            raise ValueError(f"sequence length {T} > block_size {self.block_size}")
        w = {name: pick(getattr(self, name), idx) for name in self.param_names}  # each [M, ...]
        c = self.chunk_size(M, B * T, tokens.device)
        n_chunks = math.ceil(M / c)  # at most c modules each, as equal as possible: 10/3 -> 3,3,2,2
        sizes = [M // n_chunks + (i < M % n_chunks) for i in range(n_chunks)]
        w.update(fold_heads(w))  # once for the whole bank (weights only)
        # each chunk's rows of every parameter (the un-folded layered ones: of each layer), as
        # views whose gradients go back through ONE copy into the parameter's gradient
        parts = {
            n: None if w[n] is None else row_pieces(w[n], sizes, n in _PER_LAYER) for n in _CHUNKED
        }
        if len(sizes) == 1:
            one = {n: None if p is None else p[0] for n, p in parts.items()}
            return self._rows(one, tokens, memory, memory_mask)
        # the module axis in chunks, one autograd graph: no op streams more than a chunk's
        # activations through memory at once
        toks = tokens.split(sizes)
        mems = [None] * len(toks) if memory is None else memory.split(sizes)
        masks = [None] * len(toks) if memory_mask is None else memory_mask.split(sizes)
        outs = [
            self._rows({n: None if p is None else p[i] for n, p in parts.items()}, *args)
            for i, args in enumerate(zip(toks, mems, masks, strict=True))
        ]
        return BankOutput(*(torch.cat(o) for o in zip(*outs, strict=True)))

    def chunk_size(self, M: int, tokens: int, device: torch.device) -> int:
        """Modules per chunk of the forward (``M``: the whole bank in one pass).

        ``self.chunk`` (from the config) when set; else the whole bank on a GPU and, on a CPU,
        as many modules as keep a chunk's widest activation (the MLP's [c, B*T, 4D]) within
        ``CPU_CHUNK_BYTES``: large enough that per-op overhead stays small, small enough that
        no op streams a bank-sized tensor (16 MiB measured best on the 2-core benchmark
        machine, docs/benchmarks.md; 1-2 MiB chunks were slower). ``forward`` cuts the bank
        into as few chunks of at most this many modules as it can, of sizes that differ by at
        most one (64 modules at 21 per chunk: 16, 16, 16, 16, not 21, 21, 21, 1).
        """
        if self.chunk is not None:
            return min(M, self.chunk)
        if device.type != "cpu":
            return M
        per_module = tokens * 4 * self.cfg.d_model * 4  # fp32 bytes of [B*T, 4D]
        return max(1, min(M, CPU_CHUNK_BYTES // per_module))

    def _rows(
        self,
        w: dict[str, Tensor | None],
        tokens: Tensor,
        memory: Tensor | None,
        memory_mask: Tensor | None,
    ) -> BankOutput:
        """The forward of the modules whose parameters are ``w`` (each [M, ...]; proj / fc2
        weights and biases as a sequence of L tensors [M, ...]; heads from ``fold_heads``)."""
        cfg = self.cfg
        M, B, T = tokens.shape
        D, H, L = cfg.d_model, cfg.n_head, cfg.n_layer
        hd, V = D // H, w["wte"].shape[1]
        train, p_drop = self.training, cfg.dropout if self.training else 0.0

        # embeddings: module m's rows of the stacked table, one index_select for all modules
        offset = torch.arange(M, device=tokens.device).mul_(V).view(M, 1, 1)
        rows = (tokens + offset).view(-1)  # [M*B*T]
        x = w["wte"].reshape(M * V, D).index_select(0, rows).view(M, B, T, D)
        x = F.dropout(x.add_(w["wpe"][:, None, :T]), cfg.dropout, train)  # [M, B, T, D]
        mem = None
        if memory is not None:  # read by every layer (memory.py)
            fast = fast_memory(x, p_drop)
            mem = MemoryReader(memory, w["mem_w"], w["mem_b"], memory_mask, H, fast)

        # LN1 / LN2 affines folded into the qkv / fc weights, all layers at once ([M, L, ...]),
        # then one view per layer
        qkv_w = _layers(*fold_layer_norm(w["ln1_w"], w["ln1_b"], w["attn_w"], w["attn_b"]), L)
        fc_w = _layers(*fold_layer_norm(w["ln2_w"], w["ln2_b"], w["fc_w"], w["fc_b"]), L)
        proj_w = list(zip(w["proj_w"], w["proj_b"] or [None] * L, strict=True))
        fc2_w = list(zip(w["fc2_w"], w["fc2_b"] or [None] * L, strict=True))
        for l in range(L):
            # attention: x [M, B, T, D] -> q, k, v [M, B, T, D] (heads side by side)
            q, k, v = norm_linear_parts(x, *qkv_w[l], 3)  # each [M, B, T, D]
            if mem is None:
                q, k, v = (t.view(M * B, T, H, hd).transpose(1, 2) for t in (q, k, v))
                a = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p_drop)
                a = a.transpose(1, 2).reshape(M, B, T, D)
            else:  # memory keys / values through this layer's LN and k, v projections
                a = mem.attend(q, k, v, *qkv_w[l], p_drop)  # [M, B, T, D]
            x = residual_linear(x, a, *proj_w[l], cfg.dropout, train)
            # MLP: [M, B, T, D] -> [M, B, T, 4D] -> GELU -> [M, B, T, D]
            h = F.gelu(norm_linear(x, *fc_w[l]))
            x = residual_linear(x, h, *fc2_w[l], cfg.dropout, train)

        return folded_heads(x, w)

    def export(self, m: int) -> TinyLM:
        """A standalone copy of module ``m`` (same numbers, ordinary nn.Linear layers)."""
        lm = TinyLM(self.cfg, self.vocab_size, self.block_size)
        lm.load_bank_row(self, m)
        return lm


def _layers(w: Tensor, b: Tensor | None, L: int) -> list[tuple[Tensor, Tensor | None]]:
    """[(w[:, l], b[:, l])] for each layer l of w [M, L, ...], b [M, L, ...] | None."""
    return list(zip(w.unbind(1), [None] * L if b is None else b.unbind(1), strict=True))


def _tail(p: Tensor | None, start: int) -> Tensor | None:
    return None if p is None else p[start:]


# --------------------------------------------------------------------------- one module


class Block(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        D, b = cfg.d_model, cfg.bias
        self.ln1 = nn.LayerNorm(D, bias=b)
        self.attn = nn.Linear(D, 3 * D, bias=b)
        self.proj = nn.Linear(D, D, bias=b)
        self.ln2 = nn.LayerNorm(D, bias=b)
        self.fc = nn.Linear(D, 4 * D, bias=b)
        self.fc2 = nn.Linear(4 * D, D, bias=b)
        self.n_head, self.dropout = cfg.n_head, cfg.dropout

    def forward(self, x: Tensor, mem: Tensor | None, mask: Tensor | None) -> Tensor:
        """x [B, T, D]; mem [B, T, P, D] | None; mask [B, T, P] | None."""
        B, T, D = x.shape
        H = self.n_head
        q, k, v = self.attn(self.ln1(x)).view(B, T, 3, H, D // H).permute(2, 0, 3, 1, 4)
        p = self.dropout if self.training else 0.0
        if mem is None:
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p)
        else:
            P = mem.shape[2]
            kv = F.linear(self.ln1(mem), self.attn.weight[D:], _tail(self.attn.bias, D))
            km, vm = kv.view(B, T, P, 2, H, D // H).permute(3, 0, 4, 1, 2, 5)
            a = attend_with_memory(q, k, v, km, vm, None if mask is None else mask[:, None], p)
        x = x + F.dropout(
            self.proj(a.transpose(1, 2).reshape(B, T, D)), self.dropout, self.training
        )
        return x + F.dropout(self.fc2(F.gelu(self.fc(self.ln2(x)))), self.dropout, self.training)


class TinyLM(nn.Module):
    """One transformer module, written the ordinary way (reference and naive-loop baseline)."""

    def __init__(self, cfg: TransformerConfig, vocab_size: int, block_size: int) -> None:
        super().__init__()
        D, Dm = cfg.d_model, cfg.message_dim
        self.cfg = cfg
        self.wte = nn.Embedding(vocab_size, D)
        self.wpe = nn.Embedding(block_size, D)
        self.mem = nn.Linear(Dm, D, bias=cfg.bias)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.lnf = nn.LayerNorm(D, bias=cfg.bias)
        self.head = None if cfg.tie_weights else nn.Linear(D, vocab_size, bias=False)
        self.msg = nn.Linear(D, Dm)
        self.sal = nn.Linear(D, 1)

    def forward(
        self, tokens: Tensor, memory: Tensor | None = None, memory_mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """tokens [B, T], memory [B, T, P, Dm] | None, memory_mask [B, T, P] | None
        -> logits [B, T, V], message [B, T, Dm], salience [B, T]."""
        T = tokens.shape[1]
        x = F.dropout(self.wte(tokens) + self.wpe.weight[:T], self.cfg.dropout, self.training)
        mem = None if memory is None else self.mem(memory)
        for block in self.blocks:
            x = block(x, mem, memory_mask)
        x = self.lnf(x)
        logits = x @ self.wte.weight.T if self.head is None else self.head(x)
        return logits, self.msg(x), self.sal(x).squeeze(-1)

    @torch.no_grad()
    def load_bank_row(self, bank: TransformerBank, m: int) -> None:
        """Copy module ``m`` of ``bank`` into this model."""
        for name, params in _bank_row(self).items():
            src = getattr(bank, name)
            if params is None or src is None:
                continue
            rows = src[m] if name in _LAYERED else src[m].unsqueeze(0)  # [L or 1, ...]
            for p, row in zip(params, rows, strict=True):
                p.copy_(_bank_to_linear(name, row))

    def bank_grads(self) -> dict[str, Tensor | None]:
        """Gradients laid out like one row of a TransformerBank (to compare against the bank)."""
        out: dict[str, Tensor | None] = {}
        for name, params in _bank_row(self).items():
            if params is None or any(p.grad is None for p in params):
                out[name] = None
                continue
            g = torch.stack([_linear_to_bank(name, p.grad) for p in params])
            out[name] = g if name in _LAYERED else g[0]
        return out


# Mapping between the bank's stacked names and TinyLM's modules. Linear weights are [out, in]
# in nn.Linear and [in, out] in the bank (so that x @ w needs no transpose).
_LAYERED = {
    "ln1_w",
    "ln1_b",
    "attn_w",
    "attn_b",
    "proj_w",
    "proj_b",
    "ln2_w",
    "ln2_b",
    "fc_w",
    "fc_b",
    "fc2_w",
    "fc2_b",
}
_TRANSPOSED = {"mem_w", "attn_w", "proj_w", "fc_w", "fc2_w", "head_w", "msg_w"}
#: what the bank's forward cuts into chunks: parameters read per chunk, as per-layer views for
#: _PER_LAYER (the others are [c, L, ...] blocks, folded with their LayerNorm per chunk), and
#: the heads folded once per pass (``fold_heads``)
_PER_LAYER = {"proj_w", "proj_b", "fc2_w", "fc2_b"}
_CHUNKED = (
    "wte", "wpe", "mem_w", "mem_b", "ln1_w", "ln1_b", "attn_w", "attn_b", "proj_w", "proj_b",
    "ln2_w", "ln2_b", "fc_w", "fc_b", "fc2_w", "fc2_b",
) + HEAD_KEYS  # fmt: skip


def _layer(attr: str, field: str):
    return lambda lm: [getattr(getattr(b, attr), field) for b in lm.blocks]


def _one(path: str):
    def get(lm: TinyLM):
        obj = lm
        for part in path.split("."):
            obj = getattr(obj, part) if obj is not None else None
        return None if obj is None else [obj]

    return get


_BANK_GETTERS = {
    "wte": _one("wte.weight"),
    "wpe": _one("wpe.weight"),
    "mem_w": _one("mem.weight"),
    "mem_b": _one("mem.bias"),
    "ln1_w": _layer("ln1", "weight"),
    "ln1_b": _layer("ln1", "bias"),
    "attn_w": _layer("attn", "weight"),
    "attn_b": _layer("attn", "bias"),
    "proj_w": _layer("proj", "weight"),
    "proj_b": _layer("proj", "bias"),
    "ln2_w": _layer("ln2", "weight"),
    "ln2_b": _layer("ln2", "bias"),
    "fc_w": _layer("fc", "weight"),
    "fc_b": _layer("fc", "bias"),
    "fc2_w": _layer("fc2", "weight"),
    "fc2_b": _layer("fc2", "bias"),
    "lnf_w": _one("lnf.weight"),
    "lnf_b": _one("lnf.bias"),
    "head_w": _one("head.weight"),
    "msg_w": _one("msg.weight"),
    "msg_b": _one("msg.bias"),
    "sal_w": _one("sal.weight"),
    "sal_b": _one("sal.bias"),
}


def _bank_row(lm: TinyLM) -> dict[str, list[Tensor] | None]:
    """Bank parameter name -> this model's tensors for it (one per layer for layered names)."""
    out = {}
    for name, get in _BANK_GETTERS.items():
        ps = get(lm)
        out[name] = None if ps is None or any(p is None for p in ps) else ps
    return out


def _bank_to_linear(name: str, t: Tensor) -> Tensor:
    if name == "sal_w":
        return t.unsqueeze(0)  # [D] -> [1, D]
    return t.transpose(-1, -2) if name in _TRANSPOSED else t


def _linear_to_bank(name: str, t: Tensor) -> Tensor:
    if name == "sal_w":
        return t.squeeze(0)
    return t.transpose(-1, -2) if name in _TRANSPOSED else t
