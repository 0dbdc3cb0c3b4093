"""Scenario configuration: pydantic models, YAML loading and ``--set`` overrides.

A scenario is data. Every field is validated, unknown keys are errors, and every problem comes
back as one line that names the source, the dotted field, the bad value and what is allowed::

    quickstart.yaml: train.lr = -1: must be > 0
    --set: train.lrr = 0.1: unknown field; allowed: batch_size, betas, ...

Sections that later parts of the society add (society, distill, emergence) slot in beside
``modules`` and ``train`` as further ``Strict`` models.
"""

from __future__ import annotations

from brainnet.config.base import (
    Action,
    Corpus,
    CorpusConfig,
    ModuleConfig,
    ModuleGroup,
    Strict,
    Topology,
)
from brainnet.config.learning import (
    CollapseConfig,
    DistillConfig,
    EMAConfig,
    EmergenceConfig,
    ReorganizeConfig,
    WarmupCorrectionConfig,
)
from brainnet.config.scenario import (
    LogConfig,
    ReliabilityConfig,
    Scenario,
    TrainConfig,
    builtin_scenarios,
    load_scenario,
)
from brainnet.config.society import (
    ArousalConfig,
    BlackboardConfig,
    ClockConfig,
    RouterConfig,
    SocietyConfig,
)
from brainnet.config.views import ViewsConfig
from brainnet.config_errors import ScenarioError

__all__ = [
    "Action",
    "ViewsConfig",
    "ArousalConfig",
    "BlackboardConfig",
    "ClockConfig",
    "CollapseConfig",
    "Corpus",
    "CorpusConfig",
    "DistillConfig",
    "EMAConfig",
    "EmergenceConfig",
    "LogConfig",
    "ModuleConfig",
    "ModuleGroup",
    "ReliabilityConfig",
    "ReorganizeConfig",
    "RouterConfig",
    "Scenario",
    "ScenarioError",
    "SocietyConfig",
    "Strict",
    "Topology",
    "TrainConfig",
    "WarmupCorrectionConfig",
    "builtin_scenarios",
    "load_scenario",
]
