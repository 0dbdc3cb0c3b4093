"""Teachers: what consolidation needs of one (``Teacher``), and the frozen teacher, the trained
modules of an earlier brainnet run (``distill.teacher: run``; the EMA teacher is in distill.py).

The checkpoint of the teacher run holds its resolved scenario and its model state; the banks
are rebuilt from that scenario, loaded, put in eval mode with ``requires_grad_(False)`` and
moved to the student's device. The teacher is never trained, never in an optimiser, and its
weights are not copied into the student's checkpoint: only the path is, and a resumed run
reloads the teacher from disk.

The teacher's prediction is the mixture of its K modules (every module of every bank, each
alone, no memory — as the consolidation pass runs the students)::

    log q(v | x_{<t}) = log (1/K) Σ_k softmax(z_k)_v        (log of the mean softmax)

averaged in probability space, like a cluster's merge, so the teacher is the ensemble's
predictive distribution. (A mean of logits would be a geometric mean of the K distributions,
renormalised: sharper than any member where they agree and not the ensemble's prediction.)
These log-probabilities serve as the teacher logits t of ``kd_loss``; softmax(t / T) tempers
the mixture. With one teacher module, log_softmax(z) and z differ by a per-position constant,
so the KD term is exactly that of the module's raw logits.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
import yaml
from torch import Tensor

from brainnet.checkpoint import CheckpointError, load_checkpoint
from brainnet.config import ScenarioError, load_scenario
from brainnet.data import Corpus, build_corpus
from brainnet.modules import build_bank
from brainnet.modules.bank import Bank

FIELD = "distill.teacher_run"


class Teacher(Protocol):
    """What consolidation asks of a teacher (``EMATeacher``, ``FrozenTeacher``)."""

    def logits(self, bank_index: int, tokens: Tensor) -> Tensor:
        """Teacher logits for student bank ``bank_index``'s tokens [M, B, T] -> [M, B, T, V]."""
        ...

    def scorer(self, bank_index: int) -> Bank | Callable[[Tensor], Tensor]:
        """What Warmup-Distill scores that bank's samples with (``warmup_correct``)."""
        ...

    def mirror(self, bank_index: int) -> Bank | None:
        """The teacher bank that follows student bank ``bank_index`` through a reorganisation
        (resized with it), or None when the teacher does not follow the students."""
        ...

    def update(self, step: int) -> float | None:
        """After each optimiser step (the EMA moves; a frozen teacher does not)."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class FrozenTeacher:
    """The frozen modules of an earlier run, with the interface the consolidation pass uses
    from ``EMATeacher``: ``logits(b, tokens)``, ``update(step)`` (a no-op), ``state_dict`` /
    ``load_state_dict`` (the path only) and ``banks``.

    ``banks`` are the TEACHER RUN's banks, not one per student bank: a frozen teacher does not
    follow a reorganisation of the students (``mirror`` is None). Build it with
    ``FrozenTeacher.load(path, corpus, device)``.
    """

    def __init__(self, banks: Sequence[Bank], path: str | Path | None = None) -> None:
        self.banks: list[Bank] = list(banks)
        for bank in self.banks:
            bank.requires_grad_(False)
            bank.eval()
        self.path = None if path is None else str(path)
        self.n_modules = sum(b.n_modules for b in self.banks)
        self.step: int | None = None  # the teacher run's step at its checkpoint
        self.name: str | None = None  # the teacher run's scenario name

    # ------------------------------------------------------------------ loading

    @classmethod
    def load(cls, path: str | Path, corpus: Corpus, device: torch.device | str) -> FrozenTeacher:
        """Load the modules of the run at ``path`` (run directory or checkpoint file) as a
        teacher for students trained on ``corpus``. Problems raise a one-line ScenarioError
        that names ``distill.teacher_run``, the path and what is allowed."""
        shown = f"{FIELD} = {str(path)!r}"
        try:
            state = load_checkpoint(path)
        except CheckpointError as e:
            allowed = (
                ""
                if "allowed:" in str(e)
                else "; allowed: a brainnet run directory or its checkpoint.pt"
            )
            raise ScenarioError([f"{shown}: {e}{allowed}"]) from None
        if "scenario" not in state or "model" not in state:
            raise ScenarioError(
                [
                    f"{shown}: the checkpoint has no scenario or model state; allowed: a "
                    "checkpoint written by a brainnet run"
                ]  # fmt: skip
            )
        try:
            sc = load_scenario(yaml.safe_load(state["scenario"]))
        except ScenarioError as e:
            raise ScenarioError(
                [f"{shown}: the teacher run's scenario does not load here ({e.problems[0]})"]
            ) from None
        t_corpus = build_corpus(sc.corpus, sc.seed)
        _check_corpus(shown, t_corpus, corpus)
        # every run holds its banks as "banks.0.wte", ... (checkpoints of independent modules
        # written before they became a society: "0.wte", ...); the modules are used alone
        model = state["model"]
        prefix = "banks." if any(k.startswith("banks.") for k in model) else ""
        banks = []
        for i, group in enumerate(sc.modules):
            sd = {
                k[len(f"{prefix}{i}.") :]: v
                for k, v in model.items()
                if k.startswith(f"{prefix}{i}.")
            }
            bank = build_bank(group, t_corpus.vocab_size, t_corpus.block_size)
            first = next(iter(bank.state_dict()))
            if first in sd and sd[first].shape[0] != bank.n_modules:  # resized by reorganising
                group = group.model_copy(update={"count": int(sd[first].shape[0])})
                bank = build_bank(group, t_corpus.vocab_size, t_corpus.block_size)
            try:
                bank.load_state_dict(sd)
            except RuntimeError as e:
                first_line = str(e).strip().splitlines()[0]
                raise ScenarioError(
                    [f"{shown}: modules.{i} ({group.type}) does not match the checkpoint's "
                     f"weights ({first_line}); allowed: an unmodified brainnet checkpoint"]
                ) from None  # fmt: skip
            banks.append(bank.to(device))
        teacher = cls(banks, path)
        teacher.step, teacher.name = int(state.get("step", 0)), sc.name
        return teacher

    # ------------------------------------------------------------------ the teacher's output

    @torch.no_grad()
    def logits(
        self,
        bank_index: int,
        tokens: Tensor,
        memory: Tensor | None = None,
        memory_mask: Tensor | None = None,
        idx: Tensor | None = None,
    ) -> Tensor:
        """Teacher log-probabilities for student modules' tokens [M', B, T] -> [M', B, T, V].

        The mixture log (1/K) Σ_k softmax(z_k) of all K teacher modules, in fp32, the same
        for every student bank (``bank_index`` and ``idx`` only name the students). When the
        M' rows of ``tokens`` are one batch broadcast (stride 0, as in the consolidation pass)
        the teacher runs once and the result is broadcast back (an expand, no copy)."""
        if memory is not None:
            raise ValueError("a frozen teacher reads no memory (its modules run alone)")
        M, B, T = tokens.shape
        shared = M == 1 or tokens.stride(0) == 0
        x = tokens[0] if shared else tokens.reshape(M * B, T)  # [N, T]
        logp = []
        for bank in self.banks:  # one call per teacher bank, all its modules at once
            z = bank(x.unsqueeze(0).expand(bank.n_modules, -1, -1)).logits  # [K_b, N, T, V]
            logp.append(torch.log_softmax(z.float(), dim=-1))
        mix = torch.logsumexp(torch.cat(logp), dim=0) - math.log(self.n_modules)  # [N, T, V]
        if shared:
            return mix.unsqueeze(0).expand(M, -1, -1, -1)
        return mix.view(M, B, T, -1)

    def update(self, step: int) -> None:
        """A frozen teacher does not move."""

    def mirror(self, bank_index: int) -> None:
        """A frozen teacher does not follow a reorganisation of the students."""
        return None

    def scorer(self, bank_index: int) -> Callable[[Tensor], Tensor]:
        """Warmup-Distill scores with the teacher's mixture (``logits``)."""
        return lambda x: self.logits(bank_index, x)

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        """Only the path: the teacher is reloaded from disk when a run resumes."""
        return {"kind": "run", "path": self.path, "step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or state.get("kind") != "run":
            raise ValueError(
                "teacher state is not a frozen teacher's (an EMA teacher's?); the checkpoint "
                "was written with another distill.teacher"
            )


def _check_corpus(shown: str, teacher: Corpus, student: Corpus) -> None:
    """The teacher must speak the student's vocabulary and see contexts at least as long."""
    if teacher.vocab_size != student.vocab_size:
        raise ScenarioError(
            [
                f"{shown}: vocab_size = {teacher.vocab_size} in the teacher run, "
                f"{student.vocab_size} in this scenario's corpus; allowed: a teacher trained on "
                "the same vocabulary"
            ]  # fmt: skip
        )
    ids = list(range(student.vocab_size))  # token identity through the Corpus interface
    if teacher.decode(ids) != student.decode(ids):
        raise ScenarioError(
            [
                f"{shown}: vocabulary differs (same vocab_size {student.vocab_size}, other "
                "tokens); allowed: a teacher trained on the same vocabulary"
            ]  # fmt: skip
        )
    if teacher.block_size < student.block_size:
        raise ScenarioError(
            [
                f"{shown}: block_size = {teacher.block_size} in the teacher run, "
                f"{student.block_size} in this scenario's corpus; allowed: a teacher block_size "
                ">= the student's"
            ]  # fmt: skip
        )
