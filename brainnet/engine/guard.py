"""The non-finite guard: a module whose loss, gradients or parameters become NaN or Inf is
quarantined instead of poisoning the society.

After each backward the guard reads one flag (the one host sync it adds: are the loss and
every module's gradient norm finite?). On a non-finite step:

1. the step's update is dropped whole: no optimiser step, no EMA update, so no other module's
   parameters or optimiser state ever see the non-finite values (the culprit's messages
   reached its mates and the board within the step, and its prediction the merge; dropping
   the update is what masks it out of routing, the blackboard and the merge);
2. the culprits are found: modules with non-finite parameters, else modules whose own
   prediction alone (no memory) on the batch is non-finite;
3. each culprit is restored from its EMA teacher's row (``on_nonfinite: ema``, when the row is
   finite) or re-initialised (``reinit``), with zeroed AdamW moments, and a ``quarantine``
   event names it, the cause and the action.

A module quarantined more than ``max_strikes`` times, every module at once, or
``max_strikes`` consecutive non-finite steps without a culprit stop the run with one line
(``NonFiniteError``); the last checkpoint on disk is the last good one.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from brainnet.data import Batch
from brainnet.metrics import RunWriter
from brainnet.modules import build_bank
from brainnet.modules.resize import reset_rows
from brainnet.society import Society, independent_step


class NonFiniteError(RuntimeError):
    """The run cannot go on: modules keep going non-finite (one line, for the CLI)."""


class Guard:
    """Checks every step for non-finite values and quarantines the modules that cause them."""

    def __init__(
        self, mode: str, max_strikes: int, society: Society, optimizer: torch.optim.Optimizer,
        teacher: Any, seed: int,
    ) -> None:  # fmt: skip
        self.mode, self.max_strikes = mode, max_strikes
        self.society, self.optimizer, self.teacher, self.seed = society, optimizer, teacher, seed
        self.strikes: dict[int, int] = {}  # global module id -> quarantines so far
        self.blind = 0  # consecutive non-finite steps without a culprit

    def finite(self, loss: Tensor, norms: Tensor) -> bool:
        """Whether the step's loss and every module's gradient norm [N] are finite."""
        return bool(torch.isfinite(loss.detach()).all() & torch.isfinite(norms).all())

    @torch.no_grad()
    def quarantine(self, step: int, batch: Batch, w: RunWriter | None) -> list[int]:
        """Find and restore the culprits of a non-finite step; returns their global ids."""
        soc = self.society
        culprits, cause = self._culprits(batch)
        if self.mode == "stop":
            raise NonFiniteError(
                f"step {step}: non-finite loss or gradients (modules {culprits}: {cause}; "
                "reliability.on_nonfinite = 'stop'); the last checkpoint is the last good one"
            )
        if not culprits:
            self.blind += 1
            if w is not None:
                w.event("quarantine", step, modules=[], cause="non-finite step, no culprit",
                        action="update skipped")  # fmt: skip
            if self.blind >= self.max_strikes:
                raise NonFiniteError(
                    f"step {step}: {self.blind} non-finite steps in a row and no module is the "
                    f"cause (reliability.max_strikes = {self.max_strikes}); the last checkpoint "
                    "is the last good one"
                )
            return []
        self.blind = 0
        if len(culprits) == soc.n_modules:
            raise NonFiniteError(
                f"step {step}: every module went non-finite ({cause}); the last checkpoint is "
                "the last good one"
            )
        actions = []
        for b, bank in enumerate(soc.banks):
            off = soc.topology.bank_offset(b)
            rows = [m - off for m in culprits if off <= m < off + bank.n_modules]
            if rows:
                actions.append(self._restore(b, torch.tensor(rows, device=_device(bank)), step))
        for m in culprits:
            self.strikes[m] = self.strikes.get(m, 0) + 1
        if w is not None:
            strikes = [self.strikes[m] for m in culprits]
            w.event("quarantine", step, modules=culprits, cause=cause,
                    action=" + ".join(actions), strikes=strikes)  # fmt: skip
        worst = max(culprits, key=lambda m: self.strikes[m])
        if self.strikes[worst] > self.max_strikes:
            raise NonFiniteError(
                f"step {step}: module {worst} went non-finite {self.strikes[worst]} times "
                f"(reliability.max_strikes = {self.max_strikes}); the last checkpoint is the last "
                "good one"
            )
        return culprits

    def _culprits(self, batch: Batch) -> tuple[list[int], str]:
        """Modules with non-finite parameters, else those whose own prediction is not finite."""
        soc, bad_p = self.society, []
        for b, bank in enumerate(soc.banks):
            M, off = bank.n_modules, soc.topology.bank_offset(b)
            ok = torch.ones(M, dtype=torch.bool, device=_device(bank))
            for p in bank.parameters():
                ok &= torch.isfinite(p.reshape(M, -1)).all(1)
            bad_p += [off + i for i in (~ok).nonzero().flatten().tolist()]
        if bad_p:
            return bad_p, "non-finite parameters"
        soc.eval()
        ce = independent_step(soc.banks, batch).module_loss  # [N] every module alone
        soc.train()
        bad_z = (~torch.isfinite(ce)).nonzero().flatten().tolist()
        return bad_z, "non-finite prediction"

    def _restore(self, b: int, rows: Tensor, step: int) -> str:
        """Restore bank ``b``'s ``rows`` from the EMA teacher (finite rows) or re-initialise."""
        bank = self.society.banks[b]
        mirror = None if self.teacher is None else self.teacher.mirror(b)
        if self.mode == "ema" and mirror is not None:
            ok = torch.ones(len(rows), dtype=torch.bool, device=rows.device)
            for p in mirror.parameters():
                ok &= torch.isfinite(p.index_select(0, rows).reshape(len(rows), -1)).all(1)
            if bool(ok.all()):
                reset_rows(bank, rows, mirror, self.optimizer)
                return f"bank {b} rows {rows.tolist()} restored from the EMA teacher"
        with torch.random.fork_rng(devices=[]):  # a fresh start that leaves the run's RNG alone
            torch.manual_seed(self.seed + 1_000_003 * (step + 1) + b)
            fresh = build_bank(bank.cfg, bank.vocab_size, bank.block_size).to(_device(bank))
        reset_rows(bank, rows, fresh, self.optimizer)
        if mirror is not None:  # the teacher restarts with the module
            reset_rows(mirror, rows, fresh)
        return f"bank {b} rows {rows.tolist()} re-initialised"


def _device(bank: torch.nn.Module) -> torch.device:
    return next(bank.parameters()).device
