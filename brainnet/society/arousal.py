"""Arousal (brainstem): global scalars that modulate how much of the society is engaged.

Why: a surprising loss, a change in how inputs are routed (novelty) or a jump of the emergence
probe (Δφ) should wake the society up: more clusters per sequence, more feedback rounds, a softer
router gate, more blackboard writes (and optionally a larger lr); a calm, predictable stream lets
it settle. ``focus`` (how concentrated routing is) can bias the router towards the clusters in use.

The state (arousal, focus, running loss and routing statistics) lives on the device and
``update`` never syncs; docs/arousal.md has the equations. The maps read the *excitation*
``e = clamp((a - calm) / (1 - calm), 0, 1)``, calm = sigmoid(bias): every knob sits at the low
end of its range when calm and at the high end when fully aroused. Callers read arousal on the
host once per log interval (``read``) and use the ``Knobs`` it gives until the next one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor

from brainnet.config import ArousalConfig, SocietyConfig


@dataclass
class Knobs:
    """What arousal sets for a step (changed at log intervals only; all host values but the
    ``prior``, a device tensor)."""

    k: int
    rounds: int
    temperature: float
    threshold: float
    lr_scale: float = 1.0  # multiplier of the scheduled learning rate
    #: [C] device tensor added to the router's gate logits (focus prior), or None
    prior: Tensor | None = field(default=None, compare=False)

    @classmethod
    def fixed(cls, cfg: SocietyConfig) -> Knobs:
        """The society's own settings, for a society without (or with a disabled) arousal."""
        return cls(cfg.router.top_k, cfg.rounds, cfg.router.temperature, cfg.blackboard.threshold)

    def row(self) -> dict[str, float | int]:
        """The metrics columns: every scalar knob, and ``focus_prior_max`` (max |prior|) when
        a prior is set (a read of a finished tensor: the log interval has just synced)."""
        cols: dict[str, float | int] = dict(
            k=self.k,
            rounds=self.rounds,
            temperature=self.temperature,
            threshold=self.threshold,
            lr_scale=self.lr_scale,
        )
        if self.prior is not None:
            cols["focus_prior_max"] = self.prior.abs().max().item()
        return cols


class Ranges(NamedTuple):
    """Every knob's (calm, aroused) ends, resolved against a society's settings."""

    k: tuple[int, int]
    rounds: tuple[int, int]
    temperature: tuple[float, float]
    threshold: tuple[float, float]
    lr: tuple[float, float]


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def _lerp(lo: float, hi: float, e: float) -> float:
    return lo + min(max(e, 0.0), 1.0) * (hi - lo)


def _round_half_up(x: float) -> int:
    return math.floor(x + 0.5)


class Arousal:
    """The brainstem state of one society: 0-dim tensors on ``device`` plus maps to settings."""

    _names = ("arousal", "focus", "loss_mean", "loss_var", "route_mean", "count", "route_count")

    def __init__(
        self, cfg: ArousalConfig, n_clusters: int, device: torch.device | str | None = None
    ) -> None:
        self.cfg = cfg
        self.n_clusters = n_clusters
        #: where arousal settles on a steady loss, sigmoid(bias), in the state's float32: the
        #: initial arousal has excitation exactly 0
        self.calm = torch.tensor(_sigmoid(cfg.bias), dtype=torch.float32).item()
        f32 = dict(device=device, dtype=torch.float32)
        self.arousal = torch.tensor(self.calm, **f32)  # []
        self.focus = torch.tensor(0.5, **f32)  # []
        self.loss_mean = torch.zeros((), **f32)  # [] running mean of the loss
        self.loss_var = torch.zeros((), **f32)  # [] running variance of the loss
        self.route_mean = torch.full((n_clusters,), 1 / n_clusters, **f32)  # [C]
        self.count = torch.zeros((), dtype=torch.long, device=device)  # [] loss updates
        self.route_count = torch.zeros((), dtype=torch.long, device=device)  # [] probs updates

    # ----------------------------------------------------------------------------- update

    def update(
        self, loss: Tensor, probs: Tensor | None, delta_phi: Tensor | float | None = None
    ) -> None:
        """Fold one step's loss [] and routing ``probs`` [B, C] (and Δφ / θ) into the state."""
        if not self.cfg.enabled:
            return
        rate = self.cfg.rate
        loss = loss.detach().float()  # []
        std = torch.sqrt(self.loss_var + 1e-8)  # []
        z = ((loss - self.loss_mean) / std).clamp(-5.0, 5.0)  # []
        surprise = torch.where(self.count >= self.cfg.warmup, z, 0.0)  # []

        novelty = torch.zeros_like(loss)  # []
        focus = torch.full_like(loss, 0.5)  # []
        if probs is not None:
            p = probs.detach().float().mean(0)  # [C]
            q = self.route_mean.clamp_min(1e-8)  # [C]
            kl = (torch.special.xlogy(p, p) - p * q.log()).sum()  # []
            novelty = torch.where(self.route_count > 0, kl, 0.0)  # []
            focus = self._focus(p)

        # a python float stays on the host: no host-to-device copy per step
        dphi = delta_phi.detach().float() if isinstance(delta_phi, Tensor) else delta_phi or 0.0
        drive = torch.sigmoid(
            self.cfg.surprise_weight * surprise
            + self.cfg.novelty_weight * novelty
            + self.cfg.delta_phi_weight * dphi
            + self.cfg.bias
        )  # []
        self.arousal.copy_((1 - rate) * self.arousal + rate * drive)
        self.focus.copy_(focus)

        # Running loss stats (EMA mean and variance); the first call only initialises them.
        first = self.count == 0
        delta = loss - self.loss_mean
        self.loss_mean.copy_(torch.where(first, loss, self.loss_mean + rate * delta))
        self.loss_var.copy_(
            torch.where(first, 0.0, (1 - rate) * (self.loss_var + rate * delta.square()))
        )
        self.count.add_(1)
        if probs is not None:
            ema = (1 - rate) * self.route_mean + rate * p  # [C]
            self.route_mean.copy_(torch.where(self.route_count == 0, p, ema))
            self.route_count.add_(1)

    def _focus(self, p: Tensor) -> Tensor:
        """1 - normalised entropy of the mean routing distribution ``p`` [C] -> []."""
        if self.n_clusters == 1:
            return torch.ones((), device=p.device)
        h = -torch.special.xlogy(p, p).sum()  # []
        return 1 - h / math.log(self.n_clusters)

    def force(self, value: float) -> None:
        """Set arousal to ``value`` (tests, lesion / stimulation experiments)."""
        self.arousal.fill_(value)

    def resize(self, n_clusters: int) -> None:
        """Forget the routing statistics after the number of clusters changed (reorganisation)."""
        self.n_clusters = n_clusters
        self.route_mean = torch.full((n_clusters,), 1 / n_clusters, device=self.arousal.device)
        self.route_count.zero_()

    def read(self) -> tuple[float, float]:
        """(arousal, focus) as python floats: the ONE host sync, once per log interval."""
        both = torch.stack([self.arousal, self.focus]).tolist()
        return both[0], both[1]

    # ----------------------------------------------------------------------------- maps

    def excitation(self, a: float) -> float:
        """How far arousal ``a`` is from calm towards 1: clamp((a - calm) / (1 - calm), 0, 1)."""
        span = 1.0 - self.calm
        if span <= 0.0:  # bias so large that calm is 1.0 in floats: never excited
            return 0.0
        return min(max((a - self.calm) / span, 0.0), 1.0)

    def ranges(self, society: SocietyConfig) -> Ranges:
        """Every knob's (calm, aroused) ends: the configured range, or one derived from
        ``society`` when it is None (see ArousalConfig)."""
        c, r, b = self.cfg, society.router, society.blackboard
        k_hi = r.k_max if r.k_max is not None else max(r.top_k, min(r.top_k + 1, society.clusters))
        return Ranges(
            k=c.k_range or (r.top_k, k_hi),
            rounds=c.rounds_range or (society.rounds, society.rounds + 1),
            temperature=c.temperature_range or (r.temperature, 2 * r.temperature),
            threshold=c.threshold_range or (b.threshold, b.threshold / 2),
            lr=c.lr_range or (1.0, 1.0),
        )

    def _ends(self, name: str, society: SocietyConfig | None) -> tuple[float, float]:
        ends = getattr(self.cfg, f"{name}_range")
        if ends is not None:
            return ends
        if society is None:
            raise ValueError(f"arousal.{name}_range = None derives from the society: pass it")
        return getattr(self.ranges(society), name)

    def knobs(self, a: float, society: SocietyConfig) -> Knobs:
        """Everything arousal sets at arousal ``a`` (the society's fixed settings when arousal
        is disabled); the focus prior is a snapshot of the device state (no host sync)."""
        if not self.cfg.enabled:
            return Knobs.fixed(society)
        return Knobs(self.k(a, society), self.rounds(a, society), self.temperature(a, society),
                     self.threshold(a, society), self.lr_scale(a), self.prior())  # fmt: skip

    def k(self, a: float, society: SocietyConfig | None = None) -> int:
        """Router k at arousal ``a``: k_range's ends at excitation 0..1, rounded half up, and
        never above ``society.router.k_max`` (the router's ceiling) when it is set."""
        k = _round_half_up(_lerp(*self._ends("k", society), self.excitation(a)))
        if society is not None and society.router.k_max is not None:
            k = min(k, society.router.k_max)
        return k

    def rounds(self, a: float, society: SocietyConfig | None = None) -> int:
        """Feedback rounds at arousal ``a``: rounds_range at excitation 0..1, rounded half up."""
        return _round_half_up(_lerp(*self._ends("rounds", society), self.excitation(a)))

    def temperature(self, a: float, society: SocietyConfig | None = None) -> float:
        """Router temperature at arousal ``a``: linear over temperature_range."""
        return _lerp(*self._ends("temperature", society), self.excitation(a))

    def threshold(self, a: float, society: SocietyConfig | None = None) -> float:
        """Blackboard write threshold at arousal ``a``: linear over threshold_range."""
        return _lerp(*self._ends("threshold", society), self.excitation(a))

    def lr_scale(self, a: float) -> float:
        """Multiplier of the scheduled lr at arousal ``a``: linear over lr_range (1 if None)."""
        if self.cfg.lr_range is None:
            return 1.0
        return _lerp(*self.cfg.lr_range, self.excitation(a))

    def prior(self) -> Tensor | None:
        """Router logit prior [C]: focus_gain * focus * C * (route_mean - 1/C), towards the
        clusters the society has been using; None when focus_gain is 0."""
        if self.cfg.focus_gain == 0:
            return None
        C = self.n_clusters
        return (self.route_mean - 1 / C) * (self.focus * (self.cfg.focus_gain * C))  # [C]

    # ----------------------------------------------------------------------------- checkpoints

    def state_dict(self) -> dict[str, Tensor]:
        return {name: getattr(self, name).clone() for name in self._names}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        missing = set(self._names) - set(state)
        if missing:
            raise KeyError(f"arousal state lacks {sorted(missing)}")
        for name in self._names:
            mine = getattr(self, name)
            if state[name].shape != mine.shape:
                raise ValueError(
                    f"arousal state {name}: shape {tuple(state[name].shape)}, "
                    f"expected {tuple(mine.shape)} (was the number of clusters changed?)"
                )
            mine.copy_(state[name])
