"""What every corpus gives the simulation: batches of next-token prediction with domain labels."""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from typing import Any, Literal

import torch

Split = Literal["train", "val"]


@dataclasses.dataclass
class Batch:
    """One batch of next-token prediction."""

    x: torch.Tensor  # [B, T] long, input tokens
    y: torch.Tensor  # [B, T] long, targets: x shifted left by one
    domain: torch.Tensor  # [B] long, domain id of each sequence (0 for plain text)
    #: [B, T] long, the field of each INPUT token (0 = shared, seen by every view); None = the
    #: corpus has no fields (views cannot apply)
    field: torch.Tensor | None = None
    #: [B, T] bool, the TARGET y[:, t] is an answer token (None = the corpus has no answers)
    answer: torch.Tensor | None = None
    #: [B, T] float, each target's weight in the training loss, mean 1 (None = all equal;
    #: set by the simulation from ``train.answer_weight``, never by a corpus)
    weight: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> Batch:
        nb = torch.device(device).type == "cuda"
        move = lambda t: None if t is None else t.to(device, non_blocking=nb)  # noqa: E731
        parts = (self.x, self.y, self.domain, self.field, self.answer, self.weight)
        return Batch(*(move(t) for t in parts))

    def weighted(self, answer_weight: float) -> Batch:
        """This batch with answer targets counting ``answer_weight`` times a prompt target in
        the training loss (weights normalised to mean 1, so the loss keeps its scale); itself
        when the weight is 1 or the corpus has no answers."""
        if answer_weight == 1 or self.answer is None:
            return self
        w = 1 + (answer_weight - 1) * self.answer.float()  # [B, T]
        return dataclasses.replace(self, weight=w / w.mean())


class Corpus(ABC):
    """A tokenised corpus with disjoint train / val splits.

    Subclasses set ``vocab_size``, ``block_size`` and ``domains`` and implement ``batch``,
    ``decode`` and ``vocab``. Sampling takes an explicit ``torch.Generator`` so that runs are
    reproducible and the simulation's model RNG is not disturbed by data sampling.
    """

    vocab_size: int
    block_size: int
    domains: list[str]
    #: fields an input token can belong to (field 0 = shared); 1 = no fields, views cannot apply
    n_fields: int = 1
    #: the token a view sees in place of a field it does not receive
    blank_token: int = 0
    #: batches mark answer targets (``Batch.answer``): answer metrics, ``train.answer_weight``
    has_answers: bool = False

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
