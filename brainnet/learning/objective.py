"""The loss of a step: the ONE place where the society's terms and the distillation term meet.

merged society   L = CE(society's prediction) + w · mean_m CE_m + router losses
independent      L = Σ_m CE_m                  (each module's gradient is its own loss's)
consolidation    L + mean_m KD_m               (labels on: the society's loss stays)
                 Σ_m KD_m                      (closed soft loop, or independent modules,
                                                whose KD_m = α·CE_m + (1 − α)·T²·KL_m
                                                already holds their labels)
"""

from __future__ import annotations

from torch import Tensor

from brainnet.society import StepOut


def objective(
    out: StepOut, module_weight: float, kd: Tensor | None = None, labels: bool = True
) -> Tensor:
    """What the optimiser minimises for step ``out``; ``kd`` [N] the per-module distillation
    loss of a consolidation step (None otherwise), ``labels`` whether hard labels stay on."""
    if kd is not None and not (labels and out.merged):
        return kd.sum()
    if out.merged:
        loss = out.task_loss + module_weight * out.module_terms
        if out.aux_loss is not None:
            loss = loss + out.aux_loss
    else:
        loss = out.module_terms.sum()
    return loss if kd is None else loss + kd.mean()
