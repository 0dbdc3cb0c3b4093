"""brainnet: a society of micro language models organised like a brain."""

from brainnet.config import ModuleConfig, Scenario, ScenarioError, builtin_scenarios, load_scenario
from brainnet.modules import MODULE_TYPES, Bank, BankOutput
from brainnet.registry import CORPORA, Registry

__version__ = "0.1.0"

__all__ = [
    "CORPORA",
    "MODULE_TYPES",
    "Bank",
    "BankOutput",
    "ModuleConfig",
    "Registry",
    "Scenario",
    "ScenarioError",
    "builtin_scenarios",
    "load_scenario",
    "__version__",
]
