"""What one step of a society returns, whatever its topology (``StepOut``), and one bank's
modules each alone on their sequences (``Alone``: what consolidation distils)."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass
class Alone:
    """One bank's modules, each alone (no memory) on the sequences it was given."""

    logits: Tensor  # [M, R, T, V]
    tokens: Tensor  # [M, R, T] (a stride-0 expand when every module saw the whole batch)
    targets: Tensor  # [M, R, T], or [R, T] shared by every module
    rows: Tensor | None  # [M, R] bool: the rows that hold a sequence; None: all (whole batch)


@dataclass
class StepOut:
    """One step of any topology. ``brainnet.learning.objective`` turns it into the loss."""

    task_loss: Tensor  # [] CE of the society's prediction (independent modules: mean module CE)
    # what the modules' own losses add, with their graph: [] the mean module CE over the
    # society's members (merged topologies), or [N] every module's CE (independent modules)
    module_terms: Tensor
    module_loss: Tensor  # [N] detached CE of each module on its sequences (nan: it saw none)
    merged: bool  # one prediction from the clusters (False: independent modules)
    aux_loss: Tensor | None = None  # [] router losses (routed topologies)
    stats: dict[str, Tensor] = field(default_factory=dict)  # device values for logging
    route: object = None  # the router's decision (routed topologies)
    logits: Tensor | None = None  # [C, n, cap, T, V] every module's final prediction (society)
    seq_index: Tensor | None = None  # [C, cap] which sequence sits in each buffer row
    # every module's first prediction when it read no memory, for consolidation to reuse:
    # [C, n, cap, T, V] (society: the first wave held every cluster, no memory), or one
    # [M, B, T, V] per bank (independent modules); None: no such pass (decoded by
    # ``Society.alone``)
    first_logits: Tensor | list[Tensor] | None = None
