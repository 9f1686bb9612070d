"""Built-in passes, installed as ``graphopt.passes``.

They register through the ``graphopt.passes`` entry-point group, exactly like plugins.
"""

from graphopt.passes.batch_norm_recalibration import BatchNormRecalibration
from graphopt.passes.channel_pruning import ChannelPruning
from graphopt.passes.depthwise_substitution import DepthwiseSubstitution
from graphopt.passes.eliminate_dead_code import EliminateDeadCode
from graphopt.passes.fold_batch_norm import FoldBatchNorm
from graphopt.passes.knowledge_distillation import KnowledgeDistillation
from graphopt.passes.layerwise_reconstruction import LayerwiseReconstruction
from graphopt.passes.low_rank import LowRankFactorization
from graphopt.passes.net2net_deepen import Net2NetDeepen
from graphopt.passes.net2net_shrink import Net2NetShrink
from graphopt.passes.net2net_widen import Net2NetWiden
from graphopt.passes.remove_identity import RemoveIdentity

BUILTIN_PASSES = (
    BatchNormRecalibration,
    ChannelPruning,
    DepthwiseSubstitution,
    EliminateDeadCode,
    FoldBatchNorm,
    KnowledgeDistillation,
    LayerwiseReconstruction,
    LowRankFactorization,
    Net2NetDeepen,
    Net2NetShrink,
    Net2NetWiden,
    RemoveIdentity,
)

__all__ = [
    "BUILTIN_PASSES",
    "BatchNormRecalibration",
    "ChannelPruning",
    "DepthwiseSubstitution",
    "EliminateDeadCode",
    "FoldBatchNorm",
    "KnowledgeDistillation",
    "LayerwiseReconstruction",
    "LowRankFactorization",
    "Net2NetDeepen",
    "Net2NetShrink",
    "Net2NetWiden",
    "RemoveIdentity",
]
