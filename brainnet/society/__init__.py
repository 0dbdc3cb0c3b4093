"""The society: topology (networkx), clusters, router (thalamus), blackboard (workspace),
arousal (brainstem), and the step that wires them (``Society``)."""

from brainnet.society.arousal import Arousal
from brainnet.society.router import Router
from brainnet.society.society import Knobs, Society, StepOut
from brainnet.society.topology import TOPOLOGIES, Topology, build_topology

__all__ = [
    "TOPOLOGIES",
    "Arousal",
    "Knobs",
    "Router",
    "Society",
    "StepOut",
    "Topology",
    "build_topology",
]
