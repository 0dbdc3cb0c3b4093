"""Answer tokens: loss and accuracy where the target is an answer, per domain.

Random prompt letters are noise that hides the answer signal (a predictor can do no better than
uniform on them), so a comparison reads the answer tokens: the targets after an instance's
``=`` (``Batch.answer``). Sums and counts stay on the device; ``accounting.answers`` turns an
interval's means into columns.
"""

from __future__ import annotations

import torch
from torch import Tensor


def answer_stats(
    nll: Tensor, correct: Tensor, answer: Tensor, domain: Tensor, n_domains: int
) -> dict[str, Tensor]:
    """Per-domain answer sums from a prediction's token losses.

    nll, correct [..., B, T] (leading dims, e.g. modules, are averaged), answer [B, T] bool,
    domain [B] long -> ``answer_loss_sum``, ``answer_correct``, ``answer_count``, each [D]."""
    B, T = answer.shape
    a = answer.to(nll.dtype)  # [B, T]
    lead = nll.reshape(-1, B, T).shape[0]  # modules averaged (1 for the society's prediction)
    loss = (nll.reshape(-1, B, T) * a).sum((0, 2)) / lead  # [B]
    hits = (correct.reshape(-1, B, T).to(nll.dtype) * a).sum((0, 2)) / lead  # [B]
    zeros = torch.zeros(n_domains, device=nll.device, dtype=nll.dtype)
    return {
        "answer_loss_sum": zeros.scatter_add(0, domain, loss.detach()),
        "answer_correct": zeros.scatter_add(0, domain, hits),
        "answer_count": zeros.scatter_add(0, domain, a.sum(1)),
    }
