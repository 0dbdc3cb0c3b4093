"""Simulation: a scenario brought to life — corpus, society, optimiser, run directory — and
the loop that trains it.

One step (docs/architecture.md has the whole flow)::

    batch [B, T] ──▶ Society (router, clusters, blackboard, merge; or independent modules)
                 ──▶ consolidation when due (EMA / peer / frozen-teacher distillation)
                 ──▶ objective ──▶ backward ──▶ per-module grad clip ──▶ AdamW ──▶ EMA update
                 ──▶ arousal feels the loss, the routing and the last Δφ

Losses stay on the device; the host reads them only at log intervals, where the probes run,
arousal retunes the society, and an emergence event may reorganise it.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor

from brainnet.checkpoint import load_checkpoint, newest_intact, rotate, save_checkpoint
from brainnet.config import Scenario, ScenarioError, load_scenario
from brainnet.data import Batch, build_corpus
from brainnet.engine.allocator import keep_freed_memory
from brainnet.engine.device import resolve_device, seed_everything
from brainnet.engine.guard import Guard
from brainnet.engine.logbook import Accumulator, Callback, Logbook, Progress
from brainnet.engine.optim import build_optimizer, clip_module, clip_per_module, lr_at
from brainnet.engine.precision import autocast, autocast_dtype
from brainnet.engine.relayout import Relayout
from brainnet.learning.consolidation import Consolidation
from brainnet.learning.objective import objective
from brainnet.learning.probes import Probes
from brainnet.metrics import RunWriter
from brainnet.society import Arousal, Knobs, Society, StepOut, accounting

#: ``timer(phase)`` -> a context manager around a phase of ``train_step`` ("teacher_update")
Timer = Callable[[str], contextlib.AbstractContextManager]


class Simulation:
    """Build everything a scenario describes and train it.

    >>> sim = Simulation(load_scenario("quickstart", overrides={"train.steps": 20}))
    >>> summary = sim.run()
    """

    def __init__(
        self,
        scenario: Scenario | str,
        *,
        out_dir: str | Path | None = None,
        run_dir: str | Path | None = None,
    ) -> None:
        """``out_dir``: parent of a new ``<name>-<time>`` run directory (default: the scenario's
        ``out_dir``); ``run_dir``: write to exactly this directory instead (new or empty)."""
        sc = scenario if isinstance(scenario, Scenario) else load_scenario(scenario)
        self.scenario = sc
        seed_everything(sc.seed)
        self.device = resolve_device(sc.device)
        if self.device.type == "cpu":
            keep_freed_memory()  # reuse freed activations instead of page-faulting new ones
        self.autocast_dtype = autocast_dtype(sc.precision, self.device)
        self.corpus = build_corpus(sc.corpus, sc.seed)
        V, T = self.corpus.vocab_size, self.corpus.block_size
        c = self.corpus
        self.society = Society(sc, V, T, len(c.domains), c.n_fields, c.blank_token).to(self.device)
        self.banks = self.society.banks
        self.arousal: Arousal | None = None
        self.knobs = Knobs.fixed(self.society.cfg)
        if sc.society is not None and self.society.topology.merged:  # independent: no arousal
            self.arousal = Arousal(sc.society.arousal, self.society.topology.n_clusters,
                                   self.device)  # fmt: skip
            self.knobs = self.arousal.knobs(self.arousal.read()[0], sc.society)
        extra = [self.society.router] if self.society.router is not None else []
        self.optimizer = build_optimizer(list(self.banks), sc.train, self.device, extra)
        self.step = 0
        #: ``timer(phase)`` wraps a phase of ``train_step``; the bench times phases with it
        self.timer: Timer = _no_timer
        # data sampling has its own RNG stream: model-side randomness never shifts the batches
        self.data_rng = torch.Generator().manual_seed(sc.seed + 1)
        val_rng = torch.Generator().manual_seed(sc.seed + 2)
        self.val_batches = [
            self.corpus.batch("val", sc.train.batch_size, val_rng).to(self.device)
            for _ in range(sc.train.eval_batches)
        ]
        self.probes = Probes(sc, self.society, self.corpus, self.device, self._autocast)
        self.consolidation = Consolidation(sc, self.society, self.corpus, self.device)
        self.relayout = Relayout(sc, self.society, self.optimizer, self.consolidation,
                                 self.probes, self.arousal)  # fmt: skip
        self._checkpoint_step = 0  # the step the run directory's checkpoint.pt holds
        rel = sc.reliability
        self.guard = Guard(rel.on_nonfinite, rel.max_strikes, self.society, self.optimizer,
                           self.consolidation.teacher, sc.seed)  # fmt: skip
        self._forward = torch.compile(self.society) if sc.compile else self.society
        self.out_dir = Path(out_dir if out_dir is not None else sc.out_dir)
        self.logbook = Logbook(sc, self.out_dir, None if run_dir is None else Path(run_dir))

    # ------------------------------------------------------------------ what it holds

    @property
    def run_dir(self) -> Path | None:
        return None if self.writer is None else self.writer.path

    @property
    def writer(self) -> RunWriter | None:
        return self.logbook.writer

    @property
    def n_modules(self) -> int:
        return self.society.n_modules

    @property
    def teacher(self) -> Any:
        """The distillation teacher (EMA or frozen), or None."""
        return self.consolidation.teacher

    @property
    def probe(self) -> Batch:
        """The fixed probe set of the learning probes."""
        return self.probes.batch

    def module_tokens_per_step(self) -> float:
        """Module-token passes per step at the current knobs: a token processed by one module
        in one round (what throughput and MFU count)."""
        return self.society.module_tokens(self.knobs, self.scenario.train.batch_size)

    def open_run(self) -> RunWriter:
        """The run directory (created on first use)."""
        return self.logbook.open(self.society, self.corpus, self.step, self.device)

    # ------------------------------------------------------------------ the step

    def _autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.device, self.autocast_dtype)

    def forward(self, batch: Batch) -> StepOut:
        """The society's step on ``batch`` at the current knobs (compiled if asked)."""
        return self._forward(batch, self.knobs)

    def train_step(self) -> dict[str, Tensor]:
        """One optimiser step. Returns device tensors (no host sync): task loss [], module CE
        [N], grad norm [N] and the society's stats."""
        cfg, dcfg = self.scenario.train, self.scenario.distill
        self.corpus.at_step(self.step)
        batch = self.corpus.batch("train", cfg.batch_size, self.data_rng).to(self.device)
        batch = batch.weighted(cfg.answer_weight)  # answer targets weigh more (1: unchanged)
        lr = lr_at(self.step, cfg) * self.knobs.lr_scale  # arousal's multiplier (1: off)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        self.society.train()
        with self._autocast():
            out = self.forward(batch)
            stats = dict(out.stats)
            kd = None
            if self.consolidation.due(self.step + 1):  # reuses the step's memory-free pass
                kd, _ = self.consolidation.losses(batch, out, self.step)  # [N]
                stats["distill_loss"] = kd.detach()
                stats.update(self.consolidation.replaced())
            loss = objective(out, self.society.cfg.module_loss_weight, kd, dcfg.labels)
        loss.backward()
        norms = torch.cat([clip_per_module(b, cfg.grad_clip) for b in self.banks])
        if self.society.router is not None:
            clip_module(self.society.router, cfg.grad_clip)
        task = out.task_loss.detach()
        if self.guard.finite(loss, norms):
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            if self.teacher is not None:
                with self.timer("teacher_update"):
                    self.teacher.update(self.step)
            if self.arousal is not None:
                probs = stats.get("router_probs")
                probs = None if probs is None else probs.detach()[None]
                self.arousal.update(task, probs, self.probes.arousal_input)
        else:  # dropped whole: no module learns from a non-finite step (engine/guard.py)
            self.optimizer.zero_grad(set_to_none=True)
            self.guard.quarantine(self.step, batch, self.writer)
        self.step += 1
        return {
            "train_loss": task,
            "module_loss": out.module_loss.detach(),
            "grad_norm": norms,
            **{k: v.detach() for k, v in stats.items()},
        }

    @torch.no_grad()
    def evaluate(self) -> tuple[Tensor, Tensor, dict[str, Any]]:
        """Validation on the fixed batches -> (task loss [], per-module CE [N]; NaN for a
        module that no validation sequence was routed to; the answer-token columns, {} for
        a corpus without answers)."""
        self.society.eval()
        acc = Accumulator()
        with self._autocast():
            for b in self.val_batches:
                out = self.forward(b)
                answers = {k: v for k, v in out.stats.items() if k.startswith("answer_")}
                acc.add({"task": out.task_loss, "module": out.module_loss, **answers})
        mean = acc.mean()
        answers = accounting.answers(mean)  # answer-token columns (host values)
        return torch.tensor(mean["task"]), mean["module"], answers

    def _eval_host(self) -> dict[str, Any]:
        task, module, answers = self.evaluate()
        answers = {f"val_{k}": v for k, v in answers.items()}
        return {"val_loss": task.float().item(), "module_val_loss": module.float().cpu(),
                **answers}  # fmt: skip

    def standalone_logits(self, batch: Batch) -> list[Tensor]:
        """Every module alone (no memory) on ``batch``: one [M, B, T, V] tensor per bank."""
        return self.probes.standalone_logits(batch)

    def reorganize(self, step: int, logits: list[Tensor], cause: str, res: dict) -> None:
        """Answer an emergence event with ``reorganize.actions`` (see ``Relayout``)."""
        self.relayout.reorganize(self.open_run(), step, logits, cause, res)

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
            self._log({"step": 0, "lr": 0.0}, None, self._eval_host(), callbacks)
        bar = Progress(end, self.step, enabled=progress)
        acc = Accumulator()
        t_start = t0 = time.perf_counter()
        with bar:
            while self.step < end:
                acc.add(self.train_step())
                step, last = self.step, self.step == end
                bar.advance(step)
                # rows and evaluations follow the schedule, not where this call stops, so a run
                # stopped at a logged step and resumed logs exactly what a straight run logs
                do_eval = step % cfg.eval_every == 0 or step == cfg.steps
                if step % sc.log.every == 0 or do_eval:
                    train = acc.mean()  # the one host sync per log interval
                    dt = time.perf_counter() - t0
                    row = {
                        "step": step,
                        "lr": lr_at(step - 1, cfg) * self.knobs.lr_scale,  # what it ran with
                        "tokens_per_s": acc.n * tokens_per_step / dt,
                        "module_tokens_per_s": acc.n * self.module_tokens_per_step() / dt,
                    }
                    probes, module_probes, event = self.probes.run(step, w)
                    row.update(probes)
                    knobs = self.knobs  # what the interval ran with
                    if self.arousal is not None:  # arousal retunes the society here, not per step
                        a, focus = self.arousal.read()
                        row.update(arousal=a, focus=focus, **knobs.row())
                        self.knobs = self.arousal.knobs(a, sc.society)
                    val = self._eval_host() if do_eval else None
                    self._log(row, train, val, callbacks, module_probes, knobs, acc.n)
                    if event is not None and sc.reorganize is not None:  # the row: old layout
                        self.reorganize(*event)
                        if self.arousal is not None:  # the focus prior follows the new C
                            self.knobs = self.arousal.knobs(a, sc.society)
                    bar.update(step, w.rows[-1], w.last_event)
                    acc = Accumulator()
                    t0 = time.perf_counter()
                every = sc.log.checkpoint_every
                if last or (every and step % every == 0):
                    self.save_checkpoint(w.path / "checkpoint.pt")
        summary = self.logbook.summary(self.step, time.perf_counter() - t_start)
        w.event("run_end", self.step, **summary)
        w.flush()
        return summary

    def _log(
        self,
        row: dict[str, Any],
        train: dict[str, Any] | None,
        val: dict[str, Any] | None,
        callbacks: list[Callback],
        module_probes: dict[str, list] | None = None,
        knobs: Knobs | None = None,
        steps: int = 1,
    ) -> None:
        writes = self.logbook.write(self.society, knobs or self.knobs, row, train, val,
                                    module_probes, steps)  # fmt: skip
        if writes is not None:
            self.relayout.hear(writes)
        for cb in callbacks:
            cb(self, self.logbook.writer.rows[-1])

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "scenario": self.scenario.to_yaml(),
            "model": self.society.state_dict(),
            "arousal": None if self.arousal is None else self.arousal.state_dict(),
            "teacher": self.consolidation.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "layout": self.relayout.state_dict(),
            **self.probes.state_dict(),
            "guard": {"strikes": dict(self.guard.strikes), "blind": self.guard.blind},
            "data_rng": self.data_rng.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("layout") is not None:
            self.relayout.load_state_dict(state["layout"])
        model = state["model"]
        if not any(k.startswith("banks.") for k in model):  # independent modules, before 0.2
            model = {f"banks.{k}": v for k, v in model.items()}
        self.society.load_state_dict(model)
        self.consolidation.load_state_dict(state["teacher"])
        if self.arousal is not None:
            self.arousal.load_state_dict(state["arousal"])
            self.knobs = self.arousal.knobs(self.arousal.read()[0], self.scenario.society)
        self.optimizer.load_state_dict(state["optimizer"])
        self.probes.load_state_dict(state)
        guard = state.get("guard") or {}
        self.guard.strikes, self.guard.blind = dict(guard.get("strikes", {})), guard.get("blind", 0)
        self.data_rng.set_state(state["data_rng"])
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.step = int(state["step"])

    def save_checkpoint(self, path: str | Path) -> None:
        """Write a checkpoint; in the run directory the metrics are flushed first (so the
        rows on disk always reach the newest checkpoint) and older checkpoints are kept as
        ``log.keep_checkpoints`` says."""
        path = Path(path)
        w = self.writer
        if w is not None and path.parent == w.path:
            w.flush()
            rotate(w.path, self._checkpoint_step, self.scenario.log.keep_checkpoints)
        save_checkpoint(path, self.state_dict())
        self._checkpoint_step = self.step
        if w is not None:
            w.event("checkpoint", self.step, path=path.name)

    @classmethod
    def resume_in_place(cls, run_dir: str | Path, steps: int | None = None) -> Simulation:
        """Go on with the run in ``run_dir``, in that directory: from its newest intact
        checkpoint, with its own resolved scenario (``steps``: a new total of training steps,
        to extend it). Metrics are appended after the checkpoint's step; events.jsonl records
        the resume."""
        run_dir = Path(run_dir)
        path, state, skipped = newest_intact(run_dir)
        latest = run_dir / "checkpoint.pt"
        if path != latest and latest.exists():  # damaged: out of the way of the next rotation
            os.replace(latest, run_dir / f"checkpoint.damaged-{time.strftime('%Y%m%d-%H%M%S')}.pt")
        sc = load_scenario(yaml.safe_load(state["scenario"]))
        at = int(state["step"])
        new = _extended(sc, steps, at, run_dir)
        sim = cls._restored(new, state, out_dir=run_dir.parent)
        sim._checkpoint_step = at
        w = sim.logbook.reopen(run_dir, at, checkpoint=path.name, skipped=skipped,
                               steps=new.train.steps)  # fmt: skip
        if new is not sc:
            w.write_text("config.yaml", new.to_yaml())
        return sim

    @classmethod
    def resume(
        cls,
        checkpoint: str | Path,
        *,
        out_dir: str | Path | None = None,
        run_dir: str | Path | None = None,
    ) -> Simulation:
        """A simulation restored from a checkpoint (file or run directory): same scenario,
        weights, optimiser state and RNG streams, so it continues exactly where it stopped."""
        state = load_checkpoint(checkpoint)
        sc = load_scenario(yaml.safe_load(state["scenario"]))
        return cls._restored(sc, state, out_dir=out_dir, run_dir=run_dir)

    @classmethod
    def _restored(cls, sc: Scenario, state: dict[str, Any], **dirs: Any) -> Simulation:
        """A simulation of ``sc`` given a checkpoint's ``state`` (both resumes)."""
        sim = cls(sc, **dirs)
        sim.load_state_dict(state)
        return sim


def _extended(sc: Scenario, steps: int | None, at: int, where: Path) -> Scenario:
    """The checkpoint's scenario, with ``train.steps`` raised to ``steps`` if given."""
    if steps is None or steps == sc.train.steps:
        return sc
    if steps < at:
        raise ScenarioError([f"--steps = {steps}: the run in {str(where)!r} is at step {at}; "
                             f"allowed: a total of at least {at} steps"])  # fmt: skip
    return load_scenario(sc.model_dump(mode="json"), {"train.steps": steps})


def _no_timer(phase: str) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext()
