"""Built-in passes, installed as ``graphopt.passes``.

They register through the ``graphopt.passes`` entry-point group, exactly like plugins.
"""

from graphopt.passes.canonicalize.eliminate_dead_code import EliminateDeadCode
from graphopt.passes.canonicalize.fold_batch_norm import FoldBatchNorm
from graphopt.passes.canonicalize.remove_identity import RemoveIdentity
from graphopt.passes.compress.channel_pruning.pruner import ChannelPruning
from graphopt.passes.compress.depthwise_substitution import DepthwiseSubstitution
from graphopt.passes.compress.group_sparse_training import GroupSparseTraining
from graphopt.passes.compress.iterative_pruning import IterativePruning
from graphopt.passes.compress.l0_gates import L0Gates
from graphopt.passes.compress.low_rank import LowRankFactorization
from graphopt.passes.compress.net2net_shrink import Net2NetShrink
from graphopt.passes.grow.net2net_deepen import Net2NetDeepen
from graphopt.passes.grow.net2net_widen import Net2NetWiden
from graphopt.passes.recover.batch_norm_recalibration import BatchNormRecalibration
from graphopt.passes.recover.knowledge_distillation import KnowledgeDistillation
from graphopt.passes.recover.layerwise_reconstruction import LayerwiseReconstruction

BUILTIN_PASSES = (
    BatchNormRecalibration,
    ChannelPruning,
    DepthwiseSubstitution,
    EliminateDeadCode,
    FoldBatchNorm,
    GroupSparseTraining,
    IterativePruning,
    KnowledgeDistillation,
    L0Gates,
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
    "GroupSparseTraining",
    "IterativePruning",
    "KnowledgeDistillation",
    "L0Gates",
    "LayerwiseReconstruction",
    "LowRankFactorization",
    "Net2NetDeepen",
    "Net2NetShrink",
    "Net2NetWiden",
    "RemoveIdentity",
]
