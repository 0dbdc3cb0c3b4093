"""The society: topology (networkx), clusters, router (thalamus), blackboard (workspace),
arousal (brainstem), and the step that wires them (``Society``); independent modules are the
degenerate society (``independent``)."""

from brainnet.registry import TOPOLOGIES
from brainnet.society.arousal import Arousal, Knobs
from brainnet.society.independent import independent_step
from brainnet.society.output import Alone, StepOut
from brainnet.society.router import Router
from brainnet.society.society import Society
from brainnet.society.topology import Kind, Topology, build_topology

__all__ = [
    "TOPOLOGIES",
    "Alone",
    "Arousal",
    "Kind",
    "Knobs",
    "Router",
    "Society",
    "StepOut",
    "Topology",
    "build_topology",
    "independent_step",
]
