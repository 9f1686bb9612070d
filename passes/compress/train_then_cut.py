"""TrainThenCut: the shared frame of θ ⇐ SGD on L + penalty(channels), then ChannelPruning.

Group-sparse training and L0 gates both train the model with a penalty over the channels a
nested :class:`ChannelPruning` configuration would thin, then run that configuration. This base
holds what they share: the ``pruning`` field, the data check, the groups, the seeded training
loop and the report that merges the cut's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
from pydantic import Field
from torch import fx

from graphopt.channels import ChannelGroup, build_channel_graph, find_groups
from graphopt.errors import ConfigError
from graphopt.pass_base import TRAINING, Pass, PassContext, PassResult
from graphopt.passes.compress.channel_pruning import ChannelPruning
from graphopt.passes.recover.knowledge_distillation import KnowledgeDistillation, Trainer


class TrainThenCut(Pass):
    """Base of the training-time pruning passes (not registered itself)."""

    requires_data: ClassVar[frozenset[str]] = frozenset({TRAINING})

    training: KnowledgeDistillation
    pruning: ChannelPruning = Field(
        default_factory=lambda: ChannelPruning(ratio=0.5, importance="l2"),
        description="The cut after training (a channel_pruning configuration).",
    )

    def data_needs(self) -> frozenset[str]:
        return self.requires_data | self.pruning.data_needs()

    def prunable_groups(self, gm: fx.GraphModule, ctx: PassContext) -> list[ChannelGroup]:
        """The groups ``pruning`` may thin; refuses without training data or groups."""
        if ctx.training_data is None:
            raise ConfigError(f"{self.name} needs training data: optimize(..., training_data=...)")
        groups = [p.group for p in self.pruning.plans(gm, find_groups(build_channel_graph(gm)))[0]]
        if not groups:
            raise ConfigError(f"{self.name}: no channel group of the graph may be pruned")
        return groups

    def train(
        self, gm: fx.GraphModule, ctx: PassContext, penalty: Callable[[], torch.Tensor]
    ) -> tuple[Trainer, int]:
        """The ``training`` loop on ``gm`` with ``penalty`` added to every step's loss (seeded;
        ``gm`` ends in eval mode); the trainer and its step count."""
        data = ctx.training_data
        seed = ctx.seed if self.training.seed is None else self.training.seed
        steps = self.training.total_steps(data)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            trainer = Trainer(self.training, gm, ctx.original, [], None, penalty=penalty)
            trainer.train(data, steps)
        return trainer, steps

    def merged(
        self, cut: PassResult, note: str, metrics: dict[str, float], more: tuple[str, ...] = ()
    ) -> PassResult:
        """This pass's result: the cut's graph, its report under this pass's ``note``, and
        ``metrics`` beside the cut's (``more`` notes after the cut's)."""
        notes = [note, *cut.report.notes, *more]
        report = self.report(True, cut.report.touched, cut.report.declined, notes)
        report.metrics.update(cut.report.metrics)
        report.metrics.update(metrics)
        return PassResult(cut.graph, True, report)


def channel_members(
    gm: fx.GraphModule, groups: list[ChannelGroup]
) -> list[list[tuple[str, int, torch.Tensor]]]:
    """Per group, each parameter member as (owner name, axis, channel label of each index)."""
    params = dict(gm.named_parameters())
    return [
        [
            (d.owner, d.axis, torch.as_tensor(g.labels[d], dtype=torch.long))
            for d in g.params
            if d.owner in params
        ]
        for g in groups
    ]
