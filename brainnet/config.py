"""Scenario configuration: pydantic models, YAML loading and ``--set`` overrides.

A scenario is data. Every field is validated, unknown keys are errors, and every problem comes
back as one line that names the source, the dotted field, the bad value and what is allowed::

    quickstart.yaml: train.lr = -1: must be > 0
    --set: train.lrr = 0.1: unknown field; allowed: batch_size, betas, ...

Sections that later parts of the society add (society, distill, emergence) slot in beside
``modules`` and ``train`` as further ``Strict`` models.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationError,
    ValidationInfo,
    WrapValidator,
    field_validator,
    model_validator,
)

from brainnet.config_errors import (
    Problems,
    ScenarioError,
    Unknown,
    apply_override,
    check,
    field_error,
    format_error,
    parse_sets,
    parse_yaml,
    problem,
    run_checks,
    skipped_problems,
)
from brainnet.registry import ACTIONS, CORPORA, MODULE_TYPES, TOPOLOGIES, Registry


class Strict(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are validated, and
    the section's ``@check`` methods run once its fields validate (all their problems at once).
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)

    @model_validator(mode="before")
    @classmethod
    def _tag_unknown_fields(cls, data: Any) -> Any:
        # extra="forbid" reports unknown keys; wrapping their values lets the error message
        # list the fields this section allows (pydantic's own message does not).
        if isinstance(data, dict) and any(k not in cls.model_fields for k in data):
            allowed = ", ".join(sorted(cls.model_fields))
            data = {k: v if k in cls.model_fields else Unknown(v, allowed) for k, v in data.items()}
        return data

    @model_validator(mode="after")
    def _run_checks(self) -> Any:
        run_checks(self)
        return self


# --------------------------------------------------------------------------- pluggable sections


class ModuleConfig(Strict):
    """What every module type's config has. A type adds its own fields in a subclass."""

    type: str = Field(description="registered module type, e.g. 'transformer'")
    count: int = Field(8, ge=1, description="number of modules of this group")
    message_dim: int = Field(
        32, ge=1, description="width of the message a module emits and of memory slots it reads"
    )


class CorpusConfig(Strict):
    """What every corpus config has. A corpus kind adds its own fields in a subclass."""

    kind: str = Field("tasks", description="registered corpus kind: 'tasks' or 'text'")
    block_size: int = Field(64, ge=2, le=4096, description="tokens per training sequence")


def _unknown(registry: Registry[Any], name: Any) -> str:
    return f"unknown {registry.kind} {name!r}; known: {', '.join(registry.names())}"


def _registered(registry: Registry[Any]) -> BeforeValidator:
    """A str field whose value must be a name in ``registry``."""

    def validate(name: Any) -> Any:
        if not isinstance(name, str) or name not in registry:
            raise ValueError(_unknown(registry, name))
        return name

    return BeforeValidator(validate)


def _by_tag(registry: Registry[Any], tag: str, default: str | None = None) -> WrapValidator:
    """Validate a dict with the Config class of the registry entry named by ``data[tag]``."""

    def validate(value: Any, handler: Any) -> Any:
        if isinstance(value, BaseModel):
            value = value.model_dump()
        if not isinstance(value, dict):
            raise ValueError(f"must be a mapping with a {tag!r} key")
        name = value.get(tag, default)
        if name is None:
            raise ValueError(f"missing {tag!r}; allowed: {', '.join(registry.names())}")
        if not isinstance(name, str) or name not in registry:
            raise field_error(tag, name, _unknown(registry, name))
        return registry.get(name).Config.model_validate({**value, tag: name})

    return WrapValidator(validate)


ModuleGroup = Annotated[SerializeAsAny[ModuleConfig], _by_tag(MODULE_TYPES, "type")]
Corpus = Annotated[SerializeAsAny[CorpusConfig], _by_tag(CORPORA, "kind", default="tasks")]
#: a name registered in brainnet.registry.TOPOLOGIES / ACTIONS
Topology = Annotated[str, _registered(TOPOLOGIES)]
Action = Annotated[str, _registered(ACTIONS)]


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
        None, description="router k at arousal 0 and 1; None = the router's fixed top_k"
    )
    rounds_range: tuple[int, int] = Field((1, 1), description="feedback rounds at arousal 0, 1")
    temperature_range: tuple[float, float] = Field(
        (1.0, 1.0), description="router temperature at arousal 0 and 1 (either direction)"
    )
    threshold_range: tuple[float, float] = Field(
        (0.5, 0.5), description="blackboard write threshold at arousal 0 and 1 (either direction)"
    )

    @field_validator("k_range", "rounds_range", "temperature_range", "threshold_range")
    @classmethod
    def _ranges(cls, v: Any, info: ValidationInfo) -> Any:
        ok, rule = {
            "k_range": (lambda lo, hi: 1 <= lo <= hi, "must be [lo, hi] with 1 <= lo <= hi"),
            "rounds_range": (lambda lo, hi: 0 <= lo <= hi, "must be [lo, hi] with 0 <= lo <= hi"),
            "temperature_range": (lambda *t: min(t) > 0, "each must be > 0"),
            "threshold_range": (lambda *t: 0 <= min(t) <= max(t) <= 1, "each must be in [0, 1]"),
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
        k = max(self.router.k_max or self.router.top_k, *(self.arousal.k_range or (1,)))
        if TOPOLOGIES.get(self.topology).routed and k > self.clusters:
            yield problem(("router", "top_k"), k, f"must be <= society.clusters ({self.clusters})")


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


# --------------------------------------------------------------------------- fixed sections


class TrainConfig(Strict):
    steps: int = Field(300, ge=1, description="optimizer steps")
    batch_size: int = Field(16, ge=1, description="sequences per step (every module sees them)")
    lr: float = Field(1e-3, gt=0, le=1, description="peak learning rate")
    min_lr: float = Field(1e-4, ge=0, le=1, description="final learning rate of the cosine")
    warmup_steps: int = Field(50, ge=0, description="linear warm-up from 0 to lr")
    weight_decay: float = Field(0.1, ge=0, description="AdamW decay, applied to matrices only")
    betas: tuple[float, float] = Field((0.9, 0.99), description="AdamW betas, each in [0, 1)")
    grad_clip: float = Field(1.0, ge=0, description="per-module gradient-norm clip; 0 disables")
    eval_every: int = Field(50, ge=1, description="validation every this many steps")
    eval_batches: int = Field(8, ge=1, description="fixed validation batches per evaluation")

    @field_validator("betas")
    @classmethod
    def _betas(cls, betas: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in betas):
            raise ValueError("each must be in [0, 1)")
        return betas

    @check("min_lr", "lr")
    def _min_lr(self) -> Problems:
        if self.min_lr > self.lr:
            yield problem("min_lr", self.min_lr, f"must be <= lr ({self.lr})")


class LogConfig(Strict):
    every: int = Field(10, ge=1, description="write a metrics row every this many steps")
    checkpoint_every: int = Field(
        0, ge=0, description="checkpoint every this many steps; 0 = only at the end"
    )
    tensorboard: bool = Field(
        False, description="also write scalars to <run dir>/tensorboard (needs tensorboard)"
    )


class Scenario(Strict):
    """A whole scenario: what to simulate, on what data, for how long, where to write."""

    name: str = Field("scenario", min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    seed: int = Field(0, ge=0, description="seeds python, numpy, torch and the corpus")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto = bf16 autocast on CUDA, fp32 on CPU"
    )
    compile: bool = Field(False, description="torch.compile the training step")
    corpus: Corpus = Field(default_factory=lambda: {"kind": "tasks"}, validate_default=True)
    modules: list[ModuleGroup] = Field(min_length=1)
    train: TrainConfig = Field(default_factory=TrainConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    out_dir: str = Field("runs", description="run directories go to <out_dir>/<name>-<time>/")
    society: SocietyConfig | None = Field(
        None, description="how modules are organised and talk; None = independent modules"
    )
    distill: DistillConfig = Field(
        default_factory=DistillConfig, description="EMA / peer self-distillation (off by default)"
    )
    reorganize: ReorganizeConfig | None = Field(
        None, description="what the society does on an emergence event (needs emergence)"
    )
    collapse: CollapseConfig | None = Field(
        None, description="collapse diagnostics per module (entropy, distinct-n, ECE, ...)"
    )
    emergence: EmergenceConfig | None = Field(
        None, description="the semantic-state probe φ and its Δφ events (feeds arousal)"
    )

    @check("reorganize", "emergence")
    def _reorganize_needs_emergence(self) -> Problems:
        if self.reorganize is not None and self.emergence is None:
            yield problem(
                "reorganize",
                self.reorganize.model_dump(mode="json"),
                "needs an `emergence:` section (its events trigger it)",
            )

    @check("collapse", "emergence", "log")
    def _probes_on_log_steps(self) -> Problems:
        for name in ("collapse", "emergence"):
            part = getattr(self, name)
            if part is not None and part.every % self.log.every:
                yield problem(
                    (name, "every"),
                    part.every,
                    f"must be a multiple of log.every ({self.log.every}), so that its values "
                    "land in a logged row",
                )

    @check("society", "reorganize")
    def _actions_fit_society(self) -> Problems:
        soc, acts = self.society, self.reorganize.actions if self.reorganize else []
        for i, act in enumerate(acts):
            loc = ("reorganize", "actions", i)
            if soc is None and act != "replace":
                yield problem(loc, act, "needs a `society:`; independent modules allow: replace")
            elif soc is not None and act in ("split", "merge"):
                if not TOPOLOGIES.get(soc.topology).routed:
                    routed = " or ".join(n for n in TOPOLOGIES.names() if TOPOLOGIES.get(n).routed)
                    yield problem(
                        loc,
                        act,
                        f"needs a routed society (topology {routed}), not {soc.topology!r}; "
                        "allowed here: replace, spawn, prune, rewire",
                    )

    @check("society", "modules")
    def _society_fits_modules(self) -> Problems:
        soc = self.society
        if soc is None:
            return
        C = 1 if TOPOLOGIES.get(soc.topology).one_cluster else soc.clusters
        for i, g in enumerate(self.modules):
            if g.count % C:
                yield problem(
                    ("modules", i, "count"),
                    g.count,
                    f"must be a multiple of society.clusters ({C}), one share per cluster",
                )
        n = sum(g.count for g in self.modules)
        if soc.topology == "monolith" and n != 1:
            yield problem("modules", n, "monolith needs exactly one module")

    @check("modules")
    def _one_message_dim(self) -> Problems:
        dims = sorted({g.message_dim for g in self.modules})
        if len(dims) > 1:
            yield problem("modules", dims, "all groups must share message_dim")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


# --------------------------------------------------------------------------- loading


def builtin_scenarios() -> dict[str, str]:
    """Name -> one-line description of the scenarios shipped with brainnet."""
    out = {}
    for f in sorted(resources.files("brainnet.scenarios").iterdir(), key=lambda f: f.name):
        if f.name.endswith(".yaml"):
            data = yaml.safe_load(f.read_text()) or {}
            out[f.name[: -len(".yaml")]] = str(data.get("description", "")).strip()
    return out


def load_scenario(
    source: str | Path | dict[str, Any],
    overrides: dict[str, Any] | list[str] | None = None,
) -> Scenario:
    """Load and validate a scenario from a built-in name, a YAML file or a dict.

    ``overrides`` maps dotted fields to values (``{"train.lr": 3e-4}``) or is a list of
    ``"a.b=value"`` strings as given to ``--set`` (values parsed as YAML scalars).
    Raises ScenarioError with one line per problem.
    """
    label, data = _read_source(source)
    set_keys: set[str] = set()
    if overrides:
        items = overrides.items() if isinstance(overrides, dict) else parse_sets(overrides)
        for key, value in items:
            apply_override(data, key, value)
            set_keys.add(key)
    try:
        return Scenario.model_validate(data)
    except ValidationError as e:
        errors = e.errors(include_url=False)
    if skipped := skipped_problems(Scenario, data):  # checks pydantic skipped: fields failed
        errors += ValidationError.from_exception_data("Scenario", skipped).errors()
    raise ScenarioError([format_error(err, label, set_keys) for err in errors])


def _read_source(source: str | Path | dict[str, Any]) -> tuple[str, dict[str, Any]]:
    if isinstance(source, dict):
        return "scenario", json.loads(json.dumps(source))  # deep copy, plain types
    path = Path(source)
    if not path.is_file():
        name = str(source).removesuffix(".yaml")
        builtins = builtin_scenarios()
        if name not in builtins:
            why = f"no such file and no built-in of that name; built-ins: {', '.join(builtins)}"
            raise ScenarioError([f"scenario {str(source)!r}: {why}"])
        return f"{name}.yaml", parse_yaml(
            (resources.files("brainnet.scenarios") / f"{name}.yaml").read_text(), f"{name}.yaml"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ScenarioError([f"{path}: cannot read scenario file: {e}"]) from None
    return path.name, parse_yaml(text, path.name)
