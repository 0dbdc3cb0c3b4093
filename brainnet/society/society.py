"""The society: banks, router, clusters and blackboard wired by a topology, and one step of it.

    batch x [B, T] ──▶ (views: each module's copy of x, other fields blanked; the router reads
                       field 0) Router: top-k clusters per sequence, static [C, cap] buffers
                       (routed topologies; the others give every cluster the whole batch)
    for each wave of the clock's plan (firings that start at the same simulated instant):
        memory of each firing module, per position  [w, n, cap, T, P, Dm]:
            blackboard slots (S) | mean of mates' messages (1) | mean of the serial / top-down
            inputs' messages for the same sequence (1) | every module of the other clusters
            (attention, (C-1)·n)
        ONE call per bank for all modules of the wave ──▶ logits, message, salience
        blackboard: the wave's proposals compete for the S slots of every (sequence, position)
    merge: router-weighted (or uniform) mixture of the clusters' final predictions
    loss = CE(mixture) + router losses + module_loss_weight * mean module CE

Shapes: C clusters in a padded ``[C, n]`` slot layout (n = the largest cluster); every bank's
rows are cluster-major. With equal clusters (a fresh scenario) the wave's rows are plain views;
after a reorganisation made them unequal, each bank's rows are gathered from / scattered into
the padded layout with static index tensors, and empty slots are masked out of every mean.
Everything stays on the device; counters come back as tensors and the simulation reads them at
log intervals only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from brainnet.config import Scenario, SocietyConfig
from brainnet.data import Batch
from brainnet.modules import build_bank
from brainnet.modules.resize import RowPlan
from brainnet.society import accounting
from brainnet.society import blackboard as board_ops
from brainnet.society.answers import answer_stats
from brainnet.society.arousal import Knobs
from brainnet.society.clock import Plan, plan_step
from brainnet.society.cluster import (
    aggregate_mates,
    cluster_log_probs,
    merge_routed,
    merge_uniform,
    take,
)
from brainnet.society.independent import independent_step
from brainnet.society.links import attention_reads, inputs_by_sequence
from brainnet.society.output import Alone, StepOut
from brainnet.society.router import Router, capacity, routing_entropy
from brainnet.society.specialisation import specialisation_columns
from brainnet.society.topology import Topology, build_topology
from brainnet.society.views import Views
from brainnet.society.waves import Wave, wave_tensors

#: ``hook(wave, writes)`` after each wave: writes [N] = board writes of each module in it
WaveHook = Callable[[Wave, Tensor], None]


class Society(nn.Module):
    """All modules of a scenario, wired as ``scenario.society`` says."""

    def __init__(
        self,
        sc: Scenario,
        vocab_size: int,
        block_size: int,
        n_domains: int,
        n_fields: int = 1,
        blank: int = 0,
    ) -> None:
        super().__init__()
        # society: null means independent modules, the degenerate society
        cfg = sc.society or SocietyConfig.model_construct(topology="independent", clusters=1)
        self.cfg = cfg
        self.vocab_size = vocab_size
        self.block_size = block_size
        self.n_domains = n_domains  # D: per-domain losses and the domain x cluster table
        self.wave_hooks: list[WaveHook] = []  # observers of each wave (delivery tests, traces)
        self.views_cfg, self.n_fields, self.blank = sc.views, n_fields, blank
        counts = [g.count for g in sc.modules]
        topo = build_topology(cfg.topology, cfg.clusters, counts, cfg.intra, sc.seed)
        self.banks = nn.ModuleList(build_bank(g, vocab_size, block_size) for g in sc.modules)
        self.router = Router(cfg.router, vocab_size, topo.n_clusters) if topo.routed else None
        self.message_dim = sc.modules[0].message_dim
        self.slots = cfg.blackboard.slots if topo.blackboard else 0
        self.set_topology(topo)

    def set_topology(self, topo: Topology) -> None:
        """Adopt ``topo`` (at construction, or after a reorganisation resized the banks):
        the static index tensors follow it and cached plans are dropped."""
        for b, (bank, total) in enumerate(zip(self.banks, topo.bank_totals, strict=True)):
            if bank.n_modules != total:
                raise ValueError(f"bank {b} has {bank.n_modules} modules, topology {total}")
        self.topology = topo
        dev = next(self.banks[0].parameters()).device
        N = topo.n_modules
        self.register_buffer("adjacency", topo.adjacency.to(dev), persistent=False)  # [C, n, n]
        self.register_buffer("mate_edges", self.adjacency.sum((1, 2)), persistent=False)  # [C]
        # [C, n] global id of each slot; empty slots point at N (a dump row, dropped)
        self.register_buffer("module_ids", topo.slot_ids(N).to(dev), persistent=False)
        self.register_buffer("member", topo.member_mask().to(dev), persistent=False)  # [C, n]
        sizes = torch.tensor(topo.cluster_sizes, dtype=torch.float, device=dev)
        self.register_buffer("sizes", sizes, persistent=False)  # [C] n_c
        self.uniform = topo.uniform
        self.has_mates = bool(topo.adjacency.sum() > 0)
        self.has_inputs = any(topo.inputs)
        C = topo.n_clusters
        self.attends = topo.spec.attend and C > 1  # reads every other cluster's modules
        others = [[c2 for c2 in range(C) if c2 != c] for c in range(C)]
        self.register_buffer("others", torch.tensor(others, dtype=torch.long, device=dev),
                             persistent=False)  # [C, C-1]  # fmt: skip
        n_attend = (C - 1) * topo.cluster_size if self.attends else 0
        self.n_memory = self.slots + int(self.has_mates) + int(self.has_inputs) + n_attend  # P
        self.views: Views | None = None
        if self.views_cfg is not None:
            if not topo.uniform:
                raise ValueError("views need equal clusters (no reorganisation)")
            self.views = Views(self.views_cfg, topo, self.n_fields, self.blank, dev)
        self.communicates = self.n_memory > 0
        self._plans: dict[tuple[int, int], tuple[Plan, list[Wave]]] = {}

    @property
    def n_modules(self) -> int:
        return self.topology.n_modules

    # ------------------------------------------------------------------ the plan

    def plan(self, rounds: int, cap: int) -> tuple[Plan, list[Wave]]:
        """The clock's plan for ``rounds`` feedback rounds (cached), with its index tensors."""
        rounds = rounds if self.communicates else 0
        key = (rounds, cap)
        if key not in self._plans:
            clock = self.cfg.clock
            tokens = cap * self.block_size
            flops = 6 * max(b.num_params_per_module() for b in self.banks) * tokens
            bytes_ = tokens * self.message_dim * 4
            plan = plan_step(
                self.topology.firings(rounds),
                compute_time=flops / clock.flops_per_ms,
                link_time=clock.latency_ms + bytes_ / clock.bytes_per_ms,
            )
            waves = wave_tensors(self.topology, plan, self.has_mates, self.adjacency.device)
            self._plans[key] = (plan, waves)
        return self._plans[key]

    # ------------------------------------------------------------------ costs

    def capacity(self, knobs: Knobs, batch_size: int) -> int:
        """Buffer rows per cluster: the router's capacity at ``knobs.k``, else the batch."""
        if self.router is None:
            return batch_size
        C = self.topology.n_clusters
        return capacity(min(knobs.k, C), batch_size, C, self.cfg.router.capacity_factor)

    def module_tokens(self, knobs: Knobs, batch_size: int) -> float:
        """Module-token passes of one step at ``knobs`` (what throughput and MFU count)."""
        cap = self.capacity(knobs, batch_size)
        plan, _ = self.plan(knobs.rounds, cap)
        return accounting.module_tokens(plan, self.topology.cluster_sizes, cap, self.block_size)

    def interval_row(
        self, stats: dict, knobs: Knobs, batch_size: int, steps: int = 1, seed: int = 0
    ) -> dict:
        """Metrics columns from one log interval's mean stats over ``steps`` steps, charged at
        the ``knobs`` the interval ran with: communication, routing (with the domain-cluster
        MI, its chance level from ``seed``), blackboard and per-domain losses (independent
        modules: the mean over modules of what is left, e.g. distill_loss)."""
        stats = dict(stats)
        answers = accounting.answers(stats)  # {} without answer tokens
        if not self.topology.merged:
            return {**{k: float(v.mean()) for k, v in stats.items()}, **answers}
        plan, _ = self.plan(knobs.rounds, self.capacity(knobs, batch_size))
        out = accounting.communication(stats, plan, self.block_size, self.message_dim, self.slots)
        out["domain_loss"] = accounting.by_domain(stats)
        out.update(answers)
        if "domain_cluster" in stats:
            table = stats["domain_cluster"].tolist()
            out.update(specialisation_columns(table, self.n_domains, knobs.k, steps, seed))
        for k, v in stats.items():
            out[k] = v.tolist() if isinstance(v, Tensor) else v
        return out

    # ------------------------------------------------------------------ layout

    @torch.no_grad()
    def adopt_layout(
        self,
        sizes: list[list[int]],
        adjacency: list[Tensor | None],
        router: RowPlan | None,
        seed: int,
        optimizer: torch.optim.Optimizer | None = None,
        noise: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> Topology:
        """After the banks were resized to ``sizes[c][b]``: the new topology (each cluster's
        adjacency, None = wired as ``intra`` says) and, when the clusters changed identity,
        the router's gate rows (``router``). Returns the new topology."""
        new = self.topology.relayout(sizes, adjacency, seed)
        if router is not None and self.router is not None:
            self.router.resize(router, optimizer, noise, generator)
        self.set_topology(new)
        return new

    # ------------------------------------------------------------------ alone

    def alone(self, out: StepOut, batch: Batch, b: int) -> Alone | None:
        """Bank ``b``'s modules' predictions in a pass where each ran alone (``first_logits``),
        in bank row order, with their tokens, targets and valid rows; None if the step had no
        such pass."""
        first = out.first_logits
        if first is None:
            return None
        if isinstance(first, list):  # independent modules: each on the whole batch
            return Alone(first[b], self.module_inputs(b, batch), batch.y, None)
        assert out.seq_index is not None
        C, n = first.shape[:2]
        B, T = batch.x.shape
        ids = self.module_ids.flatten()  # [C*n] global id per slot (N: empty)
        slot = torch.zeros(self.n_modules + 1, dtype=torch.long, device=ids.device)
        slot.scatter_(0, ids, torch.arange(C * n, device=ids.device))  # global id -> slot
        off = self.topology.bank_offset(b)
        slots = slot[off : off + self.banks[b].n_modules]  # [M]
        seq = out.seq_index.repeat_interleave(n, 0).index_select(0, slots)  # [M, cap]
        pad = lambda t: torch.cat([t, t.new_zeros(1, T)])  # noqa: E731  (row B = padding)
        student = first.flatten(0, 1).index_select(0, slots)  # [M, cap, T, V]
        if self.views is None:
            tokens = pad(batch.x)[seq]  # [M, cap, T]
        else:
            xv = self.views.tokens(batch.x, batch.field)  # [V, B+1, T]
            rows = torch.arange(off, off + self.banks[b].n_modules, device=ids.device)
            tokens = xv[self.views.rows(rows)[:, None], seq]  # [M, cap, T]
        return Alone(student, tokens, pad(batch.y)[seq], seq < B)

    def module_inputs(self, b: int, batch: Batch) -> Tensor:
        """What bank ``b``'s modules read of the whole batch: [M, B, T] (a stride-0 expand of
        the batch without views; each module's view of it with them)."""
        M = self.banks[b].n_modules
        if self.views is None:
            return batch.x.unsqueeze(0).expand(M, -1, -1)
        off = self.topology.bank_offset(b)
        rows = torch.arange(off, off + M, device=batch.x.device)
        return self.views.tokens(batch.x, batch.field)[self.views.rows(rows), :-1]

    # ------------------------------------------------------------------ one step

    def forward(self, batch: Batch, knobs: Knobs) -> StepOut:
        """One step of the society on ``batch`` at ``knobs`` (no host sync)."""
        if not self.topology.merged:
            tokens = (
                None
                if self.views is None
                else [self.module_inputs(b, batch) for b in range(len(self.banks))]
            )
            out = independent_step(self.banks, batch, tokens)
            if batch.answer is not None:
                out.stats.update(self._answers(out.first_logits, batch))
            return out
        x, y = batch.x, batch.y
        B, T = x.shape
        topo = self.topology
        C, n, V, Dm, S = (
            topo.n_clusters,
            topo.cluster_size,
            self.vocab_size,
            self.message_dim,
            self.slots,
        )
        dev = x.device
        route = None
        xv = None if self.views is None else self.views.tokens(x, batch.field)  # [V, B+1, T]
        if self.router is not None:
            seen = x if self.views is None else self.views.shared(x, batch.field)  # field 0
            prior = knobs.prior  # [C] focus prior; one from before a relayout (another C)
            if prior is not None and prior.numel() != C:  # is dropped until the next retune
                prior = None
            route = self.router(seen, min(knobs.k, C), knobs.temperature, prior)
            seq_index = route.dispatch.seq_index  # [C, cap]
        else:
            seq_index = torch.arange(B, device=dev).expand(C, B)  # every cluster sees all
        cap = seq_index.shape[1]
        plan, waves = self.plan(knobs.rounds, cap)
        valid = seq_index < B  # [C, cap] buffer row holds a sequence
        active = valid.sum(1).float()  # [C] sequences per cluster
        tokens_pad = torch.cat([x, x.new_zeros(1, T)])  # [B+1, T], row B = padding

        msgs: Tensor | None = None  # [C, n, cap, T, Dm] latest message of every module
        sal: Tensor | None = None  # [C, n, cap, T]
        logits: Tensor | None = None  # [C, n, cap, T, V] latest prediction of every module
        board = board_ops.empty(B, T, S, Dm, device=dev) if S else None
        count = {k: x.new_zeros((), dtype=torch.float) for k in accounting.KINDS}
        writes = x.new_zeros(self.n_modules, dtype=torch.float)  # board writes per module

        first = None
        for i, wave in enumerate(waves):
            W = wave.clusters
            sidx = seq_index[W]  # [w, cap]
            toks = tokens_pad[sidx]  # [w, cap, T]
            memory = mask = None
            if wave.any_memory:
                memory, mask = self._memory(wave, sidx, seq_index, B, msgs, board, count, active)
            if self.uniform:
                new_logits, new_msg, new_sal = self._run_banks(wave, toks, memory, mask, xv, sidx)
            else:
                new_logits, new_msg, new_sal = self._run_banks_padded(wave, toks, memory, mask)
            if i == 0 and wave.all_alone(C):
                first = new_logits  # [C, n, cap, T, V] every module alone
            logits = _update(logits, W, new_logits, C)
            msgs = _update(msgs, W, new_msg, C)
            sal = _update(sal, W, new_sal, C)
            wrote = None
            if board is not None and route is not None:
                board, wrote = self._write_board(board, route, msgs, sal, wave, knobs, count)
                writes = writes + wrote
            for hook in self.wave_hooks:
                hook(wave, writes.new_zeros(self.n_modules) if wrote is None else wrote)

        assert logits is not None
        # merge: the society's prediction
        module_lp = torch.log_softmax(logits.float(), dim=-1)  # [C, n, cap, T, V], once
        lp = cluster_log_probs(module_lp, None if self.uniform else self.member)  # [C, cap, T, V]
        if route is not None:
            d = route.dispatch
            logp = merge_routed(lp, d.slot, route.chosen, d.kept, route.gates)  # [B, T, V]
        else:
            logp = merge_uniform(lp[topo.merge])  # [len(merge), B, T, V] -> [B, T, V]
        nll = F.nll_loss(logp.reshape(-1, V), y.reshape(-1), reduction="none").view(B, T)
        w = batch.weight  # [B, T] | None: train.answer_weight's token weights, mean 1
        task_loss = nll.mean() if w is None else (nll * w).mean()

        # each module's own CE on the sequences it processed
        y_pad = torch.cat([y, y.new_zeros(1, T)])[seq_index]  # [C, cap, T]
        target = y_pad[:, None, :, :, None].expand(C, n, cap, T, 1)
        ce = -module_lp.gather(-1, target).squeeze(-1)  # [C, n, cap, T]
        if w is not None:
            ce = ce * torch.cat([w, w.new_ones(1, T)])[seq_index][:, None]  # row B: padding
        per_slot = ce.mean(-1) * valid[:, None]  # [C, n, cap]
        module_ce = per_slot.sum(-1) / active[:, None].clamp(min=1)  # [C, n]
        if self.uniform:
            mean_ce = module_ce.mean()
        else:  # empty slots hold no module
            mean_ce = (module_ce * self.member).sum() / self.member.sum()
        idle = (active == 0)[:, None].expand(C, n)  # a module that saw no sequence: NaN
        module_loss = torch.empty(self.n_modules + 1, device=dev).scatter_(
            0,
            self.module_ids.flatten(),
            module_ce.detach().masked_fill(idle, float("nan")).flatten(),
        )[: self.n_modules]  # the last entry is the empty slots' dump
        stats: dict[str, Tensor] = {
            **{f"messages_{kind}": v for kind, v in count.items()},
            "board_writes": writes,
            "cluster_active": active,
        }
        aux = None
        if route is not None:
            aux = self.router.aux_loss(route)
            d = route.dispatch
            stats.update(
                load=d.load.float(),
                dropped=d.dropped.float(),
                routing_entropy=routing_entropy(route.probs),
                balance_loss=route.balance_loss,
                z_loss=route.z_loss,
                router_probs=route.probs.mean(0),
            )
        if board is not None:
            stats["board_occupancy"] = board.occupancy.float().mean()
        cl_nll = -(lp.gather(-1, y_pad.unsqueeze(-1)).squeeze(-1)).mean(-1)  # [C, cap]
        stats["cluster_loss"] = (cl_nll * valid).sum(1) / active.clamp(min=1)  # [C]
        stats.update(self._by_domain(batch.domain, nll.mean(1).detach(), route))
        if batch.answer is not None:
            stats.update(self._answers(logp, batch, nll))
        return StepOut(
            task_loss=task_loss,
            module_terms=mean_ce,
            module_loss=module_loss,
            merged=True,
            aux_loss=aux,
            stats=stats,
            route=route,
            logits=logits,
            seq_index=seq_index,
            first_logits=first,
        )

    def _answers(
        self, logits: Tensor | list[Tensor], batch: Batch, nll: Tensor | None = None
    ) -> dict[str, Tensor]:
        """Answer-token sums per domain of the society's prediction (logits = its log-probs
        [B, T, V], nll [B, T]) or of independent modules (one [M, B, T, V] per bank; the
        modules' mean)."""
        if isinstance(logits, list):
            logits = torch.cat(logits).detach().float()  # [N, B, T, V]
            y = batch.y.expand(logits.shape[0], -1, -1)
            nll = F.cross_entropy(logits.flatten(0, 2), y.flatten(), reduction="none")
            nll = nll.view(y.shape)
        assert nll is not None
        right = logits.detach().argmax(-1) == batch.y  # [..., B, T]
        return answer_stats(nll.detach(), right, batch.answer, batch.domain, self.n_domains)

    def _by_domain(self, dom: Tensor, seq_nll: Tensor, route: Any) -> dict[str, Tensor]:
        """Per-domain loss sums and counts (dom [B] long, seq_nll [B]) and, when routed, the
        domain x cluster routing counts [D*C]; no host sync."""
        D, C = self.n_domains, self.topology.n_clusters
        out = {
            "domain_loss_sum": torch.zeros(D, device=dom.device).scatter_add_(0, dom, seq_nll),
            "domain_count": torch.zeros(D, device=dom.device).scatter_add_(
                0, dom, torch.ones_like(dom, dtype=torch.float)
            ),
        }
        if route is not None:
            flat = (dom[:, None] * C + route.chosen).flatten()
            out["domain_cluster"] = torch.zeros(D * C, device=dom.device).scatter_add_(
                0, flat, route.dispatch.kept.flatten().float()
            )
        return out

    def _run_banks(
        self,
        wave: Wave,
        toks: Tensor,
        memory: Tensor | None,
        mask: Tensor | None,
        xv: Tensor | None = None,
        sidx: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Equal clusters: ONE call per bank on views of the wave's slots.

        toks [w, cap, T], memory [w, n, cap, T, P, Dm] | None; with sensory views, xv
        [V, B+1, T] every view's copy of the batch and sidx [w, cap] the wave's rows
        -> logits [w, n, cap, T, V], message [w, n, cap, T, Dm], salience [w, n, cap, T]."""
        w, cap, T = toks.shape
        outs = []
        off = 0
        for b, (bank, n_b, idx) in enumerate(
            zip(self.banks, self.topology.sizes[0], wave.bank_idx, strict=True)
        ):
            if xv is None:
                t_b = toks[:, None].expand(w, n_b, cap, T).reshape(w * n_b, cap, T)
            else:  # each module its own view: [w, n_b, cap, T]
                assert self.views is not None and sidx is not None
                view = self.views.slot_view[b][wave.clusters]  # [w, n_b]
                t_b = xv[view[:, :, None], sidx[:, None, :]].reshape(w * n_b, cap, T)
            m_b = k_b = None
            if memory is not None:
                m_b = memory[:, off : off + n_b].reshape(w * n_b, cap, T, -1, self.message_dim)
                k_b = mask[:, off : off + n_b].reshape(w * n_b, cap, T, -1)
            o = bank(t_b, m_b, k_b, idx=idx)
            outs.append([t.view(w, n_b, *t.shape[1:]) for t in o])
            off += n_b
        return tuple(torch.cat(parts, dim=1) for parts in zip(*outs, strict=True))

    def _run_banks_padded(
        self, wave: Wave, toks: Tensor, memory: Tensor | None, mask: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Unequal clusters: ONE call per bank on its rows of the wave, gathered from and
        scattered into the padded [w, n] slots (empty slots: logits 0, message 0, salience
        -inf so that they never win the board). Same shapes as ``_run_banks``."""
        w, cap, T = toks.shape
        n = self.topology.cluster_size
        flat_mem = None if memory is None else memory.flatten(0, 1)  # [w*n, cap, T, P, Dm]
        flat_mask = None if mask is None else mask.flatten(0, 1)  # [w*n, cap, T, P]
        outs = []
        for bank, idx, pos, dest in zip(
            self.banks, wave.bank_idx, wave.row_pos, wave.dest, strict=True
        ):
            if dest.numel() == 0:  # this bank has no module in the wave's clusters
                continue
            t_b = toks.index_select(0, pos)  # [r_b, cap, T]
            m_b = None if flat_mem is None else flat_mem.index_select(0, dest)
            k_b = None if flat_mask is None else flat_mask.index_select(0, dest)
            outs.append((dest, bank(t_b, m_b, k_b, idx=idx)))
        result = []
        for i, fill in enumerate((0.0, 0.0, float("-inf"))):
            like = outs[0][1][i]  # [r_b, cap, T, ...]
            full = like.new_full((w * n, *like.shape[1:]), fill)
            for dest, o in outs:
                full = full.index_copy(0, dest, o[i])
            result.append(full.view(w, n, *like.shape[1:]))
        return tuple(result)

    def _cluster_mean(self, msgs: Tensor) -> Tensor:
        """Mean message of each cluster's modules: [C, n, ...] -> [C, ...] (empty slots out)."""
        if self.uniform:
            return msgs.mean(1)
        m = self.member.view(*self.member.shape, *([1] * (msgs.dim() - 2))).to(msgs.dtype)
        return (msgs * m).sum(1) / self.sizes.view(-1, *([1] * (msgs.dim() - 2))).to(msgs.dtype)

    # ------------------------------------------------------------------ memory and board

    def _memory(
        self,
        wave: Wave,
        sidx: Tensor,
        seq_index: Tensor,
        B: int,
        msgs: Tensor | None,
        board: board_ops.BoardWrite | None,
        count: dict[str, Tensor],
        active: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """Per-position memory of the wave's modules: [w, n, cap, T, P, Dm] and mask [.., P].

        P = board slots (S) | mean of mates' messages (1) | mean of the inter-cluster inputs
        (1) | every module of the other clusters (attention, (C-1)·n), as the topology has."""
        W = wave.clusters
        w, cap = sidx.shape
        T = self.block_size
        n, Dm = self.topology.cluster_size, self.message_dim
        a = active[W]  # [w]
        parts, masks = [], []
        if self.slots:
            assert board is not None
            pad = lambda t: torch.cat([t, t.new_zeros(1, *t.shape[1:])])  # noqa: E731
            slots = take(pad(board.slots), sidx)  # [w, cap, T, S, Dm]
            occ = pad(board.occupancy)[sidx]  # [w, cap, T, S]
            parts.append(slots[:, None].expand(w, n, *slots.shape[1:]))
            masks.append(occ[:, None].expand(w, n, *occ.shape[1:]))
            if wave.board:
                count["board_read"] = count["board_read"] + (a * self.sizes[W]).sum()
        if msgs is None:  # nobody has spoken yet: only the (empty) board exists
            msgs_w = torch.zeros(w, n, cap, T, Dm, device=sidx.device)
        else:
            msgs_w = take(msgs, W)  # [w, n, cap, T, Dm]
        if self.has_mates:
            parts.append(aggregate_mates(msgs_w, self.adjacency[W])[:, :, :, :, None])
            has = wave.mates[:, None] & (self.adjacency[W].sum(-1) > 0)  # [w, n]
            masks.append(has[:, :, None, None, None].expand(w, n, cap, T, 1))
            count["mate"] = count["mate"] + (self.mate_edges[W] * a * wave.mates).sum()
        if self.has_inputs:
            if msgs is None:  # no source has spoken
                agg, has = msgs_w[:, 0], torch.zeros(w, cap, dtype=torch.bool, device=sidx.device)
            else:
                agg, here = inputs_by_sequence(self._cluster_mean(msgs), seq_index, B,
                                               wave.inputs, wave.input_ok, sidx)  # fmt: skip
                has = here.any(1)  # [w, cap]
                n_w = self.sizes[W][:, None, None]  # [w, 1, 1]
                up = (wave.inputs < W[:, None])[:, :, None]  # [w, I, 1] a serial link
                count["bottom_up"] = count["bottom_up"] + ((here & up) * n_w).sum()
                count["top_down"] = count["top_down"] + ((here & ~up) * n_w).sum()
            parts.append(agg[:, None, :, :, None].expand(w, n, cap, T, 1, Dm))
            masks.append(has[:, None, :, None, None].expand(w, n, cap, T, 1))
        if self.attends:
            A = (self.topology.n_clusters - 1) * n
            if wave.attend and msgs is not None:
                src, ok = attention_reads(msgs, self.others[W], self.member)  # [w,cap,T,A,Dm]
                count["attend"] = count["attend"] + (ok.sum(1) * self.sizes[W] * a).sum()
            else:
                src = msgs_w.new_zeros(w, cap, T, A, Dm)
                ok = torch.zeros(w, A, dtype=torch.bool, device=sidx.device)
            parts.append(src[:, None].expand(w, n, cap, T, A, Dm))
            masks.append(ok[:, None, None, None, :].expand(w, n, cap, T, A))
        return torch.cat(parts, dim=4), torch.cat(masks, dim=4)

    def _write_board(
        self,
        board: board_ops.BoardWrite,
        route: Any,
        msgs: Tensor,
        sal: Tensor,
        wave: Wave,
        knobs: Knobs,
        count: dict[str, Tensor],
    ) -> tuple[board_ops.BoardWrite, Tensor]:
        """The wave's modules propose (message, sigmoid(salience)) for their sequences.
        Returns the new board and each module's writes in this wave [N] ((sequence, module)
        pairs that won a slot at some position)."""
        C, n, cap, T, Dm = msgs.shape
        B, k = route.chosen.shape
        d = route.dispatch
        ok = d.kept & wave.in_wave[route.chosen]  # [B, k] the choice fired in this wave
        index = torch.where(ok, route.chosen * cap + d.slot, C * cap)  # [B, k]
        flat_m = msgs.permute(0, 2, 3, 1, 4).reshape(C * cap, T, n, Dm)
        flat_s = sal.permute(0, 2, 3, 1).reshape(C * cap, T, n)
        flat_m = torch.cat([flat_m, flat_m.new_zeros(1, T, n, Dm)])
        flat_s = torch.cat([flat_s, flat_s.new_full((1, T, n), float("-inf"))])
        props = take(flat_m, index).permute(0, 2, 1, 3, 4).reshape(B, T, k * n, Dm)
        strength = torch.sigmoid(take(flat_s, index).float()).permute(0, 2, 1, 3)
        strength = strength.reshape(B, T, k * n)
        new = board_ops.write(
            board.slots,
            board.strength,
            props.to(board.slots.dtype),
            strength.to(board.strength.dtype),
            knobs.threshold,
            self.cfg.blackboard.decay,
        )
        # who wrote: winners with source >= S are proposals; p = (choice p // n, mate p % n)
        S = board.slots.shape[2]
        p = new.source - S  # [B, T, S]
        won = p >= 0
        choice = p.clamp(min=0) // n
        mate = p.clamp(min=0) % n
        cluster = route.chosen.gather(1, choice.view(B, -1)).view_as(p)  # [B, T, S]
        writer = self.module_ids[cluster, mate]  # [B, T, S]
        hit = torch.zeros(B, self.n_modules, device=msgs.device)
        hit.scatter_(1, torch.where(won, writer, 0).view(B, -1), won.view(B, -1).float())
        wrote = (hit > 0).float().sum(0)  # [N] (module, sequence) pairs that wrote this round
        count["board_write"] = count["board_write"] + (hit > 0).float().sum()
        return new, wrote


def _update(state: Tensor | None, W: Tensor, new: Tensor, C: int) -> Tensor:
    """Out-of-place write of the wave's rows into a [C, ...] state (keeps autograd intact)."""
    if new.shape[0] == C:
        return new
    if state is None:
        state = new.new_zeros(C, *new.shape[1:])
    return state.index_copy(0, W, new)
