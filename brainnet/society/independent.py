"""Independent modules: the degenerate society (``topology: independent``, or ``society: null``).

Every module reads the whole batch alone, no messages, and learns from its own loss::

    tokens [B, T] ──expand──▶ [M, B, T] per bank ──▶ logits [M, B, T, V] ──▶ CE [M]

The objective sums the module CEs (``StepOut.module_terms`` [N]), so each module's gradient is
that of its own mean loss whatever N is; the task loss is their mean.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from brainnet.data import Batch
from brainnet.modules.bank import Bank, module_cross_entropy
from brainnet.society.output import StepOut


def independent_step(
    banks: Sequence[Bank], batch: Batch, tokens: Sequence[Tensor] | None = None
) -> StepOut:
    """One call per bank (module TYPE): all its modules on the whole batch at once.
    ``tokens``: what each bank's modules read, [M, B, T] per bank (sensory views); None =
    the batch itself."""
    ce, logits = [], []
    for b, bank in enumerate(banks):
        if tokens is None:
            x = batch.x.unsqueeze(0).expand(bank.n_modules, -1, -1)  # [M, B, T]
        else:
            x = tokens[b]
        z = bank(x).logits  # [M, B, T, V]
        logits.append(z)
        ce.append(module_cross_entropy(z, batch.y, weight=batch.weight))  # [M]
    module_ce = torch.cat(ce)  # [N]
    return StepOut(
        task_loss=module_ce.mean(),
        module_terms=module_ce,
        module_loss=module_ce.detach(),
        merged=False,
        first_logits=logits,
    )
