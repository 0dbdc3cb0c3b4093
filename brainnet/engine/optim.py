"""Optimiser, learning-rate schedule and per-module gradient clipping for stacked banks."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from brainnet.config import TrainConfig
from brainnet.modules.bank import Bank


def param_groups(params: Iterable[nn.Parameter], weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups of ordinary (unstacked) parameters: decay on matrices (dim >= 2), none on
    vectors (biases, norms); nanoGPT's rule. Either group may be empty."""
    ps = list(params)
    return [
        {"params": [p for p in ps if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in ps if p.dim() < 2], "weight_decay": 0.0},
    ]


def build_optimizer(
    banks: list[Bank],
    cfg: TrainConfig,
    device: torch.device,
    extra: list[nn.Module] | tuple[nn.Module, ...] = (),
) -> torch.optim.AdamW:
    """One AdamW over every bank's stacked parameters (and ``extra`` modules, e.g. the router):
    fused (one pass over each tensor) on CUDA and on the CPU; foreach elsewhere.

    Decay applies to matrices only. Because each module's rows are separate elements of the
    stacked tensors, AdamW's element-wise update is exactly a per-module AdamW. On the CPU the
    fused step is about 4x faster than foreach on bank-sized tensors (foreach makes several
    passes, each through bank-sized temporaries).
    """
    groups = [g for bank in banks for g in bank.param_groups(cfg.weight_decay) if g["params"]]
    for mod in extra:
        groups += param_groups(mod.parameters(), cfg.weight_decay)
    groups = [g for g in groups if g["params"]]
    fused = device.type in ("cuda", "cpu")
    return torch.optim.AdamW(
        groups, lr=cfg.lr, betas=cfg.betas, fused=fused or None, foreach=None if fused else True
    )


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to ``lr`` over ``warmup_steps``, then cosine to ``min_lr`` at ``steps``
    (nanoGPT's schedule with lr_decay_iters = steps)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / (cfg.warmup_steps + 1)
    span = max(1, cfg.steps - cfg.warmup_steps)
    ratio = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (cfg.lr - cfg.min_lr)


@torch.no_grad()
def clip_per_module(bank: Bank, max_norm: float) -> Tensor:
    """Clip each module's gradient to ``max_norm`` on its own (a global clip would couple modules).

    Returns the per-module gradient norms before clipping, [M] (no host sync).
    """
    grads = [p.grad for p in bank.parameters() if p.grad is not None]
    M = bank.n_modules
    if not grads:
        return torch.zeros(M, device=next(bank.parameters()).device)
    # one reduction pass per gradient, accumulated in fp32, no squared temporary
    per_grad = [
        torch.linalg.vector_norm(g.reshape(M, -1), dim=1, dtype=torch.float32) for g in grads
    ]
    norms = torch.linalg.vector_norm(torch.stack(per_grad), dim=0)  # [M]
    if max_norm > 0:
        scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)  # [M]
        for g in grads:
            g.mul_(scale.view(M, *([1] * (g.dim() - 1))).to(g.dtype))
    return norms


@torch.no_grad()
def clip_module(module: nn.Module, max_norm: float) -> None:
    """Ordinary global-norm clip of one non-bank module (the router); 0 disables."""
    if max_norm > 0:
        torch.nn.utils.clip_grad_norm_(module.parameters(), max_norm, foreach=True)
