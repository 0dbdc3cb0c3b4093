"""``brainnet sweep``: scenarios × settings × seeds, run locally or on Ray, into one directory.

    import brainnet
    s = brainnet.sweep("scenarios/sweeps/topologies.yaml", workers=4)
    s.index                        # one row per run (Arrow); brainnet/sweep/index.py: columns
    s.run("brain/seed=0").metrics  # any run's metrics

The parts: ``spec`` (the sweep file), ``plan`` (groups × seeds, every scenario validated up
front), ``executor`` (one interface: a local process pool, or Ray), ``worker`` (the one
function a task runs), ``index`` (markers and index.parquet), ``driver`` (skip, submit,
collect, resubmit lost runs). ``brainnet.sweep`` the function shadows this package as an
attribute of ``brainnet``: import its parts with ``from brainnet.sweep.<part> import ...``.
"""

from brainnet.sweep.driver import sweep
from brainnet.sweep.executor import Executor, LocalExecutor, RayExecutor, make_executor
from brainnet.sweep.plan import PlannedRun, plan
from brainnet.sweep.spec import SweepSpec, load_sweep

__all__ = [
    "Executor",
    "LocalExecutor",
    "PlannedRun",
    "RayExecutor",
    "SweepSpec",
    "load_sweep",
    "make_executor",
    "plan",
    "sweep",
]
