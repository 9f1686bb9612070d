"""Built-in passes, installed as ``graphopt.passes``.

They register through the ``graphopt.passes`` entry-point group, exactly like plugins.
"""

from graphopt.passes.channel_pruning import ChannelPruning
from graphopt.passes.eliminate_dead_code import EliminateDeadCode
from graphopt.passes.fold_batch_norm import FoldBatchNorm
from graphopt.passes.remove_identity import RemoveIdentity

BUILTIN_PASSES = (ChannelPruning, EliminateDeadCode, FoldBatchNorm, RemoveIdentity)

__all__ = [
    "BUILTIN_PASSES",
    "ChannelPruning",
    "EliminateDeadCode",
    "FoldBatchNorm",
    "RemoveIdentity",
]
