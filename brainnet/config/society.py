"""The society's sections: router, blackboard, arousal, clock and the society itself."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    Field,
    ValidationInfo,
    field_validator,
)

from brainnet.config.base import (
    Strict,
    Topology,
)
from brainnet.config_errors import (
    Problems,
    check,
    problem,
)
from brainnet.registry import TOPOLOGIES

# --------------------------------------------------------------------------- the society


class RouterConfig(Strict):
    top_k: int = Field(2, ge=1, description="clusters engaged per sequence")
    k_max: int | None = Field(
        None, ge=1, description="arousal may raise k up to this; None = top_k (must be >= top_k)"
    )
    temperature: float = Field(1.0, gt=0, description="softmax temperature of the gate")
    noise: float = Field(
        1.0, ge=0, description="std of Gaussian noise on the gate logits in training (noisy top-k)"
    )
    capacity_factor: float = Field(
        1.5, ge=1.0, description="cluster buffer rows = ceil(k * B / C * capacity_factor)"
    )
    context: int = Field(1, ge=1, description="the router reads the first `context` tokens only")
    d_router: int = Field(32, ge=1, description="width of the router's own token embedding")
    balance_weight: float = Field(0.01, ge=0, description="Switch load-balancing loss weight")
    z_weight: float = Field(0.001, ge=0, description="router z-loss weight (ST-MoE)")

    @check("k_max", "top_k")
    def _k_max(self) -> Problems:
        if self.k_max is not None and self.k_max < self.top_k:
            yield problem("k_max", self.k_max, f"must be >= top_k ({self.top_k})")


class BlackboardConfig(Strict):
    slots: int = Field(4, ge=1, description="slots S per sequence and token position")
    threshold: float = Field(0.5, ge=0, le=1, description="minimum strength to be written")
    decay: float = Field(
        0.5, ge=0, le=1, description="an old slot's strength is multiplied by this each round"
    )


class ArousalConfig(Strict):
    """The brainstem (docs/arousal.md). A range is a knob's value at excitation 0 (calm, arousal
    at sigmoid(bias)) and 1 (arousal 1); None derives it from the society's own settings."""

    enabled: bool = Field(True, description="False: update() is a no-op (arousal stays fixed)")
    rate: float = Field(0.1, gt=0, le=1, description="EMA rate of arousal and running stats")
    warmup: int = Field(
        10, ge=1, description="first updates only gather loss statistics (surprise 0)"
    )
    surprise_weight: float = Field(2.0, ge=0, description="weight of the loss z-score")
    novelty_weight: float = Field(1.0, ge=0, description="weight of the routing KL novelty")
    delta_phi_weight: float = Field(1.0, ge=0, description="weight of Δφ / θ from emergence")
    bias: float = Field(-1.0, description="drive offset: calm arousal settles at sigmoid(bias)")
    k_range: tuple[int, int] | None = Field(
        None,
        description="router k calm / aroused; None = top_k .. k_max (else min(top_k+1, clusters))",
    )
    rounds_range: tuple[int, int] | None = Field(
        None, description="feedback rounds calm / aroused; None = rounds .. rounds + 1"
    )
    temperature_range: tuple[float, float] | None = Field(
        None, description="router temperature calm / aroused; None = temperature .. 2x"
    )
    threshold_range: tuple[float, float] | None = Field(
        None, description="blackboard write threshold calm / aroused; None = threshold .. half"
    )
    lr_range: tuple[float, float] | None = Field(
        None, description="multiplier of the scheduled lr calm / aroused; None = 1 (off)"
    )
    focus_gain: float = Field(
        0.0, ge=0, description="router prior towards the clusters in use, x focus; 0 = off"
    )

    @field_validator("k_range", "rounds_range", "temperature_range", "threshold_range", "lr_range")
    @classmethod
    def _ranges(cls, v: Any, info: ValidationInfo) -> Any:
        ok, rule = {
            "k_range": (lambda lo, hi: 1 <= lo <= hi, "must be [lo, hi] with 1 <= lo <= hi"),
            "rounds_range": (lambda lo, hi: 0 <= lo <= hi, "must be [lo, hi] with 0 <= lo <= hi"),
            "temperature_range": (lambda *t: min(t) > 0, "each must be > 0"),
            "threshold_range": (lambda *t: 0 <= min(t) <= max(t) <= 1, "each must be in [0, 1]"),
            "lr_range": (lambda *t: min(t) > 0, "each must be > 0"),
        }[info.field_name]
        if v is not None and not ok(*v):
            raise ValueError(rule)
        return v


class ClockConfig(Strict):
    """Costs the simulated clock charges (the simulated brain is parallel hardware: modules of
    one firing compute side by side; messages travel with latency and finite bandwidth)."""

    flops_per_ms: float = Field(1e9, gt=0, description="compute speed of one module (FLOP/ms)")
    latency_ms: float = Field(0.05, ge=0, description="time for a message to cross a link")
    bytes_per_ms: float = Field(1e7, gt=0, description="link bandwidth (bytes/ms)")


class SocietyConfig(Strict):
    """How the modules are organised and talk (see brainnet/society/topology.py)."""

    topology: Topology = Field("brain", description="communication structure (see TOPOLOGIES)")
    clusters: int = Field(4, ge=1, description="C; every module group's count must divide by C")
    intra: Literal["complete", "ring", "small_world"] = Field(
        "complete", description="graph of the dense talk inside a cluster"
    )
    rounds: int = Field(1, ge=0, description="feedback rounds after the first pass (no arousal)")
    module_loss_weight: float = Field(
        0.1, ge=0, description="weight of each module's own CE next to the society's CE"
    )
    router: RouterConfig = Field(default_factory=RouterConfig)
    blackboard: BlackboardConfig = Field(default_factory=BlackboardConfig)
    arousal: ArousalConfig = Field(default_factory=lambda: ArousalConfig(enabled=False))
    clock: ClockConfig = Field(default_factory=ClockConfig)

    @check("topology", "clusters", "router", "arousal")
    def _k_fits_clusters(self) -> Problems:
        # k_range None derives its top from k_max or min(top_k + 1, clusters): it always fits
        k = max(self.router.k_max or self.router.top_k, *(self.arousal.k_range or (1,)))
        if TOPOLOGIES.get(self.topology).routed and k > self.clusters:
            yield problem(("router", "top_k"), k, f"must be <= society.clusters ({self.clusters})")
