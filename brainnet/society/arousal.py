"""Arousal (brainstem): global scalars that modulate how much of the society is engaged.

Why: a surprising loss, a change in how inputs are routed (novelty) or a jump of the emergence
probe (Δφ) should wake the society up: more clusters per sequence, more feedback rounds, and a
different router temperature / blackboard threshold; a calm, predictable stream lets it settle.

State (device tensors, no parameters, no host sync in ``update``)::

    drive   = sigmoid(w_s * surprise + w_n * novelty + w_φ * Δφ + bias)
    arousal = (1 - rate) * arousal + rate * drive          # settles at sigmoid(bias) when calm
    focus   = 1 - H(mean_b probs) / log C                  # 1 = every sequence to one cluster

surprise = the loss's z-score against its running mean / variance (EMA with ``rate``), clamped
to [-5, 5]; novelty = KL(mean_b probs || running mean routing distribution). The first
``warmup`` updates only gather loss statistics (surprise 0): one sample has no variance. A steady
loss settles arousal exactly at sigmoid(bias); a noisy but stationary one a little above it,
since z-scores have unit variance whatever the noise level.

The maps ``k``, ``rounds``, ``temperature``, ``threshold`` take a python float: callers read
arousal on the host once per log interval (``read``) and use it until the next one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from brainnet.config import ArousalConfig, SocietyConfig


@dataclass
class Knobs:
    """What arousal sets for a step (host values, changed at log intervals only)."""

    k: int
    rounds: int
    temperature: float
    threshold: float

    @classmethod
    def fixed(cls, cfg: SocietyConfig) -> Knobs:
        """The society's own settings, for a society without (or with a disabled) arousal."""
        return cls(cfg.router.top_k, cfg.rounds, cfg.router.temperature, cfg.blackboard.threshold)


def _lerp(lo: float, hi: float, a: float) -> float:
    return lo + min(max(a, 0.0), 1.0) * (hi - lo)


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
        f32 = dict(device=device, dtype=torch.float32)
        self.arousal = torch.tensor(1 / (1 + math.exp(-cfg.bias)), **f32)  # []
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

    def knobs(self, a: float, society: SocietyConfig) -> Knobs:
        """Router k, rounds, temperature and board threshold at arousal ``a`` (the society's
        fixed settings when arousal is disabled)."""
        if not self.cfg.enabled:
            return Knobs.fixed(society)
        k = self.k(a, society.router.top_k)
        if society.router.k_max is not None:  # the router's ceiling holds whatever k_range says
            k = min(k, society.router.k_max)
        return Knobs(k, self.rounds(a), self.temperature(a), self.threshold(a))

    def k(self, a: float, default_k: int) -> int:
        """Router k at arousal ``a``: lo..hi of k_range, rounded half up; default_k if unset."""
        if self.cfg.k_range is None:
            return default_k
        return _round_half_up(_lerp(*self.cfg.k_range, a))

    def rounds(self, a: float) -> int:
        """Feedback rounds at arousal ``a``: lo..hi of rounds_range, rounded half up."""
        return _round_half_up(_lerp(*self.cfg.rounds_range, a))

    def temperature(self, a: float) -> float:
        """Router temperature at arousal ``a``: linear between the ends of temperature_range."""
        return _lerp(*self.cfg.temperature_range, a)

    def threshold(self, a: float) -> float:
        """Blackboard write threshold at arousal ``a``: linear over threshold_range."""
        return _lerp(*self.cfg.threshold_range, a)

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
