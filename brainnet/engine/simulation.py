"""Simulation: a scenario brought to life — corpus, banks, optimiser, run directory — and its step.

The step (this issue's shape; the society issue inserts router, clusters, blackboard, arousal
between "batch" and "loss"):

    batch [B, T] ──▶ every bank: tokens [M, B, T] ──▶ logits [M, B, T, V] ──▶ CE per module [M]
                 ──▶ sum over modules, backward (one batched backward per bank)
                 ──▶ per-module grad clip ──▶ AdamW (fused on CUDA, foreach on CPU)

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

from brainnet.config import Scenario, ScenarioError, load_scenario
from brainnet.data import Batch, build_corpus
from brainnet.engine.checkpoint import load_checkpoint, save_checkpoint
from brainnet.engine.optim import build_optimizer, clip_per_module, lr_at
from brainnet.metrics import RunWriter
from brainnet.modules import build_bank
from brainnet.modules.bank import module_cross_entropy

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
        bf16 = sc.precision == "bf16" or (sc.precision == "auto" and self.device.type == "cuda")
        self.autocast_dtype = torch.bfloat16 if bf16 else None
        self.corpus = build_corpus(sc.corpus, sc.seed)
        self.banks = nn.ModuleList(
            build_bank(g, self.corpus.vocab_size, self.corpus.block_size) for g in sc.modules
        ).to(self.device)
        self.optimizer = build_optimizer(list(self.banks), sc.train, self.device)
        self.n_modules = sum(b.n_modules for b in self.banks)
        self.step = 0
        # data sampling has its own RNG stream: model-side randomness never shifts the batches
        self.data_rng = torch.Generator().manual_seed(sc.seed + 1)
        val_rng = torch.Generator().manual_seed(sc.seed + 2)
        self.val_batches = [
            self.corpus.batch("val", sc.train.batch_size, val_rng).to(self.device)
            for _ in range(sc.train.eval_batches)
        ]
        self._losses = torch.compile(self.module_losses) if sc.compile else self.module_losses
        self.out_dir = Path(out_dir if out_dir is not None else sc.out_dir)
        self.writer: RunWriter | None = None

    # ------------------------------------------------------------------ the step

    @property
    def run_dir(self) -> Path | None:
        return None if self.writer is None else self.writer.path

    def module_losses(self, batch: Batch) -> Tensor:
        """Cross-entropy of every module on ``batch`` -> [n_modules]. One call per bank."""
        out = []
        for bank in self.banks:  # one iteration per module TYPE; all its modules run at once
            tokens = batch.x.unsqueeze(0).expand(bank.n_modules, -1, -1)  # [M, B, T]
            out.append(module_cross_entropy(bank(tokens).logits, batch.y))
        return torch.cat(out)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def train_step(self) -> tuple[Tensor, Tensor]:
        """One optimiser step. Returns per-module train loss and grad norm, [n_modules] each,
        on the device (no host sync)."""
        cfg = self.scenario.train
        batch = self.corpus.batch("train", cfg.batch_size, self.data_rng).to(self.device)
        lr = lr_at(self.step, cfg)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        self.banks.train()
        with self._autocast():
            losses = self._losses(batch)
        # sum, not mean: each module's gradient is that of its own mean loss, whatever M is
        losses.sum().backward()
        norms = torch.cat([clip_per_module(b, cfg.grad_clip) for b in self.banks])
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return losses.detach(), norms

    @torch.no_grad()
    def evaluate(self) -> Tensor:
        """Validation loss of every module on the fixed validation batches -> [n_modules]."""
        self.banks.eval()
        with self._autocast():
            total = sum(self.module_losses(b) for b in self.val_batches)
        return total / len(self.val_batches)

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
        w = self._open_writer()
        tokens_per_step = cfg.batch_size * self.corpus.block_size
        if self.step == 0:
            val = self.evaluate().float().cpu()
            self._log(
                w,
                {
                    "step": 0,
                    "lr": 0.0,
                    "train_loss": None,
                    "val_loss": val.mean().item(),
                    "grad_norm": None,
                    "tokens_per_s": None,
                    "module_tokens_per_s": None,
                },
                None,
                val,
                None,
                callbacks,
            )
        bar = _Progress(end, self.step, enabled=progress)
        acc_loss = acc_norm = None
        n_acc, t_start, t0 = 0, time.perf_counter(), time.perf_counter()
        with bar:
            while self.step < end:
                losses, norms = self.train_step()
                acc_loss = losses if acc_loss is None else acc_loss + losses
                acc_norm = norms if acc_norm is None else acc_norm + norms
                n_acc += 1
                step, last = self.step, self.step == end
                bar.advance(step)
                do_eval = step % cfg.eval_every == 0 or last
                if step % sc.log.every == 0 or do_eval:
                    train = (acc_loss / n_acc).float().cpu()  # the one host sync per log
                    norm = (acc_norm / n_acc).float().cpu()
                    dt = time.perf_counter() - t0
                    val = self.evaluate().float().cpu() if do_eval else None
                    row = {
                        "step": step,
                        "lr": lr_at(step - 1, cfg),
                        "train_loss": train.mean().item(),
                        "val_loss": None if val is None else val.mean().item(),
                        "grad_norm": norm.mean().item(),
                        "tokens_per_s": n_acc * tokens_per_step / dt,
                        "module_tokens_per_s": n_acc * tokens_per_step * self.n_modules / dt,
                    }
                    self._log(w, row, train, val, norm, callbacks)
                    bar.update(step, row)
                    acc_loss = acc_norm = None
                    n_acc, t0 = 0, time.perf_counter()
                every = sc.log.checkpoint_every
                if last or (every and step % every == 0):
                    self.save_checkpoint(w.path / "checkpoint.pt")
        wall = time.perf_counter() - t_start
        summary = self.summary(wall)
        w.event("run_end", self.step, **summary)
        w.flush()
        return summary

    def summary(self, wall_s: float) -> dict[str, Any]:
        rows = self.writer.rows if self.writer else []
        vals = [r["val_loss"] for r in rows if r["val_loss"] is not None]
        trains = [r for r in rows if r["tokens_per_s"] is not None]
        return {
            "run_dir": str(self.run_dir),
            "steps": self.step,
            "initial_val_loss": vals[0] if vals else None,
            "final_val_loss": vals[-1] if vals else None,
            "final_train_loss": trains[-1]["train_loss"] if trains else None,
            "tokens_per_s": trains[-1]["tokens_per_s"] if trains else None,
            "wall_s": round(wall_s, 3),
        }

    def _open_writer(self) -> RunWriter:
        if self.writer is None:
            sc = self.scenario
            self.writer = w = RunWriter(self.out_dir, sc.name)
            w.write_text("config.yaml", sc.to_yaml())
            w.write_json("vocab.json", self.corpus.vocab())
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
        train: Tensor | None,
        val: Tensor | None,
        norm: Tensor | None,
        callbacks: list[Callback],
    ) -> None:
        types = [g.type for g in self.scenario.modules for _ in range(g.count)]
        module_rows = [
            {
                "step": row["step"],
                "module": m,
                "type": types[m],
                "train_loss": None if train is None else train[m].item(),
                "val_loss": None if val is None else val[m].item(),
                "grad_norm": None if norm is None else norm[m].item(),
            }
            for m in range(self.n_modules)
        ]
        w.log(row, module_rows)
        if val is not None:
            w.event("eval", row["step"], val_loss=row["val_loss"])
            w.flush()
        for cb in callbacks:
            cb(self, row)

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "scenario": self.scenario.to_yaml(),
            "banks": [b.state_dict() for b in self.banks],
            "optimizer": self.optimizer.state_dict(),
            "data_rng": self.data_rng.get_state(),
            "torch_rng": torch.get_rng_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for bank, sd in zip(self.banks, state["banks"], strict=True):
            bank.load_state_dict(sd)
        self.optimizer.load_state_dict(state["optimizer"])
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


def _yaml_dict(text: str) -> dict[str, Any]:
    import yaml

    return yaml.safe_load(text)


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

    def update(self, step: int, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if row["val_loss"] is not None:
            self.val = row["val_loss"]
        val = "" if self.val is None else f"  val {self.val:.3f}"
        info = f"loss {row['train_loss']:.3f}{val}  {row['tokens_per_s']:,.0f} tok/s"
        self.p.update(self.task, completed=step, info=info)
