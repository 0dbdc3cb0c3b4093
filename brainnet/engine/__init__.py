"""The engine: the step flow (Simulation), optimisation, checkpoints."""

from brainnet.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from brainnet.engine.simulation import Simulation

__all__ = ["CheckpointError", "Simulation", "load_checkpoint", "save_checkpoint"]
