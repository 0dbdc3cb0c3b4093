"""Learning dynamics: collapse diagnostics, the emergence probe, distillation, reorganisation."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    Field,
)

from brainnet.config.base import (
    Action,
    Strict,
)
from brainnet.config_errors import (
    Problems,
    check,
    problem,
)

# --------------------------------------------------------------------------- learning dynamics


class CollapseConfig(Strict):
    """When and how collapse is diagnosed."""

    every: int = Field(50, ge=1, description="compute the diagnostics every this many steps")
    samples: int = Field(8, ge=1, description="sequences sampled per module for distinct-n")
    sample_length: int = Field(32, ge=1, description="tokens generated per sampled sequence")
    n: int = Field(2, ge=1, le=8, description="n-gram size of distinct-n")
    entropy_floor: float = Field(
        0.5, ge=0, description="predictive entropy (nats) below which a module has collapsed"
    )
    distinct_floor: float = Field(
        0.2, ge=0, le=1, description="distinct-n below which a module has collapsed"
    )
    ece_bins: int = Field(10, ge=1, le=1000, description="equal-width confidence bins of ECE")


class EmergenceConfig(Strict):
    """The emergence probe: how often, what it reads, and when a change counts as an event."""

    every: int = Field(50, ge=1, description="steps between two probes")
    probe_sequences: int = Field(32, ge=1, description="sequences in the fixed probe set")
    grid: tuple[Annotated[int, Field(ge=1)], Annotated[int, Field(ge=1)]] = Field(
        (8, 8), description="(S, C): shape of the semantic grid every token is embedded into"
    )
    norm: Literal["fro", "l1"] = Field("fro", description="norm of Δφ: Frobenius or L1")
    threshold: Literal["fixed", "adaptive"] = Field(
        "adaptive", description="θ_t: fixed theta, or mean + kappa·std of recent Δφ"
    )
    theta: float = Field(1.0, gt=0, description="the fixed threshold θ (threshold = 'fixed')")
    theta_floor: float = Field(
        1e-6, gt=0, description="lower bound of the adaptive θ_t (a constant Δφ has std 0)"
    )
    kappa: float = Field(2.0, ge=0, description="adaptive θ_t = mean + kappa · std")
    warmup: int = Field(
        3, ge=1, description="Δφ values gathered before the adaptive θ_t is used (no event before)"
    )
    cooldown: int = Field(2, ge=0, description="probes after an event during which none fires")
    alphas: tuple[float, float, float, float] = Field(
        (1.0, 0.0, 0.0, 0.0), description="weights of (E_norm, θ_t, NCI_avg, V_T) in E_pot"
    )
    window: int = Field(
        8, ge=1, description="recent Δφ values for V_T and the adaptive θ_t's mean and std"
    )


class EMAConfig(Strict):
    """Momentum m of the EMA teacher and its schedule over optimiser steps."""

    momentum: float = Field(
        0.99, ge=0, lt=1, description="EMA momentum m (target of warmup, start of cosine)"
    )
    schedule: Literal["constant", "warmup", "cosine"] = Field(
        "constant",
        description="constant m; warmup: min(m, 1 - (1 + step/gamma)^-power) (timm ModelEmaV3); "
        "cosine: 1 - (1 - m)(cos(pi step/total) + 1)/2, reaching 1 at total (BYOL, DINO)",
    )
    warmup_gamma: float = Field(1.0, gt=0, description="gamma of the warmup schedule")
    warmup_power: float = Field(0.75, gt=0, description="power of the warmup schedule")
    total_steps: int | None = Field(
        None, ge=1, description="cosine: step at which m reaches 1; None = the run's train.steps"
    )


class WarmupCorrectionConfig(Strict):
    """Warmup-Distill (arXiv 2502.11766): correct the student's own samples with the teacher."""

    enabled: bool = Field(False, description="distil on teacher-corrected student samples")
    prompt: int = Field(8, ge=1, description="tokens of the real sequence kept as the prompt")
    threshold: float = Field(
        0.1,
        gt=0,
        lt=1,
        description="sampled tokens the teacher gives less probability are replaced",
    )
    temperature: float = Field(1.0, gt=0, description="sampling temperature (student and teacher)")


class DistillConfig(Strict):
    """Distillation between modules (see docs/learning.md)."""

    enabled: bool = Field(False, description="add the distillation loss")
    every: int = Field(1, ge=1, description="K: distil every K steps (1 = continuously)")
    teacher: Literal["ema", "peers", "both", "run"] = Field(
        "ema",
        description="ema: the EMA snapshot; peers: cluster mates (DML); both: the average; "
        "run: the frozen modules of an earlier run (teacher_run)",
    )
    teacher_run: str | None = Field(
        None,
        description="teacher 'run': run directory or checkpoint file of an earlier brainnet run "
        "whose trained modules become a frozen teacher (reloaded from disk on resume)",
    )
    temperature: float = Field(2.0, gt=0, description="softmax temperature T of the KD term")
    teacher_temperature: float | None = Field(
        None, gt=0, description="teacher's own temperature (< T sharpens, as in DINO); None = T"
    )
    alpha: float = Field(
        0.5, ge=0, le=1, description="weight of hard-label CE; 1 - alpha weighs T²·KL"
    )
    labels: bool = Field(
        True,
        description="False = the closed soft loop: only the distillation term is learned "
        "from (no task loss, alpha ignored)",
    )
    ema: EMAConfig = Field(default_factory=EMAConfig)
    warmup_correction: WarmupCorrectionConfig = Field(default_factory=WarmupCorrectionConfig)

    @check("warmup_correction", "teacher")
    def _one_teacher_scores(self) -> Problems:
        if self.warmup_correction.enabled and self.teacher in ("peers", "both"):
            yield problem(
                ("warmup_correction", "enabled"),
                True,
                "needs one teacher to score each module's own samples; "
                "set teacher to 'ema' or 'run'",
            )

    @check("teacher", "teacher_run")
    def _teacher_run(self) -> Problems:
        if self.teacher == "run" and not self.teacher_run:
            yield problem(
                "teacher_run",
                self.teacher_run,
                "teacher 'run' needs the run directory or checkpoint file of an earlier run; "
                "allowed: a path",
            )
        if self.teacher_run is not None and self.teacher != "run":
            yield problem(
                "teacher_run",
                self.teacher_run,
                f"only used by teacher 'run' (teacher is {self.teacher!r}); "
                "allowed: null, or set teacher to 'run'",
            )

    def due(self, step: int) -> bool:
        """Distil at this step? (enabled and every K-th step)."""
        return self.enabled and step % self.every == 0


class ReorganizeConfig(Strict):
    """Reorganisation on an emergence event (Δφ > θ; the tracker's cool-down applies).

    On every event the ``actions`` run in order, each on the society the previous one left;
    an action that has no candidate (e.g. split when no cluster is big enough) is logged as
    skipped with the reason. See docs/learning.md for each rule."""

    actions: list[Action] = Field(
        default_factory=lambda: ["replace"],
        min_length=1,
        description="replace: each cluster's worst module (probe loss) becomes a noisy copy of "
        "its best; split: the most spread cluster (probe φ) splits in two along its first "
        "principal axis; merge: the two clusters with the closest mean φ become one; spawn: "
        "a noisy copy of the best module of the worst cluster joins it; prune: the module "
        "never heard on the blackboard (else the worst) leaves; rewire: the most spread "
        "cluster keeps, for each module, only its nearest mates in φ",
    )
    noise: float = Field(0.01, ge=0, description="copy noise, relative to each parameter's std")
    min_cluster_size: int = Field(2, ge=1, description="split / prune never go below this")
    max_cluster_size: int | None = Field(
        None, ge=1, description="spawn / merge never go above this (None: no limit)"
    )
    max_clusters: int | None = Field(None, ge=2, description="split stops here (None: 2·C)")
    max_modules: int | None = Field(None, ge=1, description="spawn stops here (None: 2·N)")
    rewire_degree: int | None = Field(
        None, ge=1, description="mates each module reads after rewire (None: half its mates)"
    )
