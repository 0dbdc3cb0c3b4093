"""Consolidation: every K steps each module is pulled toward its EMA snapshot, its cluster
mates or the frozen modules of an earlier run (docs/learning.md).

One object holds what that needs across steps: the teacher, each bank's peer weights (built
once per layout) and the Warmup-Distill share of replaced tokens of the current step. The
modules are distilled alone (no memory): on the sequences the step's memory-free first pass
gave them (``Society.alone``: no second pass), or, when the step had no such pass, on a pass
of their own over the whole batch. Warmup-Distill always runs its own corrected pass.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from brainnet.config import Scenario
from brainnet.data import Batch, Corpus
from brainnet.learning.distill import (
    EMATeacher,
    distill_loss,
    kd_loss,
    peer_weights,
    warmup_correct,
)
from brainnet.learning.teacher import FrozenTeacher, Teacher
from brainnet.modules.bank import Bank, module_cross_entropy
from brainnet.society import Alone, Society, StepOut, Topology


class Consolidation:
    """Self-distillation of a society's modules (``distill:`` in a scenario)."""

    def __init__(self, sc: Scenario, society: Society, corpus: Corpus, device: torch.device):
        self.cfg = sc.distill
        self.seed = sc.seed
        self.society = society
        self.device = device
        self.teacher: Teacher | None = None
        cfg = self.cfg
        if cfg.enabled and cfg.teacher in ("ema", "both"):
            self.teacher = EMATeacher(list(society.banks), cfg.ema, sc.train.steps)
        elif cfg.enabled and cfg.teacher == "run":  # the frozen modules of an earlier run
            self.teacher = FrozenTeacher.load(cfg.teacher_run, corpus, device)
        self._peers: dict[int, Tensor] = {}  # [M, M] per bank; cleared on relayout
        self._replaced: list[Tensor] = []  # [M] per bank, this step's Warmup-Distill share

    def due(self, step: int) -> bool:
        """Whether optimiser step ``step`` (1-based) consolidates."""
        return self.cfg.due(step)

    def losses(self, batch: Batch, out: StepOut, step: int) -> tuple[Tensor, Tensor]:
        """The per-module distillation loss [N] (alpha·CE + (1-alpha)·T²·KL, or the T²·KL
        term alone in the closed loop) and the plain CE [N] of the distilled pass, for step
        ``out`` of ``batch`` at optimiser step ``step`` (0-based, before it)."""
        cfg = self.cfg
        alpha = cfg.alpha if cfg.labels else 0.0
        sharpen = cfg.temperature / (cfg.teacher_temperature or cfg.temperature)
        kds, ces = [], []
        for b, bank in enumerate(self.society.banks):
            alone = self.society.alone(out, batch, b)
            if alone is None or (cfg.warmup_correction.enabled and alone.rows is not None):
                # [M, B, T, V]: every module on the whole batch (its view of it)
                alone = _own_pass(bank, batch, self.society.module_inputs(b, batch))
            logits, tokens, targets, rows = alone.logits, alone.tokens, alone.targets, alone.rows
            if cfg.warmup_correction.enabled:  # the KL term on teacher-corrected samples
                kd = self._corrected_kd(b, bank, batch, sharpen, step)  # [M] (its own pass)
                ce = module_cross_entropy(logits, batch.y)
                kds.append(alpha * ce + (1 - alpha) * kd)
            else:
                teacher = peers = weights = None
                if self.teacher is not None:
                    with torch.no_grad():
                        teacher = self.teacher.logits(b, tokens) * sharpen
                if cfg.teacher in ("peers", "both"):  # the bank's own logits, each module's mates
                    peers, weights = logits.detach() * sharpen, self.mates(b)  # [M, M]
                kds.append(distill_loss(logits, targets, teacher, peers, alpha, cfg.temperature,
                                        peer_weights=weights, rows=rows))  # fmt: skip
            ces.append(module_cross_entropy(logits.detach(), targets, rows))
        return torch.cat(kds), torch.cat(ces)

    def replaced(self) -> dict[str, Tensor]:
        """This step's Warmup-Distill share of replaced tokens per module [N] (then cleared)."""
        if not self._replaced:
            return {}
        out = torch.cat(self._replaced)
        self._replaced = []
        return {"warmup_replaced": out}

    def relayout(self) -> None:
        """The society's layout changed: peer rows follow it (the EMA rows are resized with
        the banks, see ``Teacher.mirror``)."""
        self._peers.clear()

    def state_dict(self) -> dict[str, Any] | None:
        return None if self.teacher is None else self.teacher.state_dict()

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if self.teacher is not None:
            self.teacher.load_state_dict(state)

    # ------------------------------------------------------------------ internals

    def mates(self, b: int) -> Tensor:
        """Each module's peers in bank ``b`` as weights [M, M] (``peer_weights``): its cluster
        mates of the same type (independent modules: every other module)."""
        if b not in self._peers:
            index, mask = peer_rows(self.society.topology, b, self.device)
            self._peers[b] = peer_weights(index, mask, index.shape[0])
        return self._peers[b]

    def _corrected_kd(self, b: int, bank: Bank, batch: Batch, sharpen: float, step: int) -> Tensor:
        """Warmup-Distill: each module samples continuations of the batch's first ``prompt``
        tokens, the teacher replaces the tokens it finds unlikely, and the T²·KL to the
        teacher is taken on the corrected sequences -> [M]."""
        wc, teacher = self.cfg.warmup_correction, self.teacher
        assert teacher is not None
        full = torch.cat([batch.x, batch.y[:, -1:]], dim=1)  # [B, T+1]
        tokens = full.unsqueeze(0).expand(bank.n_modules, -1, -1).contiguous()  # [M, B, T+1]
        gen = torch.Generator(device=self.device).manual_seed(self.seed + 11 * step)
        with torch.no_grad():
            seq, replaced = warmup_correct(bank, teacher.scorer(b), tokens, wc.prompt,
                                           wc.threshold, wc.temperature, gen)  # fmt: skip
            t_logits = teacher.logits(b, seq[:, :, :-1]) * sharpen  # [M, B, T, V]
        self._replaced.append(replaced)
        s_logits = bank(seq[:, :, :-1]).logits  # [M, B, T, V]
        return kd_loss(s_logits, t_logits, self.cfg.temperature, per_module=True)


def _own_pass(bank: Bank, batch: Batch, tokens: Tensor) -> Alone:
    """tokens [M, B, T]: what each module reads of the batch."""
    return Alone(bank(tokens).logits, tokens, batch.y, None)


def peer_rows(topo: Topology, b: int, device: torch.device) -> tuple[Tensor, Tensor | None]:
    """[M, P] rows of every module's same-type cluster mates in bank ``b`` (increasing row),
    P = the largest cluster's share minus one; shorter lists are padded with the module's own
    row and masked ([M, P] bool, None when nothing is padded). Built on the host once per
    layout."""
    shares = [s[b] for s in topo.sizes]
    P = max(shares) - 1
    index, mask = [], []
    first = 0
    for n_b in shares:
        for i in range(first, first + n_b):
            mates = [j for j in range(first, first + n_b) if j != i]
            index.append(mates + [i] * (P - len(mates)))
            mask.append([True] * len(mates) + [False] * (P - len(mates)))
        first += n_b
    pad = any(not all(m) for m in mask)
    idx = torch.tensor(index, dtype=torch.long, device=device).view(len(index), P)
    return idx, (torch.tensor(mask, device=device).view(len(index), P) if pad else None)
