"""Learning dynamics: EMA teachers and distillation (distill), frozen teachers from earlier
runs (teacher), collapse diagnostics (collapse), the semantic state φ and emergence events
(emergence). See docs/learning.md."""

from brainnet.learning.collapse import (
    CollapseConfig,
    CollapseMonitor,
    cluster_probs,
    diagnose,
    distinct_n,
    expected_calibration_error,
    peer_disagreement,
    predictive_entropy,
    sample,
    top1_mass,
)
from brainnet.learning.distill import (
    DistillConfig,
    EMAConfig,
    EMATeacher,
    WarmupCorrectionConfig,
    distill_loss,
    ema_momentum,
    kd_loss,
    mean_peer_kd,
    peer_weights,
    warmup_correct,
)
from brainnet.learning.emergence import (
    EmergenceConfig,
    EmergenceTracker,
    SemanticGrid,
    delta_phi,
    probe_batch,
)
from brainnet.learning.teacher import FrozenTeacher
from brainnet.modules.resize import RowPlan, keep, module_rows, resize_bank, spawn

__all__ = [
    "CollapseConfig",
    "CollapseMonitor",
    "DistillConfig",
    "EMAConfig",
    "EMATeacher",
    "EmergenceConfig",
    "EmergenceTracker",
    "FrozenTeacher",
    "RowPlan",
    "SemanticGrid",
    "WarmupCorrectionConfig",
    "cluster_probs",
    "delta_phi",
    "diagnose",
    "distill_loss",
    "distinct_n",
    "ema_momentum",
    "expected_calibration_error",
    "kd_loss",
    "keep",
    "mean_peer_kd",
    "module_rows",
    "peer_disagreement",
    "peer_weights",
    "predictive_entropy",
    "probe_batch",
    "resize_bank",
    "sample",
    "spawn",
    "top1_mass",
    "warmup_correct",
]
