"""The check every bank type needs: its batched forward and gradients equal independent
single-module copies (``bank.export(m)``), for all modules or a subset. Module types written
by users can call it from their own tests. Also ``bank_layer_norm``, a per-module LayerNorm
the bank tests compare the fused library ops against."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

TOL = dict(atol=1e-5, rtol=1e-5)


def bank_layer_norm(x: Tensor, w: Tensor, b: Tensor | None, eps: float = 1e-5) -> Tensor:
    """Per-module LayerNorm over the last dim. x [M, ..., D], w / b [M, D]."""
    shape = (x.shape[0],) + (1,) * (x.dim() - 2) + (x.shape[-1],)
    y = F.layer_norm(x, x.shape[-1:], eps=eps) * w.view(shape)
    return y if b is None else y + b.view(shape)


def per_module_loss(logits, message, salience, y, proj):
    """A loss touching all three outputs, so every parameter gets a gradient."""
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
    return ce + (message * proj).sum() + salience.square().mean()


def assert_bank_matches_copies(
    bank, subset: list[int] | None, with_memory: bool, *, B: int = 3, P: int = 4,
    memory_params: tuple[str, ...] = ("mem_w", "mem_b"), empty_positions: bool = False,
) -> None:  # fmt: skip
    """fp32 forward and gradients of ``bank`` (rows ``subset`` or all) == ``bank.export(m)``;
    unselected rows get exactly zero gradient. ``memory_params`` get no gradient without
    memory; ``empty_positions`` leaves some positions with every memory slot masked."""
    V, T, DM = bank.vocab_size, bank.block_size, bank.cfg.message_dim
    ids = list(range(bank.n_modules)) if subset is None else subset
    idx = None if subset is None else torch.tensor(subset)
    M = len(ids)
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, V, (M, B, T), generator=g)
    y = torch.randint(0, V, (M, B, T), generator=g)
    memory = torch.randn(M, B, T, P, DM, generator=g) if with_memory else None
    mask = torch.rand(M, B, T, P, generator=g) > 0.3 if with_memory else None
    if with_memory and empty_positions:
        mask[:, 0, 2] = False
    proj = torch.randn(M, B, T, DM, generator=g)

    out = bank(tokens, memory, mask, idx=idx)
    assert out.logits.shape == (M, B, T, V)
    assert out.message.shape == (M, B, T, DM)
    assert out.salience.shape == (M, B, T)
    loss = sum(
        per_module_loss(out.logits[i], out.message[i], out.salience[i], y[i], proj[i])
        for i in range(M)
    )
    loss.backward()

    for i, m in enumerate(ids):
        ref = bank.export(m)
        r_logits, r_msg, r_sal = ref(
            tokens[i], None if memory is None else memory[i], None if mask is None else mask[i]
        )
        torch.testing.assert_close(out.logits[i], r_logits, **TOL)
        torch.testing.assert_close(out.message[i], r_msg, **TOL)
        torch.testing.assert_close(out.salience[i], r_sal, **TOL)
        per_module_loss(r_logits, r_msg, r_sal, y[i], proj[i]).backward()
        ref_grads = ref.bank_grads()
        assert set(ref_grads) == set(bank.param_names)
        for name in bank.param_names:
            p = getattr(bank, name)
            if p is None:
                assert ref_grads[name] is None
                continue
            if not with_memory and name in memory_params:
                assert p.grad is None or p.grad[m].abs().max() == 0
                continue
            assert torch.isfinite(p.grad).all(), name
            torch.testing.assert_close(p.grad[m], ref_grads[name], **TOL, msg=name)

    untouched = sorted(set(range(bank.n_modules)) - set(ids))
    for name, p in bank.named_parameters():
        if untouched and p.grad is not None:
            assert p.grad[untouched].abs().max() == 0, f"{name}: unselected module got a gradient"
