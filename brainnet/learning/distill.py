"""Distillation between modules: an EMA teacher per bank, KD / deep-mutual-learning losses and
the Warmup-Distill correction of student samples. Everything is batched over the module axis M.

Formulas (docs/learning.md has the derivations and references)::

    KD_T(s, t)   = T² · KL( softmax(t / T) ‖ softmax(s / T) )        batch-mean, per module
    loss_m       = α · CE(s_m, y) + (1 − α) · KD_m
    KD_m         = KD_T(s_m, teacher_m)                     teacher = "ema"
                 | mean_p KD_T(s_m, peer_{m,p})             teacher = "peers" (DML, detached)
                 | (KD_T(s_m, teacher_m) + mean_p ...) / 2  teacher = "both"
    EMA          θ_teacher ← θ_teacher + (1 − m_step) · (θ_student − θ_teacher)

Teacher and peer logits are always detached here: no gradient ever reaches a teacher, and in
deep mutual learning each module learns from its peers' predictions without pushing on them.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from brainnet.config import DistillConfig, EMAConfig, WarmupCorrectionConfig  # noqa: F401
from brainnet.modules.bank import Bank, module_cross_entropy, module_mean

# --------------------------------------------------------------------------- config


# --------------------------------------------------------------------------- losses


def kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float,
    per_module: bool = False,
    rows: Tensor | None = None,
) -> Tensor:
    """T² · KL(softmax(t/T) ‖ softmax(s/T)), averaged over every leading position.

    student_logits [M, ..., V]; teacher_logits broadcastable to it (detached here: no gradient
    ever reaches the teacher). Computed in fp32. Returns [M] (mean over all dims but the first
    and the last) when ``per_module``, else the scalar mean over all positions. rows [M, B]
    bool (per_module, logits [M, B, T, V]): only those sequences count.
    """
    T = float(temperature)
    log_s = F.log_softmax(student_logits.float() / T, dim=-1)  # [M, ..., V]
    log_t = F.log_softmax(teacher_logits.detach().float() / T, dim=-1)  # [M, ..., V]
    kl = (log_t.exp() * (log_t - log_s)).sum(-1)  # [M, ...]  KL per position
    kl = kl * (T * T)
    if per_module:
        return module_mean(kl, rows)  # [M]
    return kl.mean()


def mean_peer_kd(
    student_logits: Tensor,
    peer_logits: Tensor,
    weights: Tensor,
    temperature: float,
    rows: Tensor | None = None,
) -> Tensor:
    """Σ_j w[m, j] · KD_T(s_m, peer_j) for every module m, without forming the M × J pairs.

    student_logits [M, B, T, V]; peer_logits [J, B, T, V] (a pool, detached here: e.g. the same
    bank's logits); weights [M, J] (each row sums to 1 over m's peers, or 0 for a module without
    peers) -> [M].

    Per position, KL(p_j ‖ s_m) = Σ_v p_j log p_j − Σ_v p_j log s_m, so the weighted mean over
    peers is ``w @ negH − Σ_v (w @ p) log s_m``: one matmul mixes the peers' distributions and
    their negative entropies, instead of M·P KL terms over [M, P, B, T, V]. Equal to the mean of
    the pairwise ``kd_loss`` values up to fp32 rounding (tests/test_distill.py). rows [M, B]
    bool: only those sequences count (peers must have processed the same sequences).
    """
    T = float(temperature)
    M, J = weights.shape
    log_s = F.log_softmax(student_logits.float() / T, dim=-1)  # [M, B, T, V]
    log_t = F.log_softmax(peer_logits.detach().float() / T, dim=-1)  # [J, B, T, V]
    p = log_t.exp()
    neg_h = (p * log_t).sum(-1).view(J, -1)  # [J, B*T]
    w = weights.to(p.dtype)
    mix = (w @ p.view(J, -1)).view_as(log_s)  # [M, B, T, V] each module's mean peer
    kl = w @ neg_h - (mix * log_s).sum(-1).view(M, -1)  # [M, B*T]
    return module_mean(kl.view(log_s.shape[:-1]), rows) * (T * T)


def peer_weights(index: Tensor, mask: Tensor | None, n_pool: int) -> Tensor:
    """Peer lists as weights for ``mean_peer_kd``: index [M, P] long rows of a pool of
    ``n_pool``, mask [M, P] bool (False = padding) or None -> [M, n_pool], each row 1/P_m on
    m's P_m real peers (all zero for a module without peers)."""
    M, P = index.shape
    keep = torch.ones(M, P, device=index.device) if mask is None else mask.float()
    share = keep / keep.sum(1, keepdim=True).clamp(min=1)
    return torch.zeros(M, n_pool, device=index.device).scatter_add_(1, index, share)


def distill_loss(
    student_logits: Tensor,
    targets: Tensor,
    teacher_logits: Tensor | None = None,
    peer_logits: Tensor | None = None,
    alpha: float = 0.5,
    temperature: float = 2.0,
    peer_mask: Tensor | None = None,
    peer_weights: Tensor | None = None,
    rows: Tensor | None = None,
) -> Tensor:
    """Per-module distillation loss α·CE + (1 − α)·T²·KL, batch-mean -> [M].

    student_logits [M, B, T, V]; targets [B, T] (shared) or [M, B, T];
    teacher_logits [M, B, T, V] | None (e.g. the EMA teacher's);
    peers (deep mutual learning: the mean KL over a module's peers, peers detached), either
    peer_logits [M, P, B, T, V], P peers per module, with peer_mask [M, P] bool (clusters of
    different sizes: only real peers count) or None; or, with ``peer_weights`` [M, J], a pool
    peer_logits [J, B, T, V] and each module's weights over it (``peer_weights(...)``; the fast
    form, see ``mean_peer_kd``: no [M, P, B, T, V] tensor). With a teacher and peers the KL term
    is (teacher + mean over peers) / 2. A module without any real peer gets the teacher term
    alone, or the plain CE; with neither (or P = 0) the loss is the plain CE. rows [M, B] bool
    (pooled peers or none): only those sequences count, e.g. the rows a router filled.
    """
    if rows is not None and peer_logits is not None and peer_weights is None:
        raise ValueError("distill_loss: rows need pooled peers (peer_weights), not [M, P] peers")
    ce = module_cross_entropy(student_logits, targets, rows)  # [M]
    terms = []
    if teacher_logits is not None:
        terms.append(kd_loss(student_logits, teacher_logits, temperature, True, rows))
    has_peer = None
    if peer_logits is not None and peer_weights is not None:
        terms.append(mean_peer_kd(student_logits, peer_logits, peer_weights, temperature, rows))
        has_peer = peer_weights.sum(1) > 0  # [M]
    elif peer_logits is not None and peer_logits.shape[1] > 0 and peer_mask is None:
        # [M, 1, B, T, V] vs [M, P, B, T, V]: the per-module mean over (P, B, T) is the mean
        # over peers of each peer's batch-mean KL (every peer has B·T positions)
        terms.append(
            kd_loss(student_logits.unsqueeze(1), peer_logits, temperature, per_module=True)
        )
    elif peer_logits is not None and peer_logits.shape[1] > 0:
        M, P = peer_mask.shape
        per_peer = kd_loss(  # [M·P]: each (module, peer) pair's batch-mean KL
            student_logits.unsqueeze(1).expand_as(peer_logits).flatten(0, 1),
            peer_logits.flatten(0, 1),
            temperature,
            per_module=True,
        ).view(M, P)
        w = peer_mask.float()
        has_peer = peer_mask.any(1)  # [M]
        terms.append((per_peer * w).sum(1) / w.sum(1).clamp(min=1))
    if not terms:
        return ce
    kd = terms[0] if len(terms) == 1 else (terms[0] + terms[1]) / 2  # [M]
    if has_peer is not None:  # a module without peers: the teacher alone, or the plain CE
        alone = terms[0] if len(terms) == 2 else None
        kd = torch.where(has_peer, kd, alone if alone is not None else kd)
        loss = alpha * ce + (1.0 - alpha) * kd
        if alone is not None:
            return loss
        # peers only: no peer, no distillation term (closed loop: nothing to learn from)
        return torch.where(has_peer, loss, ce if alpha > 0 else torch.zeros_like(ce))
    return alpha * ce + (1.0 - alpha) * kd


# --------------------------------------------------------------------------- EMA teacher


def ema_momentum(step: int, cfg: EMAConfig, total_steps: int | None = None) -> float:
    """The EMA momentum at optimiser step ``step`` under ``cfg.schedule``.

    constant: m.  warmup (timm ModelEmaV3): min(m, 1 − (1 + step/γ)^−p), 0 at step 0.
    cosine (BYOL / DINO): 1 − (1 − m)·(cos(π·step/total) + 1)/2: m at 0, exactly 1 from total.
    ``total_steps`` is used when ``cfg.total_steps`` is None.
    """
    m = cfg.momentum
    if cfg.schedule == "constant":
        return m
    if cfg.schedule == "warmup":
        return min(m, 1.0 - (1.0 + max(step, 0) / cfg.warmup_gamma) ** -cfg.warmup_power)
    total = cfg.total_steps or total_steps
    if total is None:
        raise ValueError("ema.schedule 'cosine' needs ema.total_steps or the run's step count")
    ratio = min(max(step, 0), total) / total
    return 1.0 - (1.0 - m) * (math.cos(math.pi * ratio) + 1.0) / 2.0


class EMATeacher:
    """An exponential-moving-average copy of every bank (mean teacher / BYOL / DINO target).

    Holds ``copy.deepcopy`` of each student bank in eval mode with ``requires_grad_(False)``:
    the teacher never receives gradients and is not an nn.Module attribute of anything, so no
    optimiser sees it. ``update(step)`` is ONE ``torch._foreach_lerp_`` over all stacked
    tensors of all banks: teacher ← teacher + (1 − m)·(student − teacher).
    ``banks[b]`` mirrors student bank b row for row, so it follows a reorganisation
    (``mirror``; a ``FrozenTeacher`` from another run does not).
    """

    def __init__(
        self, banks: Sequence[Bank], cfg: EMAConfig | None = None, total_steps: int | None = None
    ) -> None:
        self.cfg = cfg or EMAConfig()
        self.total_steps = total_steps
        self.students = list(banks)
        self.banks: list[Bank] = []
        for bank in self.students:
            teacher = copy.deepcopy(bank)
            teacher.requires_grad_(False)
            teacher.eval()
            self.banks.append(teacher)
        self.last_momentum: float | None = None

    def mirror(self, bank_index: int) -> Bank:
        """The teacher bank that mirrors student bank ``bank_index`` row for row (a
        reorganisation resizes it with the students)."""
        return self.banks[bank_index]

    def scorer(self, bank_index: int) -> Bank:
        """What Warmup-Distill scores student samples with: the teacher's own bank."""
        return self.banks[bank_index]

    def momentum(self, step: int) -> float:
        return ema_momentum(step, self.cfg, self.total_steps)

    def _pairs(self) -> tuple[list[Tensor], list[Tensor]]:
        t = [p for bank in self.banks for p in bank.parameters()]
        s = [p.detach() for bank in self.students for p in bank.parameters()]
        if len(t) != len(s) or any(a.shape != b.shape for a, b in zip(t, s, strict=True)):
            raise ValueError(
                "EMA teacher and student banks no longer match (reorganised? use select_rows)"
            )
        return t, s

    @torch.no_grad()
    def update(self, step: int) -> float:
        """One EMA step at momentum m(step) over every stacked tensor; returns m."""
        m = self.momentum(step)
        t, s = self._pairs()
        if hasattr(torch, "_foreach_lerp_"):
            torch._foreach_lerp_(t, s, 1.0 - m)
        else:  # pragma: no cover - torch without foreach lerp
            for a, b in zip(t, s, strict=True):
                a.lerp_(b, 1.0 - m)
        self.last_momentum = m
        return m

    @torch.no_grad()
    def logits(
        self,
        bank_index: int,
        tokens: Tensor,
        memory: Tensor | None = None,
        memory_mask: Tensor | None = None,
        idx: Tensor | None = None,
    ) -> Tensor:
        """The teacher bank's logits [M', B, T, V] (no graph) for tokens [M', B, T]."""
        return self.banks[bank_index](tokens, memory, memory_mask, idx=idx).logits

    @torch.no_grad()
    def select_rows(self, bank_index: int, rows: Tensor) -> None:
        """Reorder / gather the teacher's modules of one bank in place: row i ← row rows[i].

        Follows a reorganisation of the student bank (``p.data = p.data[rows]``).
        """
        for p in self.banks[bank_index].parameters():
            p.data = p.data.index_select(0, rows.to(p.device))

    def state_dict(self) -> dict[str, Any]:
        return {"banks": [bank.state_dict() for bank in self.banks]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["banks"]) != len(self.banks):
            raise ValueError(
                f"EMA state has {len(state['banks'])} banks, the teacher {len(self.banks)}"
            )
        for bank, sd in zip(self.banks, state["banks"], strict=True):
            bank.load_state_dict(sd)


# --------------------------------------------------------------------------- Warmup-Distill


@torch.no_grad()
def warmup_correct(
    student: Bank,
    teacher: Bank | Callable[[Tensor], Tensor],
    tokens: Tensor,
    prompt: int,
    threshold: float,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    idx: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Warmup-Distill (arXiv 2502.11766): teacher-corrected student samples.

    ``teacher``: a bank like the student's (the EMA teacher), or any function tokens
    [M, B, t] -> logits [M, B, t, V] (e.g. a frozen teacher from another run).
    tokens [M, B, T] long (modules ``idx`` of both banks, all when None). The first ``prompt``
    tokens are kept. The student samples positions prompt..T−1 autoregressively (one batched
    bank call per position on the growing prefix, ``torch.multinomial`` over [M·B, V] at
    ``temperature``). The teacher then scores the whole student sample in ONE call: wherever
    the teacher's probability (at temperature 1) of the sampled token is < ``threshold``, the
    token is replaced by one sampled from the teacher at that position (at ``temperature``).

    Approximation (the paper's one-pass "checker"): the teacher's distribution at position t
    conditions on the student's uncorrected prefix, and later student tokens are not
    re-sampled after an earlier replacement; the corrected sequence is therefore a per-token
    repair of the student's sample, not a fresh sample from a student-teacher mixture.

    The last token is never fed to either model, so ``tokens`` may be block_size + 1 long
    (x with y's last token appended); distil on corrected[..., :-1] -> corrected[..., 1:].
    Both banks run in eval mode (training flags restored). Returns (corrected [M, B, T] long,
    replaced_fraction [M]: share of the B·(T − prompt) generated tokens that were replaced).
    """
    M, B, T = tokens.shape
    if prompt < 1:
        raise ValueError(f"prompt must be >= 1, got {prompt}")
    seq = tokens.clone()
    replaced = torch.zeros(M, device=tokens.device)
    if prompt >= T:
        return seq, replaced
    if isinstance(teacher, nn.Module):
        bank = teacher

        def score(x: Tensor) -> Tensor:
            return bank(x, idx=idx).logits

        restore = [student, bank]
    else:
        score, restore = teacher, [student]
    modes = [m.training for m in restore]
    for m in restore:
        m.eval()
    try:
        for t in range(prompt, T):  # over positions, never over modules
            logits = student(seq[:, :, :t], idx=idx).logits[:, :, -1]  # [M, B, V]
            V = logits.shape[-1]
            probs = F.softmax(logits.float() / temperature, dim=-1).view(M * B, V)
            seq[:, :, t] = torch.multinomial(probs, 1, generator=generator).view(M, B)
        t_logits = score(seq[:, :, :-1])[:, :, prompt - 1 :]  # [M, B, G, V]
    finally:
        for m, mode in zip(restore, modes, strict=True):
            m.train(mode)
    G, V = T - prompt, t_logits.shape[-1]
    sampled = seq[:, :, prompt:]  # [M, B, G]
    p_sampled = F.softmax(t_logits.float(), dim=-1).gather(-1, sampled.unsqueeze(-1))[..., 0]
    low = p_sampled < threshold  # [M, B, G]
    t_probs = F.softmax(t_logits.float() / temperature, dim=-1).reshape(M * B * G, V)
    t_sample = torch.multinomial(t_probs, 1, generator=generator).view(M, B, G)
    seq[:, :, prompt:] = torch.where(low, t_sample, sampled)
    return seq, low.float().reshape(M, -1).mean(1)
