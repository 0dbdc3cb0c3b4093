"""brainnet: a society of micro language models organised like a brain.

import brainnet
sc = brainnet.load_scenario("quickstart", overrides={"train.steps": 100})
sim = brainnet.Simulation(sc)
sim.run()
run = brainnet.open_run(sim.run_dir)

sweep = brainnet.sweep("my_sweep.yaml", workers=2)   # scenarios x settings x seeds
sweep.index                                          # one row per run (an Arrow table)
"""

from brainnet.config import ModuleConfig, Scenario, ScenarioError, builtin_scenarios, load_scenario
from brainnet.engine import Simulation
from brainnet.metrics import open_run, open_sweep
from brainnet.modules import MODULE_TYPES, Bank, BankOutput
from brainnet.registry import CORPORA, Registry
from brainnet.sweep import sweep

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
    "Simulation",
    "builtin_scenarios",
    "load_scenario",
    "open_run",
    "open_sweep",
    "sweep",
    "__version__",
]
