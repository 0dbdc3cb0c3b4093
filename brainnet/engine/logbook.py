"""The logbook: what a run writes while it trains — the run directory's first files, one
metrics row per log interval (and one per module), TensorBoard scalars, the progress bar.

Training keeps its numbers on the device; ``Accumulator`` sums each step's tensors over a log
interval and ``mean`` is the one host sync per interval.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from brainnet.config import Scenario, ScenarioError
from brainnet.data import Corpus
from brainnet.metrics import RunWriter
from brainnet.society import Knobs, Society


class Logbook:
    """Opens the run directory and turns interval means into metrics rows."""

    def __init__(self, sc: Scenario, out_dir: Path, run_dir: Path | None = None) -> None:
        self.sc = sc
        self.out_dir = out_dir
        self.run_dir = run_dir  # None: a new <out_dir>/<name>-<time>
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

    def open(self, society: Society, corpus: Corpus, step: int, device: torch.device) -> RunWriter:
        """The run directory (created on first use) with config, vocabulary, topology and the
        run_start event."""
        if self.writer is None:
            sc = self.sc
            if self.run_dir is not None:
                self.writer = w = RunWriter(path=self.run_dir)
            else:
                self.writer = w = RunWriter(self.out_dir, sc.name)
            w.write_text("config.yaml", sc.to_yaml())
            w.write_json("vocab.json", corpus.vocab())
            if society.topology.merged:
                w.write_json("topology.json", society.topology.to_json())
            if sc.log.tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self.tensorboard = SummaryWriter(str(w.path / "tensorboard"))
            per_module = {type(b).__name__: b.num_params_per_module() for b in society.banks}
            w.event("run_start", step, scenario=sc.name, seed=sc.seed, device=str(device),
                    n_modules=society.n_modules, params_per_module=per_module,
                    params_total=sum(p.numel() for p in society.banks.parameters()),
                    torch=torch.__version__)  # fmt: skip
        return self.writer

    def reopen(self, path: Path, step: int, **fields: Any) -> RunWriter:
        """Go on writing into the existing run directory ``path`` from ``step`` (a ``resume``
        event with ``fields``: from which checkpoint, steps)."""
        self.writer = w = RunWriter.reopen(path, step)
        w.event("resume", step, **fields, dropped_events=w.dropped_events)
        if self.sc.log.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(str(w.path / "tensorboard"))
        return w

    def write(
        self,
        society: Society,
        knobs: Knobs,
        row: dict[str, Any],
        train: dict[str, Any] | None,
        val: dict[str, Any] | None,
        module_probes: dict[str, list] | None = None,
        steps: int = 1,
    ) -> Tensor | None:
        """Write one metrics row (+ one row per module) from host values; the interval ran
        ``steps`` optimiser steps at ``knobs``. Returns the interval's board writes per module
        [N] (or None)."""
        assert self.writer is not None
        train = dict(train or {})
        module_train = train.pop("module_loss", None)
        norm = train.pop("grad_norm", None)
        writes = train.pop("board_writes", None)
        row = {
            **row,
            "train_loss": train.pop("train_loss", None),
            "val_loss": None if val is None else val["val_loss"],
            "grad_norm": None if norm is None else float(norm.mean()),
            **{k: v for k, v in (val or {}).items() if k.startswith("val_answer")},
            **{k: v for k, v in (val or {}).items() if k.startswith("val_domain_answer")},
        }
        if train:
            row.update(society.interval_row(train, knobs, self.sc.train.batch_size, steps,
                                            seed=self.sc.seed + row["step"]))  # fmt: skip
        module_val = None if val is None else val["module_val_loss"]
        topo = society.topology
        types = [bank.cfg.type for bank in society.banks for _ in range(bank.n_modules)]
        per_module = [
            {
                "step": row["step"],
                "module": m,
                "type": types[m],
                "cluster": topo.cluster_of(m) if topo.merged else None,
                "train_loss": _num(module_train, m),
                "val_loss": _num(module_val, m),
                "grad_norm": _num(norm, m),
                "board_writes": _num(writes, m),
                **{k: _num(v, m) for k, v in (module_probes or {}).items()},
            }
            for m in range(society.n_modules)
        ]
        self.writer.log(row, per_module)
        if self.tensorboard is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tensorboard.add_scalar(k, v, row["step"])
            self.tensorboard.flush()
        if val is not None:
            self.writer.event("eval", row["step"], val_loss=row["val_loss"])
            self.writer.flush()
        return writes

    def summary(self, step: int, wall_s: float) -> dict[str, Any]:
        rows = self.writer.rows if self.writer else []
        vals = [r["val_loss"] for r in rows if r["val_loss"] is not None]
        trains = [r for r in rows if r.get("tokens_per_s") is not None]
        return {
            "run_dir": str(None if self.writer is None else self.writer.path),
            "steps": step,
            "initial_val_loss": vals[0] if vals else None,
            "final_val_loss": vals[-1] if vals else None,
            "final_train_loss": trains[-1]["train_loss"] if trains else None,
            "tokens_per_s": trains[-1]["tokens_per_s"] if trains else None,
            "module_tokens_per_s": trains[-1]["module_tokens_per_s"] if trains else None,
            "wall_s": round(wall_s, 3),
        }


def _num(v: Tensor | list | None, i: int) -> float | None:
    if v is None:
        return None
    x = float(v[i])
    return None if x != x else x  # NaN (nothing to measure) -> null


class Accumulator:
    """Sums a step's device tensors over a log interval; ``mean`` is the one host sync.

    Non-finite entries are skipped in the mean: NaN where nothing was measured (a module that
    processed no sequence), NaN / Inf of a step the non-finite guard dropped."""

    def __init__(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.counts: dict[str, Tensor] = {}
        self.n = 0

    def add(self, stats: dict[str, Tensor]) -> None:
        for k, v in stats.items():
            v = v.float()
            ok = torch.isfinite(v)
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


class Progress:
    """A rich progress bar with step, losses and throughput (or nothing when disabled)."""

    def __init__(self, total: int, start: int, enabled: bool) -> None:
        self.enabled = enabled
        if enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as Bar

            self.p = Bar(
                TextColumn("[bold]step"),
                MofNCompleteColumn(),
                BarColumn(),
                TextColumn("{task.fields[info]}"),
                TimeRemainingColumn(),
            )
            self.task = self.p.add_task("train", total=total, completed=start, info="")
        self.val: float | None = None

    def __enter__(self) -> Progress:
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


#: ``callback(sim, row)`` is called after every logged step with that step's metrics row.
Callback = Callable[[Any, dict[str, Any]], None]
