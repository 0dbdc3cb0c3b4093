"""Resizing the module axis: grow, shrink and reorder a bank's (or the router's) rows in place.

Every reorganisation action (split / merge a cluster, spawn a module, prune one, rewire) comes
down to a new layout of each bank's module axis, a ``RowPlan``: new row i is old row
``source[i]`` (a survivor, possibly moved) or, when ``source[i] == -1``, a NEW module copied
from old row ``parent[i]`` with a little noise. ``resize_bank`` applies a plan to a bank at a
log boundary (between optimiser steps) and keeps everything that belongs to the surviving
modules EXACTLY::

    θ_new[i]  = θ_old[source[i]]                                       survivor (bit-exact)
              = θ_old[parent[i]] + noise · std(θ_old[parent[i]]) · ε   new module, ε ~ N(0, 1)
    m_new[i]  = m_old[source[i]]   |  0                                AdamW exp_avg, exp_avg_sq,
                                                                       max_exp_avg_sq
    step      unchanged                                                (per tensor in AdamW)
    θ̄_new[i]  = θ̄_old[source[i]]   |  θ_new[i]                         EMA teacher

``std`` is the population standard deviation over all elements of the parent's row of that
parameter (all layers of a layer-stacked [M, L, ...] tensor), so LayerNorm weights and biases
that are still constant get no noise. Every gather is one ``index_select`` with an index tensor
on the parameter's device (no loop over modules; a loop over the parameter names).

Known limitations:

* AdamW's ``step`` is one counter per *tensor*, not per module: new rows start with zero
  moments but inherit the tensor's step, so they get no bias-correction warm-up. Their first
  update is ``lr · (1 − β1) g / sqrt((1 − β2) g²)`` ≈ ``lr · sign(g) · (1 − β1)/sqrt(1 − β2)``
  (exactly ``lr · sign(g)`` for betas (0.9, 0.99), about 3.2× that for (0.9, 0.999)) instead of
  Adam's bias-corrected ``lr · sign(g)``; the moments then warm up at the usual EMA rate.
* Gradients are not carried over (the new parameters have ``grad`` None): resize between an
  optimiser step and the next backward.
* Anything outside the bank, the optimiser and the teacher bank that holds references to the
  old Parameter objects or to the module count (e.g. a cached parameter list, the scenario's
  own config object, a router sized by M) must be updated by the caller; ``module_rows`` gives
  the row mapping that ``CollapseMonitor.select_rows`` and ``EmergenceTracker.select_rows``
  follow.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from brainnet.modules.bank import Bank


@dataclass(frozen=True)
class RowPlan:
    """New layout of one bank: row i of the new bank comes from old row ``source[i]``
    (a survivor, possibly moved), or is a NEW module copied from old row ``parent[i]`` with noise.

    ``source`` has length M_new; -1 marks a new module. ``parent`` has length M_new; for new rows
    it is the old row to copy (>= 0), for survivors it is ignored. ``n_old`` (optional) is the
    old module count: when given, indices are range-checked here already; ``resize_bank``
    always checks them against the bank.
    """

    source: list[int]
    parent: list[int]
    n_old: int | None = None

    def __post_init__(self) -> None:
        src, par = list(self.source), list(self.parent)
        if len(src) != len(par):
            raise ValueError(
                f"RowPlan: source has {len(src)} entries but parent has {len(par)}; "
                "both need one entry per row of the new bank"
            )
        if not src:
            raise ValueError("RowPlan: the new bank must keep or create at least one module")
        if self.n_old is not None and self.n_old < 1:
            raise ValueError(f"RowPlan: n_old = {self.n_old}, must be >= 1")
        bad = [s for s in src if s < -1]
        if bad:
            raise ValueError(f"RowPlan: source entries must be >= 0 (survivor) or -1 (new): {bad}")
        kept = [s for s in src if s >= 0]
        dup = sorted({s for s in kept if kept.count(s) > 1})
        if dup:
            raise ValueError(
                f"RowPlan: old rows {dup} appear more than once in source; a survivor keeps "
                "one row (copy a module with a new row, source -1 and parent = that row)"
            )
        bad_par = [(i, p) for i, (s, p) in enumerate(zip(src, par, strict=True)) if s < 0 and p < 0]
        if bad_par:
            raise ValueError(f"RowPlan: new rows need a parent >= 0; (row, parent) = {bad_par}")
        if self.n_old is not None:
            self.check(self.n_old)

    def check(self, n_old: int) -> None:
        """Raise ValueError unless every index fits a bank of ``n_old`` modules."""
        src_out = [s for s in self.source if s >= n_old]
        if src_out:
            raise ValueError(
                f"RowPlan: source rows {src_out} out of range for a bank of {n_old} modules"
            )
        par_out = [
            (i, p)
            for i, (s, p) in enumerate(zip(self.source, self.parent, strict=True))
            if s < 0 and p >= n_old
        ]
        if par_out:
            raise ValueError(
                f"RowPlan: parents out of range for a bank of {n_old} modules; "
                f"(row, parent) = {par_out}"
            )

    @property
    def n_new(self) -> int:
        """Rows of the new bank."""
        return len(self.source)

    @property
    def new_rows(self) -> list[int]:
        """Positions (in the new bank) of the new modules."""
        return [i for i, s in enumerate(self.source) if s < 0]

    @property
    def survivors(self) -> list[int]:
        """Positions (in the new bank) of the surviving modules."""
        return [i for i, s in enumerate(self.source) if s >= 0]


def keep(rows: list[int], n_old: int | None = None) -> RowPlan:
    """Prune / reorder: new row i is old row ``rows[i]``; old rows not listed are dropped."""
    rows = [int(r) for r in rows]
    return RowPlan(source=rows, parent=[-1] * len(rows), n_old=n_old)


def spawn(M: int, parents: list[int]) -> RowPlan:
    """All M old rows in place, then one new row per entry of ``parents`` (a noisy copy)."""
    parents = [int(p) for p in parents]
    return RowPlan(source=list(range(M)) + [-1] * len(parents), parent=[-1] * M + parents, n_old=M)


def module_rows(plan: RowPlan, device: torch.device | str | None = None) -> Tensor:
    """[M_new] long: the old row of every new row, -1 for new modules. The convention of
    ``CollapseMonitor.select_rows``, ``EmergenceTracker.select_rows`` (and, without -1 entries,
    ``EMATeacher.select_rows``)."""
    return torch.tensor(plan.source, dtype=torch.long, device=device)


# --------------------------------------------------------------------------- resize


class _Index:
    """The plan's index tensors on one device (built once per device)."""

    def __init__(self, plan: RowPlan, device: torch.device) -> None:
        src = torch.tensor(plan.source, dtype=torch.long, device=device)
        par = torch.tensor(plan.parent, dtype=torch.long, device=device)
        self.is_new = src < 0  # [M_new]
        self.take = torch.where(self.is_new, par, src)  # [M_new] old row feeding each new row
        self.new_pos = torch.tensor(plan.new_rows, dtype=torch.long, device=device)  # [K]
        self.n_new = len(plan.new_rows)


def _indices(plan: RowPlan) -> Callable[[torch.device], _Index]:
    cache: dict[torch.device, _Index] = {}

    def get(device: torch.device) -> _Index:
        if device not in cache:
            cache[device] = _Index(plan, device)
        return cache[device]

    return get


def _gather_param(
    old: Tensor, ix: _Index, noise: float, generator: torch.Generator | None
) -> Tensor:
    """old [M, ...] -> [M_new, ...]: survivors exact, new rows parent + noise·std·N(0, 1)."""
    new = old.index_select(0, ix.take)  # [M_new, ...] survivors and exact copies of parents
    if ix.n_new and noise != 0.0:
        rows = new.index_select(0, ix.new_pos).float()  # [K, ...] the parents' rows
        std = rows.reshape(len(rows), -1).std(1, correction=0)  # [K] population std per row
        gen_device = generator.device if generator is not None else old.device
        eps = torch.randn(rows.shape, generator=generator, device=gen_device).to(old.device)
        scale = (noise * std).view(-1, *([1] * (rows.dim() - 1)))  # [K, 1, ...]
        new.index_copy_(0, ix.new_pos, (rows + scale * eps).to(old.dtype))
    return new


def _gather_state(old: Tensor, ix: _Index) -> Tensor:
    """Per-element optimiser state [M, ...] -> [M_new, ...]: survivors exact, new rows 0."""
    new = old.index_select(0, ix.take)
    if ix.n_new:
        new.index_fill_(0, ix.new_pos, 0)
    return new


def _teacher_rows(old: Tensor, student_new: Tensor, ix: _Index) -> Tensor:
    """Teacher [M, ...] -> [M_new, ...]: survivors' teacher rows, new rows = the new student."""
    new = old.index_select(0, ix.take)
    if ix.n_new:
        fresh = student_new.index_select(0, ix.new_pos).to(device=new.device, dtype=new.dtype)
        new.index_copy_(0, ix.new_pos, fresh)
    return new


def _stacked_names(bank: Bank) -> list[str]:
    names = getattr(bank, "param_names", None)
    if names is None:
        names = [n for n, _ in bank.named_parameters()]
    return [n for n in names if getattr(bank, n, None) is not None]


@torch.no_grad()
def resize_bank(
    bank: Bank,
    plan: RowPlan,
    optimizer: torch.optim.Optimizer,
    *,
    noise: float = 0.01,
    generator: torch.Generator | None = None,
    teacher_bank: Bank | None = None,
) -> None:
    """Apply ``plan`` to ``bank`` in place, with its AdamW state and its EMA teacher copy.

    Every stacked parameter (``bank.param_names``, None skipped) becomes a NEW ``nn.Parameter``
    of shape [M_new, ...] (same dtype, device, requires_grad): survivors' rows copied exactly,
    new rows ``parent + noise · std(parent row) · N(0, 1)`` (``generator`` draws ε; an exact
    copy when ``noise == 0``). In ``optimizer`` the new Parameter takes the old one's place in
    its param group and its state: per-element tensors with the parameter's shape
    (``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``) are gathered (survivors exact, new rows
    zero), other entries (``step``) kept as they are; a parameter without state gets none.
    ``teacher_bank`` (the EMA teacher's copy, same layout) is gathered the same way, its new
    rows set to the new student rows. ``bank.cfg.count`` (and the teacher's) become M_new.

    All checks happen before anything is changed: on ValueError the bank, optimiser and teacher
    are untouched. See the module docstring for the limitations (per-tensor ``step``).
    """
    plan.check(bank.n_modules)
    _resize(bank, _stacked_names(bank), plan, optimizer, noise, generator, teacher_bank)
    bank.cfg = bank.cfg.model_copy(update={"count": plan.n_new})
    if teacher_bank is not None:
        teacher_bank.cfg = teacher_bank.cfg.model_copy(update={"count": plan.n_new})


def _resize(
    bank: nn.Module,
    names: list[str],
    plan: RowPlan,
    optimizer: torch.optim.Optimizer,
    noise: float,
    generator: torch.Generator | None,
    teacher_bank: nn.Module | None,
) -> None:
    """The body of ``resize_bank`` over the parameters ``names`` (checks, then commit)."""
    if noise < 0:
        raise ValueError(f"resize_bank: noise = {noise}, must be >= 0")
    index = _indices(plan)

    # where each old parameter sits in the optimiser (by identity)
    slot: dict[int, tuple[dict[str, Any], int]] = {}
    for group in optimizer.param_groups:
        for j, p in enumerate(group["params"]):
            slot[id(p)] = (group, j)
    for name in names:
        if id(getattr(bank, name)) not in slot:
            raise ValueError(
                f"resize_bank: parameter {name!r} of the bank is not in the optimizer "
                "(build the optimizer over this bank, or resize before building it)"
            )
    if teacher_bank is not None:
        for name in names:
            t, s = getattr(teacher_bank, name, None), getattr(bank, name)
            if t is None or t.shape != s.shape:
                raise ValueError(
                    f"resize_bank: the teacher bank's {name!r} "
                    f"{None if t is None else tuple(t.shape)} does not match the bank's "
                    f"{tuple(s.shape)}"
                )

    # compute everything first
    new_params: dict[str, nn.Parameter] = {}
    new_states: dict[str, dict[str, Any] | None] = {}
    new_teacher: dict[str, nn.Parameter] = {}
    for name in names:
        old = getattr(bank, name)
        ix = index(old.device)
        p = nn.Parameter(_gather_param(old.detach(), ix, noise, generator), old.requires_grad)
        new_params[name] = p
        state = optimizer.state.get(old)
        if not state:  # never stepped (or an empty entry of the defaultdict)
            new_states[name] = None
        else:
            new_states[name] = {
                k: _gather_state(v, index(v.device))
                if isinstance(v, Tensor) and v.dim() >= 1 and v.shape == old.shape
                else v
                for k, v in state.items()
            }
        if teacher_bank is not None:
            t = getattr(teacher_bank, name)
            t_rows = _teacher_rows(t.detach(), p.detach(), index(t.device))
            new_teacher[name] = nn.Parameter(t_rows, t.requires_grad)

    # commit
    for name in names:
        old, p = getattr(bank, name), new_params[name]
        group, j = slot[id(old)]
        group["params"][j] = p
        state = new_states[name]
        optimizer.state.pop(old, None)
        if state is not None:
            optimizer.state[p] = state
        setattr(bank, name, p)
        if teacher_bank is not None:
            setattr(teacher_bank, name, new_teacher[name])


@torch.no_grad()
def resize_rows(
    module: nn.Module,
    names: list[str],
    plan: RowPlan,
    optimizer: torch.optim.Optimizer,
    *,
    noise: float = 0.0,
    generator: torch.Generator | None = None,
) -> None:
    """``resize_bank`` for any module whose parameters ``names`` have the row axis first
    (e.g. the router's gate: one row per cluster). Survivors' rows and AdamW moments exact."""
    plan.check(getattr(module, names[0]).shape[0])
    _resize(module, names, plan, optimizer, noise, generator, None)


@torch.no_grad()
def reset_rows(
    bank: Bank, rows: Tensor, source: Bank, optimizer: torch.optim.Optimizer | None = None
) -> None:
    """Overwrite modules ``rows`` [K] long of ``bank`` in place with the same rows of
    ``source`` (a bank of the same layout: the EMA teacher, or a freshly initialised bank), and
    zero their per-element optimiser state (AdamW moments): a fresh start for those modules,
    every other row of every tensor untouched. Parameters keep their identity, so the
    optimiser needs no remapping."""
    names = _stacked_names(bank)
    for name in names:
        p, s = getattr(bank, name), getattr(source, name)
        if s is None or s.shape != p.shape:
            raise ValueError(f"reset_rows: {name}: source {tuple(s.shape)} vs {tuple(p.shape)}")
    for name in names:
        p = getattr(bank, name)
        p.index_copy_(0, rows, getattr(source, name).detach().index_select(0, rows).to(p.dtype))
        if optimizer is not None:
            for v in optimizer.state.get(p, {}).values():
                if isinstance(v, Tensor) and v.shape == p.shape:
                    v.index_fill_(0, rows, 0)
