"""Coupled channels: which channel indices of which tensors and parameters must go together.

``build_channel_graph(gm)`` asks a per-op rule (``rules_*.py``, keyed by module type, torch
callable or tensor method) what each node couples; ``find_groups`` turns that into pruning
groups; ``surgery.prune`` removes chosen channels physically.
"""

from graphopt.channels.graph import (
    ChannelGraph,
    ChannelGroup,
    Dim,
    build_channel_graph,
    find_groups,
)

__all__ = ["ChannelGraph", "ChannelGroup", "Dim", "build_channel_graph", "find_groups"]
