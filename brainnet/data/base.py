"""What every corpus gives the simulation: batches of next-token prediction with domain labels."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Literal

import torch

Split = Literal["train", "val"]


@dataclass
class Batch:
    """One batch of next-token prediction."""

    x: torch.Tensor  # [B, T] long, input tokens
    y: torch.Tensor  # [B, T] long, targets: x shifted left by one
    domain: torch.Tensor  # [B] long, domain id of each sequence (0 for plain text)

    def to(self, device: torch.device | str) -> Batch:
        nb = torch.device(device).type == "cuda"
        return Batch(*(t.to(device, non_blocking=nb) for t in (self.x, self.y, self.domain)))


class Corpus(ABC):
    """A tokenised corpus with disjoint train / val splits.

    Subclasses set ``vocab_size``, ``block_size`` and ``domains`` and implement ``batch``,
    ``decode`` and ``vocab``. Sampling takes an explicit ``torch.Generator`` so that runs are
    reproducible and the simulation's model RNG is not disturbed by data sampling.
    """

    vocab_size: int
    block_size: int
    domains: list[str]

    @abstractmethod
    def batch(self, split: Split, batch_size: int, generator: torch.Generator) -> Batch:
        """Sample ``batch_size`` sequences of ``block_size`` tokens from ``split``."""

    def at_step(self, step: int) -> None:  # noqa: B027 (optional hook, no-op by default)
        """Called before each training batch is drawn: a corpus may change with time
        (e.g. new domains appear). Validation is not affected."""

    @abstractmethod
    def decode(self, ids: list[int] | torch.Tensor) -> str:
        """Token ids -> text."""

    @abstractmethod
    def vocab(self) -> dict[str, Any]:
        """JSON-able description of the vocabulary, saved as vocab.json in the run directory."""
