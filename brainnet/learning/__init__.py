"""Learning dynamics between modules: EMA teachers and distillation (distill)."""

from brainnet.learning.collapse import CollapseConfig as CollapseConfig
from brainnet.learning.collapse import CollapseMonitor as CollapseMonitor
from brainnet.learning.collapse import cluster_probs as cluster_probs
from brainnet.learning.collapse import diagnose as diagnose
from brainnet.learning.collapse import distinct_n as distinct_n
from brainnet.learning.collapse import expected_calibration_error as expected_calibration_error
from brainnet.learning.collapse import peer_disagreement as peer_disagreement
from brainnet.learning.collapse import predictive_entropy as predictive_entropy
from brainnet.learning.collapse import sample as sample
from brainnet.learning.collapse import top1_mass as top1_mass
from brainnet.learning.distill import DistillConfig as DistillConfig
from brainnet.learning.distill import EMAConfig as EMAConfig
from brainnet.learning.distill import EMATeacher as EMATeacher
from brainnet.learning.distill import WarmupCorrectionConfig as WarmupCorrectionConfig
from brainnet.learning.distill import distill_loss as distill_loss
from brainnet.learning.distill import ema_momentum as ema_momentum
from brainnet.learning.distill import gather_peers as gather_peers
from brainnet.learning.distill import kd_loss as kd_loss
from brainnet.learning.distill import mates_index as mates_index
from brainnet.learning.distill import peer_logits_from_clusters as peer_logits_from_clusters
from brainnet.learning.distill import warmup_correct as warmup_correct
from brainnet.learning.emergence import EmergenceConfig as EmergenceConfig
from brainnet.learning.emergence import EmergenceTracker as EmergenceTracker
from brainnet.learning.emergence import SemanticGrid as SemanticGrid
from brainnet.learning.emergence import delta_phi as delta_phi
from brainnet.learning.emergence import probe_batch as probe_batch
