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

Helpers for fast CPU passes (see tiny_lm.py): ``row_pieces`` (per-chunk / per-layer views of a
parameter whose gradients go back through one copy), ``fold_layer_norm`` (a LayerNorm's affine
moved into the next linear layer), ``norm_linear_parts`` (q, k, v from one matmul),
``residual_linear`` (residual add inside the matmul). Reading memory: memory.py.
"""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from brainnet.config import ModuleConfig
from brainnet.registry import MODULE_TYPES, RegistryError, where


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


class _RowPieces(torch.autograd.Function):
    """Views of consecutive row blocks (and, when layered, of each layer) of one parameter;
    the backward writes all their gradients into ONE new tensor (zeros where a piece got none)."""

    @staticmethod
    def forward(ctx: Any, p: Tensor, sizes: tuple[int, ...], layered: bool) -> tuple[Tensor, ...]:
        ctx.set_materialize_grads(False)
        ctx.shape, ctx.sizes, ctx.layered = p.shape, sizes, layered
        out = []
        for rows in p.split(list(sizes)):
            out.extend(rows.unbind(1) if layered else (rows,))
        return tuple(out)

    @staticmethod
    def backward(ctx: Any, *grads: Tensor | None) -> tuple[Tensor | None, None, None]:
        ref = next((g for g in grads if g is not None), None)
        if ref is None:
            return None, None, None
        out = ref.new_empty(ctx.shape)
        pieces = []
        for rows in out.split(list(ctx.sizes)):
            pieces.extend(rows.unbind(1) if ctx.layered else (rows,))
        for dst, g in zip(pieces, grads, strict=True):
            dst.zero_() if g is None else dst.copy_(g)
        return out, None, None


def row_pieces(p: Tensor, sizes: list[int], layered: bool) -> list[Tensor | tuple[Tensor, ...]]:
    """``p`` [M, ...] cut into row blocks of ``sizes`` (summing to M): a list of [c, ...] views,
    or, when ``layered`` (p [M, L, ...]), a list of L-tuples of [c, ...] views, one per layer.

    Equal to ``p.split(sizes)`` (then ``unbind(1)``), but the gradients of all pieces go back
    through one copy into one tensor, instead of a stack per block and a cat of the blocks."""
    if len(sizes) == 1 and not layered:
        return [p]
    flat = _RowPieces.apply(p, tuple(sizes), layered)
    if not layered:
        return list(flat)
    L = p.shape[1]
    return [flat[i * L : (i + 1) * L] for i in range(len(sizes))]


def bmm_linear(x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    """Per-module linear layer. x [M, ..., d_in], w [M, d_in, d_out], b [M, d_out] | None."""
    M, d_in = x.shape[0], x.shape[-1]
    y = torch.bmm(x.reshape(M, -1, d_in), w)  # [M, N, d_out]
    if b is not None:  # in place: baddbmm's backward would copy the whole output gradient
        y = y.add_(b.unsqueeze(1))
    return y.view(*x.shape[:-1], w.shape[-1])


def residual_linear(
    x: Tensor, h: Tensor, w: Tensor, b: Tensor | None, dropout: float = 0.0, train: bool = False
) -> Tensor:
    """``x + dropout(bmm_linear(h, w, b))``. x [M, ..., d_out], h [M, ..., d_in], w [M, d_in,
    d_out]. On the CPU without dropout or autocast the residual add rides in the matmul
    (``baddbmm(x + b, h, w)``); elsewhere the plain sum (under autocast it keeps the residual
    stream in fp32, as baddbmm would not)."""
    if (dropout > 0 and train) or _plain(x):
        return x + F.dropout(bmm_linear(h, w, b), dropout, train)
    M = x.shape[0]
    base = x if b is None else x + b.view(M, *([1] * (x.dim() - 2)), -1)
    y = torch.baddbmm(base.reshape(M, -1, x.shape[-1]), h.reshape(M, -1, h.shape[-1]), w)
    return y.view(x.shape)


def norm_linear(x: Tensor, w: Tensor, b: Tensor | None, eps: float = 1e-5) -> Tensor:
    """Per-module ``F.layer_norm(x) @ w + b`` (LayerNorm without affine: fold it into w, b with
    ``fold_layer_norm``). x [M, ..., D], w [M, D, d_out], b [M, d_out] | None."""
    return bmm_linear(F.layer_norm(x, x.shape[-1:], eps=eps), w, b)


def norm_linear_parts(
    x: Tensor, w: Tensor, b: Tensor | None, parts: int, eps: float = 1e-5
) -> tuple[Tensor, ...]:
    """``norm_linear`` with its output columns cut into ``parts`` equal tensors (attention's
    q, k, v): one matmul, the parts are views of its output."""
    return norm_linear(x, w, b, eps).chunk(parts, -1)


def _plain(x: Tensor) -> bool:
    """Use the generic path (not the CPU-specific one): off the CPU (a GPU wants one big
    matmul and the ordinary graph) or under autocast (the CPU functions assume one dtype)."""
    return x.device.type != "cpu" or torch.is_autocast_enabled(x.device.type)


def fold_layer_norm(
    ln_w: Tensor, ln_b: Tensor | None, w: Tensor, b: Tensor | None
) -> tuple[Tensor, Tensor | None]:
    """A LayerNorm's affine folded into the linear layer that reads it.

    ``(F.layer_norm(x) * ln_w + ln_b) @ w + b == F.layer_norm(x) @ w' + b'`` with
    ``w' = ln_w[:, :, None] * w`` and ``b' = b + ln_b @ w``: the per-module scale and shift then
    cost a pass over the weights [M, D, d_out] instead of two over the activations [M, N, D].
    ln_w / ln_b [M, D], w [M, D, d_out], b [M, d_out] | None -> (w' [M, D, d_out], b' | None);
    any leading dims in place of M (e.g. [M, L] for all layers at once).
    """
    w2 = ln_w.unsqueeze(-1) * w
    if ln_b is None:
        return w2, b
    shift = torch.matmul(ln_b.unsqueeze(-2), w).squeeze(-2)  # [M, d_out]
    return w2, shift if b is None else b + shift


def output_heads(x: Tensor, w: dict[str, Tensor | None]) -> BankOutput:
    """The heads every LM type shares: final LayerNorm, LM head (the token embedding ``wte``
    transposed when ``head_w`` is None), message and salience, all per position.

    x [M, B, T, D]; w holds lnf_w / lnf_b [M, D], wte [M, V, D], head_w [M, D, V] | None,
    msg_w [M, D, Dm], msg_b [M, Dm], sal_w [M, D], sal_b [M, 1].
    """
    return folded_heads(x, fold_heads(w))


#: the keys of ``fold_heads``: weight and bias of the LM head, the message and the salience
HEAD_KEYS = ("head_w", "head_b", "msg_w", "msg_b", "sal_w", "sal_b")


def fold_heads(w: dict[str, Tensor | None]) -> dict[str, Tensor | None]:
    """The output heads with the final LayerNorm's affine folded in (``fold_layer_norm``), keys
    ``HEAD_KEYS``: head_w [M, D, V], msg_w [M, D, Dm], sal_w [M, D, 1] and their biases [M, ...]
    (head_b None without a final-LN bias). Parameters as for ``output_heads``."""
    g, beta = w["lnf_w"], w["lnf_b"]
    head = w["wte"].transpose(1, 2) if w["head_w"] is None else w["head_w"]  # [M, D, V]
    out: dict[str, Tensor | None] = {}
    out["head_w"], out["head_b"] = fold_layer_norm(g, beta, head, None)
    out["msg_w"], out["msg_b"] = fold_layer_norm(g, beta, w["msg_w"], w["msg_b"])
    out["sal_w"], out["sal_b"] = fold_layer_norm(g, beta, w["sal_w"].unsqueeze(-1), w["sal_b"])
    return out


def folded_heads(x: Tensor, h: dict[str, Tensor | None]) -> BankOutput:
    """Logits, message and salience of x [M, B, T, D] (before the final LayerNorm) with the
    heads ``h`` of ``fold_heads``."""
    x = F.layer_norm(x, x.shape[-1:])  # [M, B, T, D], affine folded into the heads
    logits = bmm_linear(x, h["head_w"], h["head_b"])  # [M, B, T, V]
    message = bmm_linear(x, h["msg_w"], h["msg_b"])  # [M, B, T, Dm]
    salience = bmm_linear(x, h["sal_w"], h["sal_b"]).squeeze(-1)  # [M, B, T]
    return BankOutput(logits, message, salience)


def module_cross_entropy(
    logits: Tensor, targets: Tensor, rows: Tensor | None = None, weight: Tensor | None = None
) -> Tensor:
    """Mean next-token cross-entropy of each module.

    logits [M, B, T, V] (any float dtype; computed in fp32), targets [B, T] shared by all
    modules or [M, B, T]; rows [M, B] bool | None: the sequences that count (e.g. not a router's
    padding rows); weight [B, T] | None: each target's weight, mean 1 (``Batch.weight``) -> [M].
    """
    V = logits.shape[-1]
    targets = targets.expand(logits.shape[:-1])
    ce = F.cross_entropy(logits.reshape(-1, V).float(), targets.reshape(-1), reduction="none")
    ce = ce.view(logits.shape[:-1])  # [M, B, T]
    return module_mean(ce if weight is None else ce * weight, rows)


def module_mean(x: Tensor, rows: Tensor | None = None) -> Tensor:
    """Per-module mean of x [M, B, ...] over everything but the module axis; with rows [M, B]
    bool only over the rows that are True (0 for a module without any) -> [M]."""
    M = x.shape[0]
    if rows is None:
        return x.reshape(M, -1).mean(1)
    w = rows.to(x.dtype)
    return (x.reshape(*rows.shape, -1).mean(2) * w).sum(1) / w.sum(1).clamp(min=1)


def check_module_type(name: str, obj: Any) -> None:
    """What a module type must be to register: a Bank subclass whose ``Config`` subclasses
    ModuleConfig with ``type`` defaulting to the registered name (plugins are checked too)."""
    if not (isinstance(obj, type) and issubclass(obj, Bank)):
        raise RegistryError(
            f"module type {name!r}: {where(obj)} must be a subclass of brainnet.Bank"
        )
    cfg = getattr(obj, "Config", None)
    if not (isinstance(cfg, type) and issubclass(cfg, ModuleConfig)):
        raise RegistryError(
            f"module type {name!r}: {where(obj)}.Config must subclass brainnet.ModuleConfig"
        )
    declared = cfg.model_fields["type"].default
    if declared != name:
        raise RegistryError(
            f"module type {name!r}: {where(cfg)}.type defaults to {declared!r}; "
            f"it must be {name!r} (the registered name)"
        )


# every module type's file imports this one, so the check is in place before any registers
MODULE_TYPES.check = check_module_type
