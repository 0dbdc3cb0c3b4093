"""Semantic state φ and emergence: how fast does what the society predicts change?

On a fixed probe set (``probe_batch``: drawn once from the val split with its own generator)
every module's next-token distributions ``p = softmax(z)`` are read out through a fixed, seeded
*semantic grid* ``e [V, S, C]`` (one unit-norm S×C pattern per vocabulary item, never trained)::

    φ_m = mean_{b,t} Σ_v p_{m,b,t,v} · e_v          φ ∈ R^{M×S×C}   (M = modules, stacked)

Between two probes ``Δφ_m = ‖φ_m(t+1) − φ_m(t)‖`` (Frobenius or L1 over S×C) and the global
``Δφ = ‖Δ‖`` over every module (Frobenius: sqrt of the sum of squares of all entries; L1: the
sum of the per-module values). ``EmergenceTracker`` keeps the previous φ and the last ``window``
global Δφ values, and at each probe computes (definitions in docs/learning.md)::

    θ_t     = theta                                          (threshold = "fixed")
            = max(theta_floor, μ_w + κ·σ_w)                  (threshold = "adaptive")
              μ_w, σ_w = mean, population std of the previous ≤ window global Δφ values
    event   = warm and Δφ > θ_t and not in cool-down
    E_norm  = Δφ / θ_t   (0 before warm-up)
    NCI_avg = mean_m Δφ_m / (‖φ_m(t)‖ + ε)                    (modules with a history only)
    V_T     = population variance of the last ≤ window global Δφ (this one included)
    E_pot   = α1·E_norm + α2·θ_t + α3·NCI_avg + α4·V_T

``E_norm`` of the last probe is what arousal reads as its Δφ drive (``arousal_input``).
Everything up to ``observe`` stays on the device; ``observe`` (once per probe, at a log
interval) reads its scalars back with one host transfer.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from brainnet.config import EmergenceConfig  # noqa: F401 (re-exported)
from brainnet.data.base import Batch, Corpus

_EPS = 1e-8


def probe_batch(corpus: Corpus, n: int, seed: int) -> Batch:
    """The fixed probe set: ``n`` val sequences drawn with a generator of its own (seeded)."""
    return corpus.batch("val", n, torch.Generator().manual_seed(seed))


class SemanticGrid(nn.Module):
    """A fixed embedding of every vocabulary item into an S×C grid; ``phi`` reads φ out of logits.

    ``e [V, S, C]``: standard Gaussian draws from a CPU ``torch.Generator`` seeded with
    ``seed``, each item's S×C pattern scaled to unit Frobenius norm. A non-persistent buffer
    (it is rebuilt from the seed, never trained, and moves with ``.to``).
    """

    e: Tensor

    def __init__(self, vocab_size: int, S: int, C: int, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        e = torch.randn(vocab_size, S * C, generator=g)
        e = e / e.norm(dim=1, keepdim=True)
        self.register_buffer("e", e.view(vocab_size, S, C), persistent=False)

    def phi(self, logits: Tensor) -> Tensor:
        """logits [M, ..., V] -> φ [M, S, C] fp32 = mean over positions of Σ_v p_v e_v."""
        M, V = logits.shape[0], logits.shape[-1]
        p = logits.detach().float().softmax(-1).reshape(M, -1, V).mean(1)  # [M, V]
        return torch.einsum("mv,vsc->msc", p, self.e)  # mean commutes with the linear read-out


def delta_phi(phi_new: Tensor, phi_old: Tensor, norm: str = "fro") -> tuple[Tensor, Tensor]:
    """Change of φ between two probes. phi_new, phi_old [M, S, C] -> (per module [M], global []).

    fro: per module ‖Δ_m‖_F, global ‖Δ‖_F over all modules; l1: per module Σ|Δ_m|, global the
    sum. A module whose old φ is NaN (new after a reorganisation) gets NaN and is left out of
    the global value.
    """
    d = (phi_new.float() - phi_old.float()).flatten(1)  # [M, S*C]
    if norm == "fro":
        sq = d.square().sum(1)  # [M]
        return sq.sqrt(), sq.nansum().sqrt()
    if norm == "l1":
        per = d.abs().sum(1)
        return per, per.nansum()
    raise ValueError(f"delta_phi: norm = {norm!r}; allowed: 'fro', 'l1'")


def _phi_norm(phi: Tensor, norm: str) -> Tensor:
    """[M, S, C] -> [M]: ‖φ_m‖ in the norm of Δφ."""
    flat = phi.float().flatten(1)
    return flat.norm(dim=1) if norm == "fro" else flat.abs().sum(1)


def _mean_std(xs: list[float]) -> tuple[float, float]:
    """Mean and population standard deviation (ddof 0) of a non-empty list."""
    mu = sum(xs) / len(xs)
    return mu, math.sqrt(sum((x - mu) ** 2 for x in xs) / len(xs))


class EmergenceTracker:
    """Δφ between probes, the threshold θ_t, emergence events and the potential E_pot.

    State: the previous φ [M, S, C] (device; NaN rows = modules without a history), the last
    ``window`` global Δφ values, counters and the cool-down. The adaptive θ_t uses a sliding
    window (the last ``window`` Δφ values before this probe) rather than all history, so that
    the large changes of early training do not hold the threshold up for the rest of the run.
    """

    def __init__(
        self,
        cfg: EmergenceConfig,
        vocab_size: int,
        seed: int,
        device: torch.device | str | None = None,
    ) -> None:
        self.cfg = cfg
        self.seed = seed
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.grid = SemanticGrid(vocab_size, *cfg.grid, seed).to(self.device)
        self.prev: Tensor | None = None  # [M, S, C] φ of the last probe
        self.history: list[float] = []  # last ≤ window global Δφ values
        self.n_probes = 0
        self.n_delta = 0  # global Δφ values seen (probes with a predecessor)
        self.cooldown_left = 0
        self.arousal_input = 0.0  # E_norm of the last probe: the Δφ drive of arousal

    def phi(self, logits: Tensor) -> Tensor:
        """logits [M, ..., V] -> φ [M, S, C] through this tracker's grid (no host sync)."""
        return self.grid.phi(logits)

    def theta_t(self) -> float:
        """The threshold the next Δφ is compared with (from the current history)."""
        cfg = self.cfg
        if cfg.threshold == "fixed":
            return cfg.theta
        if not self.history:
            return cfg.theta_floor
        mu, sd = _mean_std(self.history)
        return max(cfg.theta_floor, mu + cfg.kappa * sd)

    def warm(self) -> bool:
        """Whether the next Δφ may fire an event (adaptive: ``warmup`` Δφ values seen)."""
        return self.cfg.threshold == "fixed" or self.n_delta >= self.cfg.warmup

    def observe(self, phi: Tensor) -> dict[str, Any]:
        """Fold this probe's φ [M, S, C] in; one host transfer. Returns the probe's metrics::

        delta_phi (global Δφ), delta_phi_module (list, NaN = no history), theta (θ_t), event,
        e_pot, e_norm, nci, v_t, warm, n_delta
        """
        cfg = self.cfg
        phi = phi.detach().float().to(self.device)
        prev, M = self.prev, phi.shape[0]
        if prev is not None and prev.shape != phi.shape:
            raise ValueError(
                f"emergence: φ of shape {tuple(phi.shape)} after {tuple(prev.shape)}; "
                "call select_rows after a reorganisation"
            )
        self.n_probes += 1
        self.prev = phi.clone()
        if prev is None:
            return self._result(None, [math.nan] * M, 0.0)
        per, glob = delta_phi(phi, prev, cfg.norm)  # [M], []
        nci = (per / (_phi_norm(prev, cfg.norm) + _EPS)).nanmean()  # [] NaN if no history
        host = torch.cat([per, glob.view(1), nci.view(1)]).tolist()  # the one host sync
        per_m, d, nci_f = host[:M], host[M], host[M + 1]
        if math.isnan(nci_f):  # no module had a history: like a first probe
            return self._result(None, per_m, 0.0)
        return self._result(d, per_m, nci_f)

    def _result(self, d: float | None, per_m: list[float], nci: float) -> dict[str, Any]:
        cfg = self.cfg
        theta, warm = self.theta_t(), self.warm()
        event, e_norm = False, 0.0
        if d is not None:
            in_cooldown = self.cooldown_left > 0
            if in_cooldown:
                self.cooldown_left -= 1
            event = warm and d > theta and not in_cooldown
            if event:
                self.cooldown_left = cfg.cooldown
            e_norm = d / theta if warm else 0.0
            self.history = (self.history + [d])[-cfg.window :]
            self.n_delta += 1
        v_t = _mean_std(self.history)[1] ** 2 if self.history else 0.0
        self.arousal_input = e_norm
        a1, a2, a3, a4 = cfg.alphas
        return {
            "delta_phi": 0.0 if d is None else d,
            "delta_phi_module": per_m,
            "theta": theta,
            "event": event,
            "e_pot": a1 * e_norm + a2 * theta + a3 * nci + a4 * v_t,
            "e_norm": e_norm,
            "nci": nci,
            "v_t": v_t,
            "warm": warm,
            "n_delta": self.n_delta,
        }

    def select_rows(self, rows: Tensor) -> None:
        """Follow a reorganisation: new module i was old module ``rows[i]`` (-1 = new module).

        Surviving modules keep their previous φ; new ones get a NaN row, so their first probe
        has no Δφ_m (NaN) and they are left out of the global Δφ and NCI until the next one.
        """
        if self.prev is None:
            return
        rows = rows.to(self.prev.device).long()
        kept = self.prev.index_select(0, rows.clamp_min(0))  # [M', S, C]
        self.prev = torch.where((rows >= 0).view(-1, 1, 1), kept, math.nan)

    def state_dict(self) -> dict[str, Any]:
        return {
            "prev": None if self.prev is None else self.prev.clone(),
            "history": torch.tensor(self.history, dtype=torch.float64),
            "n_probes": self.n_probes,
            "n_delta": self.n_delta,
            "cooldown_left": self.cooldown_left,
            "arousal_input": self.arousal_input,
            "seed": self.seed,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["seed"] != self.seed:
            raise ValueError(
                f"emergence state was made with grid seed {state['seed']}, this tracker "
                f"uses {self.seed}"
            )
        prev = state["prev"]
        self.prev = None if prev is None else prev.to(self.device, torch.float32).clone()
        self.history = [float(x) for x in state["history"].tolist()]
        self.n_probes = int(state["n_probes"])
        self.n_delta = int(state["n_delta"])
        self.cooldown_left = int(state["cooldown_left"])
        self.arousal_input = float(state["arousal_input"])
