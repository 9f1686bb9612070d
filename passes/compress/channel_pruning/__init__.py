"""Structured channel pruning over coupled channel groups: the pass (``pruner``), channel
scores (``importance``, ``output_error``), the MAC budget and selection (``budget``) and budgets
by measured sensitivity (``sensitivity``)."""

from graphopt.passes.compress.channel_pruning.pruner import ChannelPruning

__all__ = ["ChannelPruning"]
