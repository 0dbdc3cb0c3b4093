"""A small recurrent (GRU) LM as a bank of stacked modules: the second module type, ``"gru"``.

One module = a token embedding, an optional memory read at the input, ``n_layer`` stacked GRU
layers (``torch.nn.GRU``'s equations, h_0 = 0), a final LayerNorm, an LM head (tied to the token
embedding or not) and the two society heads of every module type: a *message* and a *salience*
read off the final hidden state of every position. No position embedding: the recurrence knows
where it is.

Memory read (only when ``memory`` is given): memory ``[M, B, T, P, Dm]`` is projected to width D
(``mem_w``, ``mem_b``), and the embedded token t makes ONE single-head attention read over its
own P slots::

    q_t = x_t @ q_w                                  # [D]
    s_p = q_t . m_{t,p} / sqrt(D)      (-inf where memory_mask is False)
    r_t = softmax(s) @ m_t                           # 0 when every slot of t is empty
    x_t <- x_t + r_t

Memory at position t enters the recurrence at step t, so outputs at t depend on tokens <= t and
memory at positions <= t only (causal).

GRU (gates r, z, n in ``torch.nn.GRU``'s order; the bank stores W as [in, 3D] so x @ W needs no
transpose, nn.GRU stores the transpose [3D, in])::

    r = sigmoid(x W_ir + b_ir + h W_hr + b_hr)
    z = sigmoid(x W_iz + b_iz + h W_hz + b_hz)
    n = tanh(x W_in + b_in + r * (h W_hn + b_hn))
    h' = (1 - z) * n + z * h

Batched: each layer's input projections for all T steps are one bmm; the loop over time does
one ``[M, B, D] @ [M, D, 3D]`` bmm per step for all modules at once.

Dropout (train mode): on the input (embedding + memory read), between GRU layers (as
``nn.GRU(dropout=...)``), and on the last layer's output before the final LayerNorm.

Init: token embedding N(0, 1/sqrt(D)) (rows of about unit norm: with nanoGPT's 0.02 the GRU's
input signal is tiny and it learns markedly slower; the tied head then starts with logits of std
about 1); GRU weights and biases uniform(-1/sqrt(D), 1/sqrt(D)) as ``torch.nn.GRU``; memory
projection, query, untied head, message and salience weights N(0, 0.02); LayerNorm weight 1,
other biases 0. Each module draws its own numbers.

``TinyGRU`` is the same computation for ONE module from ordinary layers (``nn.Embedding``,
``nn.Linear``, ``F.scaled_dot_product_attention`` for the read, ``nn.GRU`` for the recurrence):
the reference the tests check the bank against.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from brainnet.config import ModuleConfig
from brainnet.modules.bank import OUTPUT_HEADS, Bank, BankOutput, bmm_linear, output_heads, pick
from brainnet.registry import MODULE_TYPES


class RecurrentConfig(ModuleConfig):
    type: Literal["gru"] = "gru"
    d_model: int = Field(64, ge=1, le=4096, description="hidden width (embedding and GRU state)")
    n_layer: int = Field(1, ge=1, le=8, description="stacked GRU layers")
    dropout: float = Field(
        0.0, ge=0, lt=1, description="dropout on the input, between layers and on the output"
    )
    tie_weights: bool = Field(True, description="LM head shares the token embedding")


@MODULE_TYPES.register("gru")
class RecurrentBank(Bank):
    """``count`` small GRU LMs, parameters stacked as [M, ...] (GRU layers as [M, L, ...])."""

    Config = RecurrentConfig
    matrix_names = frozenset({"wte", "mem_w", "q_w", "ih_w", "hh_w", "head_w", "msg_w"})
    #: every stacked parameter; the untied head may be None
    param_names = ("wte", "mem_w", "mem_b", "q_w", "ih_w", "ih_b", "hh_w", "hh_b") + OUTPUT_HEADS

    def __init__(self, cfg: RecurrentConfig, vocab_size: int, block_size: int) -> None:
        super().__init__(cfg, vocab_size, block_size)
        L, D, V, Dm = cfg.n_layer, cfg.d_model, vocab_size, cfg.message_dim

        p = self.stacked

        self.wte = p(V, D)  # token embedding
        self.mem_w, self.mem_b = p(Dm, D), p(D)  # memory slot -> width D
        self.q_w = p(D, D)  # embedded token -> query of the memory read
        self.ih_w, self.ih_b = p(L, D, 3 * D), p(L, 3 * D)  # input -> r, z, n
        self.hh_w, self.hh_b = p(L, D, 3 * D), p(L, 3 * D)  # hidden -> r, z, n
        self.add_output_heads(D, V, cfg.tie_weights, norm_bias=True)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """wte N(0, 1/sqrt(D)); GRU weights/biases uniform(+-1/sqrt(D)) as nn.GRU; other
        matrices N(0, 0.02); LayerNorm 1; other biases 0."""
        k = 1.0 / math.sqrt(self.cfg.d_model)
        for name, p in self.named_parameters():
            if name == "wte":
                nn.init.normal_(p, 0.0, k)
            elif name in ("ih_w", "ih_b", "hh_w", "hh_b"):
                nn.init.uniform_(p, -k, k)
            elif name in self.matrix_names or name == "sal_w":
                nn.init.normal_(p, 0.0, 0.02)
            elif name == "lnf_w":
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
        """See ``Bank.forward``: tokens [M, B, T], memory [M, B, T, P, Dm] | None,
        memory_mask [M, B, T, P] | None, idx [M] | None -> logits [M, B, T, V],
        message [M, B, T, Dm], salience [M, B, T]."""
        cfg = self.cfg
        M, B, T = tokens.shape
        D, L = cfg.d_model, cfg.n_layer
        if T > self.block_size:
            raise ValueError(f"sequence length {T} > block_size {self.block_size}")
        w = {name: pick(getattr(self, name), idx) for name in self.param_names}  # each [M, ...]

        # embeddings: gather each module's own table rows
        flat = tokens.reshape(M, B * T)  # [M, B*T]
        x = torch.gather(w["wte"], 1, flat.unsqueeze(-1).expand(M, B * T, D)).view(M, B, T, D)
        if memory is not None:
            x = x + _read_memory(x, memory, memory_mask, w)  # [M, B, T, D]
        x = F.dropout(x, cfg.dropout, self.training)

        for l in range(L):
            gi = bmm_linear(x, w["ih_w"][:, l], w["ih_b"][:, l])  # [M, B, T, 3D], all steps
            hh_w, hh_b = w["hh_w"][:, l], w["hh_b"][:, l].unsqueeze(1)  # [M, D, 3D], [M, 1, 3D]
            h = x.new_zeros(M, B, D)  # h_0 = 0
            outs = []
            for t in range(T):
                gh = torch.baddbmm(hh_b, h, hh_w)  # [M, B, 3D]
                gi_t = gi[:, :, t]  # [M, B, 3D]
                rz = torch.sigmoid(gi_t[..., : 2 * D] + gh[..., : 2 * D])  # [M, B, 2D]
                r, z = rz[..., :D], rz[..., D:]
                n = torch.tanh(gi_t[..., 2 * D :] + r * gh[..., 2 * D :])  # [M, B, D]
                h = n + z * (h - n)  # == (1 - z) * n + z * h
                outs.append(h)
            x = torch.stack(outs, dim=2)  # [M, B, T, D]
            x = F.dropout(x, cfg.dropout, self.training)  # between layers, and on the output

        return output_heads(x, w)

    def export(self, m: int) -> TinyGRU:
        """A standalone copy of module ``m`` (same numbers, ordinary layers and nn.GRU)."""
        lm = TinyGRU(self.cfg, self.vocab_size, self.block_size)
        lm.load_bank_row(self, m)
        return lm


def _read_memory(
    x: Tensor, memory: Tensor, memory_mask: Tensor | None, w: dict[str, Tensor | None]
) -> Tensor:
    """Single-head read of each position's own P memory slots -> [M, B, T, D].

    x [M, B, T, D] (embedded tokens); memory [M, B, T, P, Dm]; memory_mask [M, B, T, P] | None.
    A position whose slots are all empty reads exactly 0 (no NaN in forward or backward).
    """
    D = x.shape[-1]
    mem = bmm_linear(memory.to(x.dtype), w["mem_w"], w["mem_b"])  # [M, B, T, P, D]
    q = bmm_linear(x, w["q_w"], None)  # [M, B, T, D]
    scores = torch.einsum("mbtd,mbtpd->mbtp", q, mem) / math.sqrt(D)  # [M, B, T, P]
    if memory_mask is None:
        att = scores.softmax(-1)
    else:
        scores = scores.masked_fill(~memory_mask, float("-inf"))
        # rows with no slot: score 0 everywhere (finite softmax), then zeroed by the mask
        scores = scores.masked_fill(~memory_mask.any(-1, keepdim=True), 0.0)
        att = scores.softmax(-1) * memory_mask  # [M, B, T, P]
    return torch.einsum("mbtp,mbtpd->mbtd", att.to(mem.dtype), mem)


# --------------------------------------------------------------------------- one module


class TinyGRU(nn.Module):
    """One GRU module, written the ordinary way (reference and naive-loop baseline)."""

    def __init__(self, cfg: RecurrentConfig, vocab_size: int, block_size: int) -> None:
        super().__init__()
        D, L, Dm = cfg.d_model, cfg.n_layer, cfg.message_dim
        self.cfg = cfg
        self.wte = nn.Embedding(vocab_size, D)
        self.mem = nn.Linear(Dm, D)
        self.q = nn.Linear(D, D, bias=False)
        self.gru = nn.GRU(D, D, num_layers=L, batch_first=True, dropout=cfg.dropout if L > 1 else 0)
        self.lnf = nn.LayerNorm(D)
        self.head = None if cfg.tie_weights else nn.Linear(D, vocab_size, bias=False)
        self.msg = nn.Linear(D, Dm)
        self.sal = nn.Linear(D, 1)

    def forward(
        self, tokens: Tensor, memory: Tensor | None = None, memory_mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """tokens [B, T], memory [B, T, P, Dm] | None, memory_mask [B, T, P] | None
        -> logits [B, T, V], message [B, T, Dm], salience [B, T]."""
        p = self.cfg.dropout
        x = self.wte(tokens)  # [B, T, D]
        if memory is not None:
            B, T, P, _ = memory.shape
            D = x.shape[-1]
            mem = self.mem(memory).reshape(B * T, P, D)  # keys = values
            q = self.q(x).reshape(B * T, 1, D)  # one query per position
            mask = None if memory_mask is None else memory_mask.reshape(B * T, 1, P)
            # SDPA returns 0 for a query whose keys are all masked
            r = F.scaled_dot_product_attention(q, mem, mem, attn_mask=mask)
            x = x + r.view(B, T, D)
        x = F.dropout(x, p, self.training)
        x, _ = self.gru(x)  # h_0 = 0; dropout between layers inside nn.GRU
        x = self.lnf(F.dropout(x, p, self.training))
        logits = x @ self.wte.weight.T if self.head is None else self.head(x)
        return logits, self.msg(x), self.sal(x).squeeze(-1)

    def _bank_row(self) -> dict[str, list[Tensor] | None]:
        """Bank parameter name -> this model's tensors for it (one per layer for layered names)."""
        L = self.cfg.n_layer
        g = self.gru
        return {
            "wte": [self.wte.weight],
            "mem_w": [self.mem.weight],
            "mem_b": [self.mem.bias],
            "q_w": [self.q.weight],
            "ih_w": [getattr(g, f"weight_ih_l{l}") for l in range(L)],
            "ih_b": [getattr(g, f"bias_ih_l{l}") for l in range(L)],
            "hh_w": [getattr(g, f"weight_hh_l{l}") for l in range(L)],
            "hh_b": [getattr(g, f"bias_hh_l{l}") for l in range(L)],
            "lnf_w": [self.lnf.weight],
            "lnf_b": [self.lnf.bias],
            "head_w": None if self.head is None else [self.head.weight],
            "msg_w": [self.msg.weight],
            "msg_b": [self.msg.bias],
            "sal_w": [self.sal.weight],
            "sal_b": [self.sal.bias],
        }

    @torch.no_grad()
    def load_bank_row(self, bank: RecurrentBank, m: int) -> None:
        """Copy module ``m`` of ``bank`` into this model."""
        for name, params in self._bank_row().items():
            src = getattr(bank, name)
            if params is None or src is None:
                continue
            rows = src[m] if name in _LAYERED else src[m].unsqueeze(0)  # [L or 1, ...]
            for p, row in zip(params, rows, strict=True):
                p.copy_(_bank_to_torch(name, row))

    def bank_grads(self) -> dict[str, Tensor | None]:
        """Gradients laid out like one row of a RecurrentBank (to compare against the bank)."""
        out: dict[str, Tensor | None] = {}
        for name, params in self._bank_row().items():
            if params is None or any(p.grad is None for p in params):
                out[name] = None
                continue
            g = torch.stack([_torch_to_bank(name, p.grad) for p in params])
            out[name] = g if name in _LAYERED else g[0]
        return out


# nn.Linear and nn.GRU store weights as [out, in]; the bank as [in, out] (x @ w, no transpose).
_LAYERED = {"ih_w", "ih_b", "hh_w", "hh_b"}
_TRANSPOSED = {"mem_w", "q_w", "ih_w", "hh_w", "head_w", "msg_w"}


def _bank_to_torch(name: str, t: Tensor) -> Tensor:
    if name == "sal_w":
        return t.unsqueeze(0)  # [D] -> [1, D]
    return t.transpose(-1, -2) if name in _TRANSPOSED else t


def _torch_to_bank(name: str, t: Tensor) -> Tensor:
    if name == "sal_w":
        return t.squeeze(0)
    return t.transpose(-1, -2) if name in _TRANSPOSED else t
