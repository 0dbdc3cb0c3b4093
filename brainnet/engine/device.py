"""Where a run computes and from which seed it starts: the device a scenario's ``device``
names, and every RNG (python, numpy, torch) seeded from ``scenario.seed``."""

from __future__ import annotations

import random

import numpy as np
import torch

from brainnet.config import ScenarioError


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ScenarioError(
            ["device = 'cuda': CUDA is not available on this machine; allowed: auto, cpu"]
        )
    return torch.device(name)
