"""Simulation: a scenario brought to life — corpus, banks, optimiser, run directory — and its step.

The step (this issue's shape; the society issue inserts router, clusters, blackboard, arousal
between "batch" and "loss"):

    batch [B, T] ──▶ every bank: tokens [M, B, T] ──▶ logits [M, B, T, V] ──▶ CE per module [M]
                 ──▶ sum over modules, backward (one batched backward per bank)
                 ──▶ per-module grad clip ──▶ AdamW (fused, over the stacked parameters)

Losses stay on the device; the host reads them only at log intervals.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from brainnet.checkpoint import load_checkpoint, save_checkpoint
from brainnet.config import Scenario, ScenarioError, load_scenario
from brainnet.data import Batch, build_corpus
from brainnet.engine.allocator import keep_freed_memory
from brainnet.engine.precision import autocast, autocast_dtype
from brainnet.engine.optim import build_optimizer, clip_module, clip_per_module, lr_at
from brainnet.learning.actions import ACTIONS, Evidence, Limits
from brainnet.learning.collapse import CollapseMonitor, cluster_probs, diagnose, peer_disagreement
from brainnet.learning.collapse import sample as sample_bank
from brainnet.learning.distill import (
    EMATeacher,
    distill_loss,
    kd_loss,
    peer_weights,
    warmup_correct,
)
from brainnet.learning.emergence import EmergenceTracker, probe_batch
from brainnet.learning.reorganize import (
    Layout,
    New,
    Ref,
    RowPlan,
    bank_plans,
    resize_bank,
    resize_rows,
)
from brainnet.learning.teacher import FrozenTeacher
from brainnet.metrics import RunWriter
from brainnet.modules import build_bank
from brainnet.modules.bank import module_cross_entropy
from brainnet.society import Arousal, Knobs, Society
from brainnet.society.topology import Topology, build_topology

#: what ``module_losses`` / ``society_losses`` return: loss, task loss [], module CE [N], stats,
#: and the society's first-firing logits with their rows (or None), for consolidation
Losses = tuple[Tensor, Tensor, Tensor, dict[str, Tensor], tuple[Tensor, Tensor] | None]

#: ``callback(sim, row)`` is called after every logged step with that step's metrics row.
Callback = Callable[["Simulation", dict[str, Any]], None]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ScenarioError(
            ["device = 'cuda': CUDA is not available on this machine; allowed: auto, cpu"]
        )
    return torch.device(name)


class Simulation:
    """Build everything a scenario describes and train it.

    >>> sim = Simulation(load_scenario("quickstart", overrides={"train.steps": 20}))
    >>> summary = sim.run()
    """

    def __init__(self, scenario: Scenario | str, *, out_dir: str | Path | None = None) -> None:
        sc = scenario if isinstance(scenario, Scenario) else load_scenario(scenario)
        self.scenario = sc
        seed_everything(sc.seed)
        self.device = resolve_device(sc.device)
        if self.device.type == "cpu":
            keep_freed_memory()  # reuse freed activations instead of page-faulting new ones
        self.autocast_dtype = autocast_dtype(sc.precision, self.device)
        self.corpus = build_corpus(sc.corpus, sc.seed)
        V, T = self.corpus.vocab_size, self.corpus.block_size
        self.society: Society | None = None
        self.arousal: Arousal | None = None
        if sc.society is None:  # independent modules, each trained on the whole batch
            self.banks = nn.ModuleList(build_bank(g, V, T) for g in sc.modules).to(self.device)
            self.model: nn.Module = self.banks
        else:
            self.society = Society(sc, V, T).to(self.device)
            self.banks = self.society.banks
            self.model = self.society
            self.arousal = Arousal(
                sc.society.arousal, self.society.topology.n_clusters, self.device
            )
            self.knobs = self._knobs(self.arousal.read()[0])
        extra = [self.society.router] if self.society and self.society.router else []
        self.optimizer = build_optimizer(list(self.banks), sc.train, self.device, extra)
        self.n_modules = sum(b.n_modules for b in self.banks)
        self._solo: Topology | None = None  # independent modules as one cluster (built once)
        self._initial = (self._topology().n_clusters, self.n_modules)  # reorganisation limits
        self._heard = torch.zeros(self.n_modules)  # board writes per module since a relayout
        self._peers: dict[int, Tensor] = {}  # [M, M] per bank; cleared on relayout
        self._pending: tuple | None = None  # an emergence event's reorganisation, due
        self._warmup_replaced: list[Tensor] = []  # [M] per bank, this step's correction
        self.step = 0
        #: ``timer(phase)`` -> a context manager around a phase of ``train_step`` (phases:
        #: "teacher_update"); the bench times phases with it, the default does nothing
        self.timer: Callable[[str], contextlib.AbstractContextManager] = _no_timer
        # data sampling has its own RNG stream: model-side randomness never shifts the batches
        self.data_rng = torch.Generator().manual_seed(sc.seed + 1)
        val_rng = torch.Generator().manual_seed(sc.seed + 2)
        self.val_batches = [
            self.corpus.batch("val", sc.train.batch_size, val_rng).to(self.device)
            for _ in range(sc.train.eval_batches)
        ]
        # learning probes: a fixed probe set, read at log intervals only
        self.probe = probe_batch(self.corpus, self._probe_size(), sc.seed + 3).to(self.device)
        self.emergence = None
        if sc.emergence is not None:
            self.emergence = EmergenceTracker(sc.emergence, V, sc.seed, self.device)
        self.collapse = (
            None if sc.collapse is None else CollapseMonitor(sc.collapse, self.n_modules)
        )
        self.delta_phi_drive = 0.0  # E_norm of the last probe, felt by arousal every step
        dcfg = sc.distill
        self.teacher = None
        if dcfg.enabled and dcfg.teacher in ("ema", "both"):
            self.teacher = EMATeacher(list(self.banks), dcfg.ema, sc.train.steps)
        elif dcfg.enabled and dcfg.teacher == "run":  # the frozen modules of an earlier run
            self.teacher = FrozenTeacher.load(dcfg.teacher_run, self.corpus, self.device)
        forward = self.module_losses if self.society is None else self.society_losses
        self._losses = torch.compile(forward) if sc.compile else forward
        self.out_dir = Path(out_dir if out_dir is not None else sc.out_dir)
        self.writer: RunWriter | None = None
        self.tensorboard: Any = None
        if sc.log.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter  # noqa: F401
            except ImportError:
                raise ScenarioError(
                    [
                        "log.tensorboard = true: the tensorboard package is not installed; "
                        "allowed: false, or install it (pip install 'brainnet[tensorboard]')"
                    ]
                ) from None

    # ------------------------------------------------------------------ the step

    @property
    def run_dir(self) -> Path | None:
        return None if self.writer is None else self.writer.path

    def module_losses(self, batch: Batch) -> Losses:
        """Independent modules: every module on the whole batch, one call per bank.

        Returns (loss to minimise, task loss [], per-module CE [N], stats, None)."""
        out = []
        for bank in self.banks:  # one iteration per module TYPE; all its modules run at once
            tokens = batch.x.unsqueeze(0).expand(bank.n_modules, -1, -1)  # [M, B, T]
            out.append(module_cross_entropy(bank(tokens).logits, batch.y))
        ce = torch.cat(out)  # [N]
        # sum, not mean: each module's gradient is that of its own mean loss, whatever N is
        return ce.sum(), ce.mean(), ce, {}, None

    def society_losses(self, batch: Batch) -> Losses:
        """The society's step (router, clusters, blackboard, merge) on ``batch``. The last
        item: (first-firing logits [C, n, cap, T, V], sequence rows [C, cap]) when every module
        first ran alone (``Society.first_alone``), for the consolidation to reuse; else None."""
        assert self.society is not None
        out = self.society(batch, self.knobs)
        stats = dict(out.stats)
        D, C = len(self.corpus.domains), self.society.topology.n_clusters
        dom = batch.domain
        stats["domain_loss_sum"] = torch.zeros(D, device=dom.device).scatter_add_(
            0, dom, stats.pop("seq_nll")
        )
        stats["domain_count"] = torch.zeros(D, device=dom.device).scatter_add_(
            0, dom, torch.ones_like(dom, dtype=torch.float)
        )
        if "chosen" in stats:  # domain x cluster routing counts, no host sync
            chosen, kept = stats.pop("chosen"), stats.pop("kept")
            flat = (dom[:, None] * C + chosen).flatten()
            stats["domain_cluster"] = torch.zeros(D * C, device=dom.device).scatter_add_(
                0, flat, kept.flatten().float()
            )
        first = None if out.first_logits is None else (out.first_logits, out.seq_index)
        return out.loss, out.task_loss, out.module_loss, stats, first

    def consolidate(
        self, batch: Batch, first: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, Tensor]:
        """Self-distillation: every module alone (no memory), pulled toward its EMA snapshot
        and / or its cluster mates, or toward the frozen modules of an earlier run (teacher
        'run'; see docs/learning.md).

        Without ``first``: a pass of every module over the whole batch. With ``first`` (the
        society step's first-firing logits and rows, see ``society_losses``): no second pass;
        each module is distilled on the sequences it was routed this step (padding rows left
        out), from the same forward. Warmup-Distill always runs its own pass.

        Returns the per-module distillation loss [N] (alpha·CE + (1-alpha)·T²·KL, or the
        T²·KL term alone in the closed loop) and the plain CE [N] for logging."""
        cfg = self.scenario.distill
        alpha = cfg.alpha if cfg.labels else 0.0
        sharpen = cfg.temperature / (cfg.teacher_temperature or cfg.temperature)
        if cfg.warmup_correction.enabled:
            first = None
        out, ces = [], []
        for b, bank in enumerate(self.banks):
            if first is None:
                tokens = batch.x.unsqueeze(0).expand(bank.n_modules, -1, -1)  # [M, B, T]
                logits, targets, rows = bank(tokens).logits, batch.y, None  # [M, B, T, V]
            else:  # [M, cap, T, V], [M, cap, T] x 2, [M, cap]
                logits, tokens, targets, rows = self._first_rows(b, batch, *first)
            if cfg.warmup_correction.enabled:  # the KL term on teacher-corrected samples
                kd = self._corrected_kd(b, bank, batch, sharpen)  # [M] (its own teacher pass)
                ce = module_cross_entropy(logits, batch.y)
                out.append(alpha * ce + (1 - alpha) * kd)
            else:
                teacher = peers = weights = None
                if self.teacher is not None:
                    with torch.no_grad():
                        teacher = self.teacher.logits(b, tokens) * sharpen
                if cfg.teacher in ("peers", "both"):  # the bank's own logits, each module's mates
                    peers, weights = logits.detach() * sharpen, self._peer_weights(b)  # [M, M]
                out.append(
                    distill_loss(
                        logits,
                        targets,
                        teacher,
                        peers,
                        alpha,
                        cfg.temperature,
                        peer_weights=weights,
                        rows=rows,
                    )
                )
            ces.append(module_cross_entropy(logits.detach(), targets, rows))
        return torch.cat(out), torch.cat(ces)

    def _first_rows(
        self, b: int, batch: Batch, logits: Tensor, seq_index: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Bank ``b``'s modules' first-firing logits [M, cap, T, V], in bank row order, with the
        tokens and targets of their buffer rows [M, cap, T] and which rows hold a sequence
        [M, cap] (the rest is the router's padding)."""
        assert self.society is not None
        topo = self.society.topology
        C, n = logits.shape[:2]
        B, T = batch.x.shape
        ids = self.society.module_ids.flatten()  # [C*n] global id per slot (N: empty)
        slot = torch.zeros(self.n_modules + 1, dtype=torch.long, device=ids.device)
        slot.scatter_(0, ids, torch.arange(C * n, device=ids.device))  # global id -> slot
        off = topo.bank_offset(b)
        slots = slot[off : off + self.banks[b].n_modules]  # [M]
        seq = seq_index.repeat_interleave(n, 0).index_select(0, slots)  # [M, cap] slot c*n+i
        pad = lambda t: torch.cat([t, t.new_zeros(1, T)])  # noqa: E731  (row B = padding)
        student = logits.flatten(0, 1).index_select(0, slots)  # [M, cap, T, V]
        return student, pad(batch.x)[seq], pad(batch.y)[seq], seq < B

    def _corrected_kd(self, b: int, bank: Any, batch: Batch, sharpen: float) -> Tensor:
        """Warmup-Distill: each module samples continuations of the batch's first ``prompt``
        tokens, the teacher replaces the tokens it finds unlikely, and the T²·KL to the
        teacher is taken on the corrected sequences -> [M]. The share of replaced tokens is
        kept for logging (``warmup_replaced``)."""
        cfg = self.scenario.distill
        wc = cfg.warmup_correction
        M = bank.n_modules
        full = torch.cat([batch.x, batch.y[:, -1:]], dim=1)  # [B, T+1]
        tokens = full.unsqueeze(0).expand(M, -1, -1).contiguous()  # [M, B, T+1]
        teacher = self.teacher
        assert teacher is not None

        def score(x: Tensor) -> Tensor:
            return teacher.logits(b, x)

        scorer = teacher.banks[b] if getattr(teacher, "resizable", False) else score
        gen = torch.Generator(device=self.device).manual_seed(self.scenario.seed + 11 * self.step)
        with torch.no_grad():
            seq, replaced = warmup_correct(bank, scorer, tokens, wc.prompt, wc.threshold,
                                           wc.temperature, gen)  # fmt: skip
            t_logits = teacher.logits(b, seq[:, :, :-1]) * sharpen  # [M, B, T, V]
        self._warmup_replaced.append(replaced)
        s_logits = bank(seq[:, :, :-1]).logits  # [M, B, T, V]
        return kd_loss(s_logits, t_logits, cfg.temperature, per_module=True)

    def _pop_replaced(self) -> dict[str, Tensor]:
        """The warm-up correction's replaced-token share of this step, per module [N]."""
        if not self._warmup_replaced:
            return {}
        out = torch.cat(self._warmup_replaced)
        self._warmup_replaced = []
        return {"warmup_replaced": out}

    def _peer_weights(self, b: int) -> Tensor:
        """Each module's peers in bank ``b`` as weights [M, M] (``peer_weights``): its cluster
        mates of the same type (a society), or every other module (independent modules)."""
        if b not in self._peers:
            index, mask = _peer_rows(self._topology(), b, self.device)
            self._peers[b] = peer_weights(index, mask, index.shape[0])
        return self._peers[b]

    def _knobs(self, a: float) -> Knobs:
        """Router k, rounds, temperature and board threshold for arousal ``a``."""
        soc = self.scenario.society
        assert soc is not None and self.arousal is not None
        if not soc.arousal.enabled:
            return Knobs(
                soc.router.top_k, soc.rounds, soc.router.temperature, soc.blackboard.threshold
            )
        return Knobs(
            self.arousal.k(a, soc.router.top_k),
            self.arousal.rounds(a),
            self.arousal.temperature(a),
            self.arousal.threshold(a),
        )

    def _autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.device, self.autocast_dtype)

    def train_step(self) -> dict[str, Tensor]:
        """One optimiser step. Returns device tensors (no host sync): task loss [], module CE
        [N], grad norm [N] and the society's stats."""
        cfg = self.scenario.train
        self.corpus.at_step(self.step)
        batch = self.corpus.batch("train", cfg.batch_size, self.data_rng).to(self.device)
        lr = lr_at(self.step, cfg)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        self.model.train()
        with self._autocast():
            if not self.scenario.distill.due(self.step + 1):
                loss, task, module_ce, stats, _ = self._losses(batch)
            elif self.society is None:  # one pass: the distillation loss holds alpha * CE
                kd, module_ce = self.consolidate(batch)  # [N] each
                loss, task, stats = kd.sum(), module_ce.mean(), {"distill_loss": kd.detach()}
                stats.update(self._pop_replaced())
            else:
                loss, task, module_ce, stats, first = self._losses(batch)
                kd, _ = self.consolidate(batch, first)  # reuses the society's first pass
                stats["distill_loss"] = kd.detach()
                stats.update(self._pop_replaced())
                # closed soft loop: nothing but the distillation term is learned from
                loss = loss + kd.mean() if self.scenario.distill.labels else kd.sum()
        loss.backward()
        norms = torch.cat([clip_per_module(b, cfg.grad_clip) for b in self.banks])
        if self.society is not None and self.society.router is not None:
            clip_module(self.society.router, cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.teacher is not None:
            with self.timer("teacher_update"):
                self.teacher.update(self.step)
        if self.arousal is not None:
            probs = stats.get("router_probs")
            self.arousal.update(
                task.detach(), None if probs is None else probs.detach()[None], self.delta_phi_drive
            )
        self.step += 1
        return {
            "train_loss": task.detach(),
            "module_loss": module_ce.detach(),
            "grad_norm": norms,
            **{k: v.detach() for k, v in stats.items()},
        }

    @torch.no_grad()
    def evaluate(self) -> tuple[Tensor, Tensor]:
        """Validation on the fixed batches -> (task loss [], per-module CE [N]; NaN for a
        module that no validation sequence was routed to)."""
        self.model.eval()
        acc = _Accumulator()
        with self._autocast():
            for b in self.val_batches:
                _, task, module, _, _ = self._losses(b)
                acc.add({"task": task, "module": module})
        mean = acc.mean()
        return torch.tensor(mean["task"]), mean["module"]

    # ------------------------------------------------------------------ the loop

    def run(
        self,
        steps: int | None = None,
        callbacks: Iterable[Callback] = (),
        progress: bool = False,
    ) -> dict[str, Any]:
        """Train for ``steps`` more steps (default: up to ``train.steps``), logging to the run
        directory. Returns a summary (losses, throughput, run directory)."""
        sc, cfg = self.scenario, self.scenario.train
        end = min(cfg.steps, self.step + steps) if steps is not None else cfg.steps
        callbacks = list(callbacks)
        w = self.open_run()
        tokens_per_step = cfg.batch_size * self.corpus.block_size
        if self.step == 0:
            self._log(w, {"step": 0, "lr": 0.0}, None, self._eval_host(), callbacks)
        bar = _Progress(end, self.step, enabled=progress)
        acc = _Accumulator()
        t_start = t0 = time.perf_counter()
        with bar:
            while self.step < end:
                acc.add(self.train_step())
                step, last = self.step, self.step == end
                bar.advance(step)
                do_eval = step % cfg.eval_every == 0 or last
                if step % sc.log.every == 0 or do_eval:
                    train = acc.mean()  # the one host sync per log interval
                    dt = time.perf_counter() - t0
                    row = {
                        "step": step,
                        "lr": lr_at(step - 1, cfg),
                        "tokens_per_s": acc.n * tokens_per_step / dt,
                        "module_tokens_per_s": acc.n * self.module_tokens_per_step() / dt,
                    }
                    probes, module_probes = self._learning_probes(step, w)
                    row.update(probes)
                    if self.arousal is not None:  # arousal retunes the society here, not per step
                        a, focus = self.arousal.read()
                        row.update(arousal=a, focus=focus, **vars(self.knobs))
                        self.knobs = self._knobs(a)
                    val = self._eval_host() if do_eval else None
                    self._log(w, row, train, val, callbacks, module_probes)
                    if self._pending is not None:  # the row above still has the old layout
                        self.reorganize(*self._pending)
                        self._pending = None
                    bar.update(step, w.rows[-1], w.last_event)
                    acc = _Accumulator()
                    t0 = time.perf_counter()
                every = sc.log.checkpoint_every
                if last or (every and step % every == 0):
                    self.save_checkpoint(w.path / "checkpoint.pt")
        wall = time.perf_counter() - t_start
        summary = self.summary(wall)
        w.event("run_end", self.step, **summary)
        w.flush()
        return summary

    def _probe_size(self) -> int:
        sc = self.scenario
        sizes = [8] + [p.probe_sequences for p in (sc.emergence,) if p is not None]
        sizes += [p.samples for p in (sc.collapse,) if p is not None]
        return max(sizes)

    @torch.no_grad()
    def standalone_logits(self, batch: Batch) -> list[Tensor]:
        """Every module alone (no memory) on ``batch``: one [M, B, T, V] tensor per bank."""
        self.model.eval()
        with self._autocast():
            return [
                bank(batch.x.unsqueeze(0).expand(bank.n_modules, -1, -1)).logits.float()
                for bank in self.banks
            ]

    def _learning_probes(self, step: int, w: RunWriter) -> tuple[dict[str, Any], dict[str, list]]:
        """Emergence (φ, Δφ, θ) and collapse diagnostics when due; events go to events.jsonl.

        Runs at log steps only (``every`` is a multiple of ``log.every``): host reads are fine.
        """
        sc, row, per_module = self.scenario, {}, {}
        due_e = self.emergence is not None and step % sc.emergence.every == 0
        due_c = self.collapse is not None and step % sc.collapse.every == 0
        if not (due_e or due_c):
            return row, per_module
        logits = self.standalone_logits(self.probe)  # per bank [M, B, T, V]
        if due_e:
            phi = torch.cat([self.emergence.phi(z) for z in logits])  # [N, S, C]
            res = self.emergence.observe(phi)
            res["phi"] = phi
            self.delta_phi_drive = self.emergence.arousal_input
            row.update(
                delta_phi=res["delta_phi"],
                theta=res["theta"],
                e_pot=res["e_pot"],
                emergence_event=res["event"],
            )
            per_module["delta_phi"] = res["delta_phi_module"]
            if res["event"]:
                cause = f"Δφ {res['delta_phi']:.4g} > θ {res['theta']:.4g}"
                w.event("emergence", step, delta_phi=res["delta_phi"], theta=res["theta"],
                        e_pot=res["e_pot"], cause=cause)  # fmt: skip
                if sc.reorganize is not None:  # after this step's row is logged
                    self._pending = (step, logits, cause, res)
        if due_c:
            cfg = sc.collapse
            gen = torch.Generator(device=self.device).manual_seed(sc.seed + step)
            diag: dict[str, list] = {}
            for bank, z in zip(self.banks, logits, strict=True):
                prompt = self.probe.x[: cfg.samples, :4].unsqueeze(0).expand(bank.n_modules, -1, -1)
                samples = sample_bank(bank, prompt, cfg.sample_length, 1.0, gen)
                for k, v in diagnose(z, self.probe.y, samples, cfg).items():
                    diag.setdefault(k, []).extend(v.tolist())
            if self.society is not None and self.society.topology.cluster_size > 1:
                diag["disagreement"] = self._disagreement(torch.cat(logits)).tolist()
            per_module.update(
                entropy=diag["entropy"],
                top1_mass=diag["top1"],
                distinct_n=diag["distinct"],
                ece=diag["ece"],
                **({"disagreement": diag["disagreement"]} if "disagreement" in diag else {}),
            )
            for ev in self.collapse.check(diag["entropy"], diag["distinct"]):
                w.event("collapse", step, **ev)
            row["collapsed_modules"] = int(sum(self.collapse.collapsed))
        return row, per_module

    @torch.no_grad()
    def reorganize(self, step: int, logits: list[Tensor], cause: str, res: dict) -> None:
        """Run ``reorganize.actions`` in order after an emergence event and log each one.

        The actions (learning/actions.py) decide from the probe set's evidence — φ, probe loss
        and board writes per module — and ``apply_layout`` carries their layout out on the
        banks, the optimiser, the EMA teacher, the router and the topology, keeping every
        surviving module exactly. Each action is one ``reorganize`` event with the topology
        before and after; the graph after it goes to ``topology_step<step>_<i>_<action>.json``.
        """
        cfg = self.scenario.reorganize
        assert cfg is not None and self.emergence is not None
        gen = torch.Generator(device=self.device).manual_seed(self.scenario.seed + 7 * step)
        phi = res.get("phi")  # the probe's φ [N, S, C], if the caller has it
        if phi is None:
            phi = torch.cat([self.emergence.phi(z) for z in logits])
        phi = phi.flatten(1).float().cpu()  # [N, S·C]
        loss = torch.cat([module_cross_entropy(z, self.probe.y) for z in logits]).float().cpu()
        board = self.society is not None and self.society.slots > 0
        ev = Evidence(phi, loss, self._heard.clone() if board else None)
        topo = self._topology()
        limits = Limits.of(cfg, self._initial[0], self._initial[1])
        for i, name in enumerate(cfg.actions):
            before = topo.summary()
            layout = ACTIONS[name](topo, ev, cfg, limits)
            common = {"action": name, "cause": cause, "delta_phi": res["delta_phi"],
                      "theta": res["theta"]}  # fmt: skip
            if isinstance(layout, str):
                self.writer.event("reorganize", step, **common, skipped=layout)
                continue
            rows, parents = self.apply_layout(layout, gen, seed=self.scenario.seed + step + i)
            ev = ev.follow(rows, parents)
            topo = self._topology()
            graph = None
            if self.society is not None:
                graph = f"topology_step{step:06d}_{i}_{name}.json"
                self.writer.write_json(graph, topo.to_json())
            self.writer.event("reorganize", step, **common, **layout.detail, before=before,
                              after=topo.summary(), graph=graph)  # fmt: skip

    def _topology(self) -> Topology:
        """The society's topology, or one cluster of independent modules (built once, and
        again only when a relayout changed the banks)."""
        if self.society is not None:
            return self.society.topology
        counts = [b.n_modules for b in self.banks]
        if self._solo is None or self._solo.bank_totals != counts:
            self._solo = build_topology("ensemble", 1, counts)
        return self._solo

    @torch.no_grad()
    def apply_layout(
        self, layout: Layout, generator: torch.Generator | None = None, seed: int = 0
    ) -> tuple[Tensor, Tensor]:
        """Resize every bank (with its AdamW state and EMA rows), the router's cluster rows and
        the topology to ``layout``. Returns (rows [N_new]: old global id of each module, -1 for
        a new one; parents [N_new]: the old module a new one copies, -1 for survivors)."""
        cfg = self.scenario.reorganize
        noise = 0.0 if cfg is None else cfg.noise
        topo = self._topology()
        offsets = [topo.bank_offset(b) for b in range(topo.n_banks)]
        sizes, plans, perms, rows = bank_plans(topo.bank_of, offsets, layout.clusters)
        resizable = self.teacher is not None and getattr(self.teacher, "resizable", False)
        for b, (bank, plan) in enumerate(zip(self.banks, plans, strict=True)):
            teacher = self.teacher.banks[b] if resizable else None
            resize_bank(bank, plan, self.optimizer, noise=noise, generator=generator,
                        teacher_bank=teacher)  # fmt: skip
        parents = torch.tensor(
            [p + offsets[b] if s < 0 else -1 for b, pl in enumerate(plans)
             for s, p in zip(pl.source, pl.parent, strict=True)], dtype=torch.long
        )  # fmt: skip
        soc = self.society
        if soc is not None:
            adjacency = [
                None if a is None else a[perm][:, perm]
                for a, perm in zip(layout.adjacency, perms, strict=True)
            ]
            new = topo.relayout(sizes, adjacency, seed)
            if layout.router is not None and soc.router is not None:
                resize_rows(soc.router.gate, ["weight", "bias"], layout.router, self.optimizer,
                            noise=noise, generator=generator)  # fmt: skip
                soc.router.n_clusters = soc.router.gate.out_features = new.n_clusters
            soc.set_topology(new)
            if self.arousal is not None and self.arousal.n_clusters != new.n_clusters:
                self.arousal.resize(new.n_clusters)
        self.n_modules = sum(b.n_modules for b in self.banks)
        self._peers.clear()  # peer rows follow the new layout
        if self.collapse is not None:
            self.collapse.select_rows(rows)
        if self.emergence is not None:
            self.emergence.select_rows(rows)
        self._heard = self._heard[torch.where(rows >= 0, rows, parents)]  # a copy: its parent's
        return rows, parents

    def _disagreement(self, z: Tensor) -> Tensor:
        """JS disagreement of every module with its cluster mates: z [N, B, T, V] -> [N]."""
        topo = self.society.topology
        out = torch.zeros(z.shape[0])
        if topo.uniform:  # one batched call over all clusters
            ids = self.society.module_ids.flatten()
            dis = peer_disagreement(cluster_probs(z[ids], topo.n_clusters)).flatten()
            return out.index_copy_(0, ids.cpu(), dis.cpu())
        for ids in topo.clusters():  # a log-time loop over clusters of different sizes
            dis = peer_disagreement(cluster_probs(z[ids], 1)).flatten()
            out[ids] = dis.cpu()
        return out

    def _eval_host(self) -> dict[str, Any]:
        task, module = self.evaluate()
        return {"val_loss": task.float().item(), "module_val_loss": module.float().cpu()}

    def module_tokens_per_step(self) -> float:
        """Module-token passes per step at the current knobs: a token processed by one module
        in one round (what throughput and MFU count)."""
        tokens_per_step = self.scenario.train.batch_size * self.corpus.block_size
        if self.society is None:
            return tokens_per_step * self.n_modules
        soc, B = self.society, self.scenario.train.batch_size
        T = self.corpus.block_size
        plan, _ = soc.plan(self.knobs.rounds, self._cap(B))
        sizes = soc.topology.cluster_sizes
        return sum(sizes[f.cluster] for _, fs in plan.waves for f in fs) * self._cap(B) * T

    def _cap(self, B: int) -> int:
        soc = self.society
        if soc is None or soc.router is None:
            return B
        from brainnet.society.router import capacity

        return capacity(
            min(self.knobs.k, soc.topology.n_clusters),
            B,
            soc.topology.n_clusters,
            soc.cfg.router.capacity_factor,
        )

    def summary(self, wall_s: float) -> dict[str, Any]:
        rows = self.writer.rows if self.writer else []
        vals = [r["val_loss"] for r in rows if r["val_loss"] is not None]
        trains = [r for r in rows if r.get("tokens_per_s") is not None]
        return {
            "run_dir": str(self.run_dir),
            "steps": self.step,
            "initial_val_loss": vals[0] if vals else None,
            "final_val_loss": vals[-1] if vals else None,
            "final_train_loss": trains[-1]["train_loss"] if trains else None,
            "tokens_per_s": trains[-1]["tokens_per_s"] if trains else None,
            "module_tokens_per_s": trains[-1]["module_tokens_per_s"] if trains else None,
            "wall_s": round(wall_s, 3),
        }

    def open_run(self) -> RunWriter:
        if self.writer is None:
            sc = self.scenario
            self.writer = w = RunWriter(self.out_dir, sc.name)
            w.write_text("config.yaml", sc.to_yaml())
            w.write_json("vocab.json", self.corpus.vocab())
            if self.society is not None:
                w.write_json("topology.json", self.society.topology.to_json())
            if sc.log.tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self.tensorboard = SummaryWriter(str(w.path / "tensorboard"))
            per_module = {type(b).__name__: b.num_params_per_module() for b in self.banks}
            w.event(
                "run_start",
                self.step,
                scenario=sc.name,
                seed=sc.seed,
                device=str(self.device),
                n_modules=self.n_modules,
                params_per_module=per_module,
                params_total=sum(p.numel() for p in self.banks.parameters()),
                torch=torch.__version__,
            )
        return self.writer

    def _log(
        self,
        w: RunWriter,
        row: dict[str, Any],
        train: dict[str, Any] | None,
        val: dict[str, Any] | None,
        callbacks: list[Callback],
        module_probes: dict[str, list] | None = None,
    ) -> None:
        """Write one metrics row (+ one row per module) from host values."""
        train = train or {}
        module_train = train.pop("module_loss", None)
        norm = train.pop("grad_norm", None)
        writes = train.pop("board_writes", None)
        row = {
            **row,
            "train_loss": train.pop("train_loss", None),
            "val_loss": None if val is None else val["val_loss"],
            "grad_norm": None if norm is None else float(norm.mean()),
        }
        if self.society is not None and train:
            row.update(self._society_row(train))
        else:  # independent modules: the mean over modules
            for k in ("distill_loss", "warmup_replaced"):
                if train.get(k) is not None:
                    row[k] = float(train.pop(k).mean())
        module_val = None if val is None else val["module_val_loss"]
        types = [bank.cfg.type for bank in self.banks for _ in range(bank.n_modules)]
        if writes is not None:
            self._heard += torch.nan_to_num(writes.float().cpu())
        per_module = [
            {
                "step": row["step"],
                "module": m,
                "type": types[m],
                "cluster": None if self.society is None else self.society.topology.cluster_of(m),
                "train_loss": _num(module_train, m),
                "val_loss": _num(module_val, m),
                "grad_norm": _num(norm, m),
                "board_writes": _num(writes, m),
                **{k: _num(v, m) for k, v in (module_probes or {}).items()},
            }
            for m in range(self.n_modules)
        ]
        w.log(row, per_module)
        if self.tensorboard is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tensorboard.add_scalar(k, v, row["step"])
            self.tensorboard.flush()
        if val is not None:
            w.event("eval", row["step"], val_loss=row["val_loss"])
            w.flush()
        for cb in callbacks:
            cb(self, row)

    def _society_row(self, t: dict[str, Any]) -> dict[str, Any]:
        """Communication, routing and blackboard columns from one interval's mean stats."""
        soc = self.society
        assert soc is not None
        T, Dm, S = self.corpus.block_size, soc.message_dim, soc.slots
        kinds = ("mate", "input", "board_read", "board_write")
        msgs = {k: float(t.pop(f"messages_{k}")) for k in kinds}
        stream = T * Dm * 4  # bytes of one message stream (fp32)
        bytes_ = (msgs["mate"] + msgs["input"] + msgs["board_write"]) * stream
        bytes_ += msgs["board_read"] * stream * S
        plan, _ = soc.plan(self.knobs.rounds, self._cap(self.scenario.train.batch_size))
        out: dict[str, Any] = {
            "messages": sum(msgs.values()),
            **{f"messages_{k}": v for k, v in msgs.items()},
            "bytes": bytes_,
            "sim_time_ms": plan.makespan,
        }
        dl, dc = t.pop("domain_loss_sum"), t.pop("domain_count")
        out["domain_loss"] = (dl / dc.clamp(min=1e-9)).tolist()
        for k, v in t.items():
            out[k] = v.tolist() if isinstance(v, Tensor) else v
        return out

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "scenario": self.scenario.to_yaml(),
            "model": self.model.state_dict(),
            "arousal": None if self.arousal is None else self.arousal.state_dict(),
            "teacher": None if self.teacher is None else self.teacher.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "layout": self._layout_state(),
            "emergence": None if self.emergence is None else self.emergence.state_dict(),
            "collapse": None if self.collapse is None else self.collapse.state_dict(),
            "delta_phi_drive": self.delta_phi_drive,
            "data_rng": self.data_rng.get_state(),
            "torch_rng": torch.get_rng_state(),
        }

    def _layout_state(self) -> dict[str, Any]:
        """The society's shape after any reorganisation (a checkpoint restores it first)."""
        topo = self._topology()
        return {"sizes": topo.sizes, "adjacency": topo.adjacency.cpu(), "heard": self._heard}

    def _restore_layout(self, state: dict[str, Any]) -> None:
        """Give banks, router and topology the checkpoint's shape (values are loaded next)."""
        sizes, adj = state["sizes"], state["adjacency"]
        topo = self._topology()
        if sizes != topo.sizes:
            clusters: list[list[Ref]] = [  # placeholders: copies of each bank's first module
                [New(topo.bank_offset(b)) for b, n_b in enumerate(s) for _ in range(n_b)]
                for s in sizes
            ]
            n = [sum(s) for s in sizes]
            C, C_old = len(sizes), topo.n_clusters
            router = None if C == C_old else RowPlan([-1] * C, [0] * C)
            adjacency = [adj[c, : n[c], : n[c]] for c in range(C)]
            self.apply_layout(Layout(clusters, adjacency, router, {}))
        self._heard = state["heard"].clone()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("layout") is not None:
            self._restore_layout(state["layout"])
        self.model.load_state_dict(state["model"])
        if self.teacher is not None:
            self.teacher.load_state_dict(state["teacher"])
        if self.arousal is not None:
            self.arousal.load_state_dict(state["arousal"])
            self.knobs = self._knobs(self.arousal.read()[0])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.emergence is not None and state.get("emergence") is not None:
            self.emergence.load_state_dict(state["emergence"])
        if self.collapse is not None and state.get("collapse") is not None:
            self.collapse.load_state_dict(state["collapse"])
        self.delta_phi_drive = float(state.get("delta_phi_drive", 0.0))
        self.data_rng.set_state(state["data_rng"])
        torch.set_rng_state(state["torch_rng"])
        self.step = int(state["step"])

    def save_checkpoint(self, path: str | Path) -> None:
        save_checkpoint(path, self.state_dict())
        if self.writer is not None:
            self.writer.event("checkpoint", self.step, path=Path(path).name)

    @classmethod
    def resume(cls, checkpoint: str | Path, *, out_dir: str | Path | None = None) -> Simulation:
        """A simulation restored from a checkpoint (file or run directory): same scenario,
        weights, optimiser state and RNG streams, so it continues exactly where it stopped."""
        state = load_checkpoint(checkpoint)
        sim = cls(load_scenario(_yaml_dict(state["scenario"])), out_dir=out_dir)
        sim.load_state_dict(state)
        return sim


def _no_timer(phase: str) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext()


def _yaml_dict(text: str) -> dict[str, Any]:
    import yaml

    return yaml.safe_load(text)


def _num(v: Tensor | list | None, i: int) -> float | None:
    if v is None:
        return None
    x = float(v[i])
    return None if x != x else x  # NaN (nothing to measure) -> null


class _Accumulator:
    """Sums a step's device tensors over a log interval; ``mean`` is the one host sync.

    NaN entries (a module that processed no sequence) are skipped in the mean."""

    def __init__(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.counts: dict[str, Tensor] = {}
        self.n = 0

    def add(self, stats: dict[str, Tensor]) -> None:
        for k, v in stats.items():
            v = v.float()
            ok = ~torch.isnan(v)
            if k in self.sums:
                self.sums[k] = self.sums[k] + torch.where(ok, v, 0.0)
                self.counts[k] = self.counts[k] + ok
            else:
                self.sums[k], self.counts[k] = torch.where(ok, v, 0.0), ok.float()
        self.n += 1

    def mean(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in self.sums.items():
            m = (v / self.counts[k]).cpu()  # 0/0 -> NaN where nothing was measured
            out[k] = float(m) if m.dim() == 0 else m
        return out


class _Progress:
    """A rich progress bar with step, losses and throughput (or nothing when disabled)."""

    def __init__(self, total: int, start: int, enabled: bool) -> None:
        self.enabled = enabled
        if enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            self.p = Progress(
                TextColumn("[bold]step"),
                MofNCompleteColumn(),
                BarColumn(),
                TextColumn("{task.fields[info]}"),
                TimeRemainingColumn(),
            )
            self.task = self.p.add_task("train", total=total, completed=start, info="")
        self.val: float | None = None

    def __enter__(self) -> _Progress:
        if self.enabled:
            self.p.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.enabled:
            self.p.__exit__(*exc)

    def advance(self, step: int) -> None:
        if self.enabled:
            self.p.update(self.task, completed=step)

    def update(self, step: int, row: dict[str, Any], last_event: str = "") -> None:
        """Show step, losses, throughput and, when the run has them, arousal, Δφ, last event."""
        if not self.enabled:
            return
        if row["val_loss"] is not None:
            self.val = row["val_loss"]
        parts = [f"loss {row['train_loss']:.3f}"]
        if self.val is not None:
            parts.append(f"val {self.val:.3f}")
        parts.append(f"{row['tokens_per_s']:,.0f} tok/s")
        if row.get("arousal") is not None:
            parts.append(f"arousal {row['arousal']:.2f} (k={row['k']}, R={row['rounds']})")
        if row.get("delta_phi") is not None:
            parts.append(f"Δφ {row['delta_phi']:.3f}")
        if last_event:
            parts.append(last_event)
        self.p.update(self.task, completed=step, info="  ".join(parts))


def _peer_rows(topo: Topology, b: int, device: torch.device) -> tuple[Tensor, Tensor | None]:
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
