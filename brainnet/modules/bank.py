"""The bank: every module of one type in one nn.Module, parameters stacked on a leading module axis.

Why: a Python loop over separate models is capped at the speed of one small model; stacking
``M`` modules' weights as ``[M, ...]`` tensors turns every linear layer of every module into
ONE batched matmul (``torch.baddbmm``), so all active modules train in one forward / backward.

The stacked-weights trick in plain tensor code::

    x: [M, N, d_in]   (N = batch * tokens, per module)
    w: [M, d_in, d_out]
    b: [M, d_out]
    y = baddbmm(b[:, None, :], x, w)          # y[m] = x[m] @ w[m] + b[m]   -> [M, N, d_out]

A subset of modules runs by indexing the module axis first (``idx`` [M'] long): gradients then
reach only the selected rows, the other modules' parameters are untouched.
"""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from brainnet.config import ModuleConfig


class BankOutput(NamedTuple):
    logits: Tensor  # [M, B, T, V]
    message: Tensor  # [M, B, T, Dm]  what each module says at each position (causal)
    salience: Tensor  # [M, B, T]     how much it wants to be heard there (a raw score)


class Bank(nn.Module):
    """Base class of module types: ``count`` modules of one type with stacked parameters.

    A module type subclasses Bank, sets ``Config`` (a ModuleConfig subclass with the type's
    hyper-parameters) and ``matrix_names`` (parameters that get weight decay), and implements
    ``forward``. Every parameter's dim 0 is the module axis.
    """

    Config: ClassVar[type[ModuleConfig]] = ModuleConfig
    #: Names of parameters that are weight matrices (decayed); the rest (biases, norms) are not.
    matrix_names: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, cfg: ModuleConfig, vocab_size: int, block_size: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.vocab_size = vocab_size
        self.block_size = block_size

    @property
    def n_modules(self) -> int:
        return next(iter(self.parameters())).shape[0]

    def forward(
        self,
        tokens: Tensor,
        memory: Tensor | None = None,
        memory_mask: Tensor | None = None,
        idx: Tensor | None = None,
    ) -> BankOutput:
        """Run modules ``idx`` (all when None) on their own token batches.

        tokens: [M', B, T] long, M' = len(idx) or n_modules
        memory: [M', B, T, P, Dm] or None; P memory vectors per position (blackboard slots,
            mates' messages) that the token at that position may read. The society builds them
            from tokens <= t only, so reading them keeps the LM causal.
        memory_mask: [M', B, T, P] bool or None; False marks an empty slot (not attended).
        """
        raise NotImplementedError

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """AdamW groups: decay on matrices only (nanoGPT's rule)."""
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            (decay if name in self.matrix_names else no_decay).append(p)
        return [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]

    def num_params_per_module(self, non_embedding: bool = False) -> int:
        """Parameters of ONE module (the bank holds n_modules times this)."""
        skip = self.embedding_names if non_embedding else ()
        return sum(p[0].numel() for n, p in self.named_parameters() if n not in skip)

    #: parameter names excluded by ``num_params_per_module(non_embedding=True)``
    embedding_names: ClassVar[tuple[str, ...]] = ()

    def stacked(self, *shape: int) -> nn.Parameter:
        """A new (uninitialised) parameter with the module axis in front: [M, *shape]."""
        return nn.Parameter(torch.empty(self.cfg.count, *shape))

    def add_output_heads(self, D: int, V: int, tie: bool, norm_bias: bool) -> None:
        """The parameters ``output_heads`` reads (names in OUTPUT_HEADS), shared by LM types:
        final LayerNorm, LM head (None when tied to ``wte``), message and salience heads."""
        Dm = self.cfg.message_dim
        self.lnf_w, self.lnf_b = self.stacked(D), self.stacked(D) if norm_bias else None
        self.head_w = None if tie else self.stacked(D, V)
        self.msg_w, self.msg_b = self.stacked(D, Dm), self.stacked(Dm)  # hidden -> message
        self.sal_w, self.sal_b = self.stacked(D), self.stacked(1)  # hidden -> salience


#: parameters created by ``Bank.add_output_heads`` and read by ``output_heads``
OUTPUT_HEADS = ("lnf_w", "lnf_b", "head_w", "msg_w", "msg_b", "sal_w", "sal_b")


# --------------------------------------------------------------------------- batched ops


def pick(p: Tensor | None, idx: Tensor | None) -> Tensor | None:
    """Rows ``idx`` of a stacked parameter (all rows when idx is None)."""
    if p is None or idx is None:
        return p
    return p.index_select(0, idx)


def bmm_linear(x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    """Per-module linear layer. x [M, ..., d_in], w [M, d_in, d_out], b [M, d_out] | None."""
    M, d_in = x.shape[0], x.shape[-1]
    x2 = x.reshape(M, -1, d_in)  # [M, N, d_in]
    y = torch.bmm(x2, w) if b is None else torch.baddbmm(b.unsqueeze(1), x2, w)
    return y.view(*x.shape[:-1], w.shape[-1])


def bank_layer_norm(x: Tensor, w: Tensor, b: Tensor | None, eps: float = 1e-5) -> Tensor:
    """Per-module LayerNorm over the last dim. x [M, ..., D], w / b [M, D]."""
    shape = (x.shape[0],) + (1,) * (x.dim() - 2) + (x.shape[-1],)
    y = F.layer_norm(x, x.shape[-1:], eps=eps) * w.view(shape)
    return y if b is None else y + b.view(shape)


def attend_with_memory(
    q: Tensor, k: Tensor, v: Tensor, km: Tensor, vm: Tensor, mask: Tensor | None, dropout_p: float
) -> Tensor:
    """Causal self-attention where each query also sees its own memory vectors.

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


def output_heads(x: Tensor, w: dict[str, Tensor | None]) -> BankOutput:
    """The heads every LM type shares: final LayerNorm, LM head (the token embedding ``wte``
    transposed when ``head_w`` is None), message and salience, all per position.

    x [M, B, T, D]; w holds lnf_w / lnf_b [M, D], wte [M, V, D], head_w [M, D, V] | None,
    msg_w [M, D, Dm], msg_b [M, Dm], sal_w [M, D], sal_b [M, 1].
    """
    x = bank_layer_norm(x, w["lnf_w"], w["lnf_b"])  # [M, B, T, D]
    head = w["wte"].transpose(1, 2) if w["head_w"] is None else w["head_w"]  # [M, D, V]
    logits = bmm_linear(x, head, None)  # [M, B, T, V]
    message = bmm_linear(x, w["msg_w"], w["msg_b"])  # [M, B, T, Dm]
    salience = bmm_linear(x, w["sal_w"].unsqueeze(-1), w["sal_b"]).squeeze(-1)  # [M, B, T]
    return BankOutput(logits, message, salience)


def module_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean next-token cross-entropy of each module.

    logits [M, B, T, V] (any float dtype; computed in fp32), targets [B, T] shared by all
    modules or [M, B, T] -> [M].
    """
    M, V = logits.shape[0], logits.shape[-1]
    targets = targets.expand(logits.shape[:-1])
    ce = F.cross_entropy(logits.reshape(-1, V).float(), targets.reshape(-1), reduction="none")
    return ce.view(M, -1).mean(1)
