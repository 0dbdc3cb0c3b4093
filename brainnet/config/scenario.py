"""A whole scenario (``Scenario``), its fixed sections (train, log, reliability) and loading."""

from __future__ import annotations

import copy
import json
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    Field,
    ValidationError,
    field_validator,
)

from brainnet.config.base import (
    Corpus,
    ModuleGroup,
    Strict,
)
from brainnet.config.learning import (
    CollapseConfig,
    DistillConfig,
    EmergenceConfig,
    ReorganizeConfig,
)
from brainnet.config.society import (
    SocietyConfig,
)
from brainnet.config.views import ViewsConfig
from brainnet.config_errors import (
    SET,
    Origin,
    Problems,
    ScenarioError,
    apply_override,
    check,
    format_error,
    parse_sets,
    parse_yaml,
    problem,
    skipped_problems,
)
from brainnet.registry import CORPORA, TOPOLOGIES

# --------------------------------------------------------------------------- fixed sections


def _corpora_where(has: Any) -> list[str]:
    """The registered corpus kinds whose class passes ``has`` (for an error's "allowed")."""
    return [n for n in CORPORA.names() if has(CORPORA.get(n))]


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
    answer_weight: float = Field(
        1.0,
        ge=1,
        allow_inf_nan=False,
        description="an answer target counts this many times a prompt target in the training "
        "loss (weights normalised to mean 1; validation stays plain); 1 = plain next-token loss",
    )

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
        0,
        ge=0,
        description="checkpoint every this many steps (a multiple of every); 0 = at the end",
    )
    keep_checkpoints: int = Field(
        1, ge=1, description="checkpoints kept: checkpoint.pt and the newest older ones"
    )
    tensorboard: bool = Field(
        False, description="also write scalars to <run dir>/tensorboard (needs tensorboard)"
    )


class ReliabilityConfig(Strict):
    """What a run does when a module's loss, gradients or parameters become NaN or Inf
    (brainnet/engine/guard.py): the step's update is dropped and the module quarantined."""

    on_nonfinite: Literal["ema", "reinit", "stop"] = Field(
        "ema",
        description="ema: restore the module from its EMA teacher (re-initialise without one); "
        "reinit: re-initialise it; stop: stop the run with a one-line error",
    )
    max_strikes: int = Field(
        3, ge=0, description="stop when one module is quarantined more often than this"
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
    reliability: ReliabilityConfig = Field(
        default_factory=ReliabilityConfig, description="non-finite losses and gradients"
    )
    views: ViewsConfig | None = Field(
        None, description="the input fields each cluster or module receives; None = all"
    )

    @check("views", "corpus", "reorganize", "distill")
    def _views_fit_corpus(self) -> Problems:
        if self.views is None:
            return
        kind = self.corpus.kind
        n_fields = getattr(CORPORA.get(kind), "n_fields", 1) if kind in CORPORA else 1
        if n_fields <= 1:
            with_fields = _corpora_where(lambda c: getattr(c, "n_fields", 1) > 1)
            yield problem("views", self.views.model_dump(mode="json"),
                          f"corpus {kind!r} has no fields; allowed: a corpus with fields "
                          f"({', '.join(with_fields)})")  # fmt: skip
            return
        for i, view in enumerate(self.views.fields):
            for j, f in enumerate(view):
                if f >= n_fields:
                    yield problem(("views", "fields", i, j), f,
                                  f"corpus {kind!r} has fields 1..{n_fields - 1}")  # fmt: skip
        if self.reorganize is not None:
            yield problem("reorganize", self.reorganize.model_dump(mode="json"),
                          "cannot go with `views:` (a view belongs to a fixed module layout); "
                          "allowed: reorganize: null")  # fmt: skip
        if self.distill.warmup_correction.enabled:
            yield problem(("distill", "warmup_correction", "enabled"), True,
                          "cannot go with `views:` (its samples read the whole input); "
                          "allowed: false")  # fmt: skip

    @check("train", "corpus", "distill")
    def _answer_weight_needs_answers(self) -> Problems:
        kind = self.corpus.kind
        if self.train.answer_weight == 1 or kind not in CORPORA:
            return
        if self.distill.enabled:
            yield problem(("train", "answer_weight"), self.train.answer_weight,
                          "cannot go with distill.enabled (consolidation's losses are plain "
                          "means); allowed: 1 with distillation")  # fmt: skip
        if not getattr(CORPORA.get(kind), "has_answers", False):
            with_answers = _corpora_where(lambda c: getattr(c, "has_answers", False))
            yield problem(("train", "answer_weight"), self.train.answer_weight,
                          f"corpus {kind!r} has no answer tokens; allowed: 1, or a corpus with "
                          f"answers ({', '.join(with_answers)})")  # fmt: skip

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

    @check("log")
    def _checkpoints_on_log_steps(self) -> Problems:
        log = self.log
        if log.checkpoint_every % log.every:
            yield problem(("log", "checkpoint_every"), log.checkpoint_every,
                          f"must be a multiple of log.every ({log.every}), so that a resumed run "
                          "goes on from a logged row")  # fmt: skip

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
    *,
    origins: dict[str, Origin] | None = None,
) -> Scenario:
    """Load and validate a scenario from a built-in name, a YAML file or a dict.

    ``overrides`` maps dotted fields to values (``{"train.lr": 3e-4}``) or is a list of
    ``"a.b=value"`` strings as given to ``--set`` (values parsed as YAML scalars), applied in
    order. ``origins`` says where an override came from, for its error lines (default:
    ``--set``; a sweep passes ``("sweep.yaml", "grid")``).
    Raises ScenarioError with one line per problem.
    """
    label, data = _read_source(source)
    set_keys: dict[str, Origin] = {}
    if overrides:
        items = overrides.items() if isinstance(overrides, dict) else parse_sets(overrides)
        for key, value in items:
            origin = (origins or {}).get(key, SET)
            apply_override(data, key, copy.deepcopy(value), origin)  # later keys write into it
            set_keys[key] = origin
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
