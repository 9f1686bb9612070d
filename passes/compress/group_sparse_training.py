"""GroupSparseTraining: θ ⇐ SGD on L + λ·Σ_c ‖θ_c‖₂ over coupled channels, then cut the weakest.

``θ_c`` is every parameter element of one coupled channel ``c``: in a residual stream that is
the output rows of every conv writing to the stream, their BatchNorm scales and shifts, and
the input columns of every layer reading it, all penalised as one vector (group lasso,
Scardapane et al. 2016; the "sparse learning" stage of DepGraph, Fang et al. 2023). The
penalty drives whole channels towards zero together, so the cut that follows removes
channels the network has already learnt to do without. The channels are those the nested
``pruning`` configuration would thin (the same groups, selection and caps), and the cut is
that configuration run after training, ranking channels by their group norm (``l2``).
"""

from __future__ import annotations

from typing import Annotated, ClassVar

import torch
from pydantic import Field
from torch import fx

from graphopt.channels import ChannelGroup, build_channel_graph, find_groups
from graphopt.errors import ConfigError
from graphopt.pass_base import TRAINING, Pass, PassContext, PassResult
from graphopt.passes.compress.channel_pruning import ChannelPruning
from graphopt.passes.recover.knowledge_distillation import KnowledgeDistillation, Trainer

# A channel whose norm is below this fraction of its group's mean counts as driven to zero.
ZERO = 1e-2


class GroupSparseTraining(Pass):
    """Train with a group-norm penalty over every coupled channel, then prune to the target.

    ``training`` is the loop (a :class:`KnowledgeDistillation` configuration: steps or epochs,
    optimiser, learning rate, and the loss: cross-entropy on labels by default, distillation
    from the model before this pass with ``kd_weight``); ``strength`` is λ. ``pruning`` is the
    cut after training (omitted: ``ratio 0.5, importance l2``; ``l2`` ranks channels by the
    group norm the penalty shrinks, the other criteria work too).
    The report gives the penalty before and after training and how many channels it drove
    below 1 % of their group's mean norm.
    """

    name: ClassVar[str] = "group_sparse_training"
    exact: ClassVar[bool] = False
    requires_data: ClassVar[frozenset[str]] = frozenset({TRAINING})

    strength: Annotated[float, Field(ge=0, le=10)] = Field(
        default=5e-4,
        description="λ, the weight of Σ‖θ_c‖₂ in the training loss (0: train, then cut).",
    )
    training: KnowledgeDistillation = Field(
        default_factory=lambda: KnowledgeDistillation(
            epochs=1, kd_weight=0.0, label_weight=1.0, progress=True
        ),
        description="The training loop and its loss (a knowledge_distillation configuration).",
    )
    pruning: ChannelPruning = Field(
        default_factory=lambda: ChannelPruning(ratio=0.5, importance="l2"),
        description="The cut after training (a channel_pruning configuration).",
    )

    def data_needs(self) -> frozenset[str]:
        return self.requires_data | self.pruning.data_needs()

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        data = ctx.training_data
        if data is None:
            raise ConfigError(f"{self.name} needs training data: optimize(..., training_data=...)")
        groups = [p.group for p in self.pruning.plans(gm, find_groups(build_channel_graph(gm)))[0]]
        if not groups:
            raise ConfigError(f"{self.name}: no channel group of the graph may be pruned")
        penalty = GroupNormPenalty(gm, groups)
        before = penalty.value()
        seed = ctx.seed if self.training.seed is None else self.training.seed
        steps = self.training.total_steps(data)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            trainer = Trainer(
                self.training,
                gm,
                ctx.original,
                [],
                None,
                penalty=lambda: self.strength * penalty(),
            )
            trainer.train(data, steps)
        after, zero = penalty.value(), penalty.channels_below(ZERO)
        cut = self.pruning(gm, ctx)
        notes = [
            f"{steps} training steps in {trainer.seconds:.1f} s; Σ‖θ_c‖₂ {before:.4g} → "
            f"{after:.4g}; {zero} of {penalty.channels} channels below {ZERO:.0%} of their "
            "group's mean norm",
            *cut.report.notes,
        ]
        report = self.report(True, cut.report.touched, cut.report.declined, notes)
        report.metrics.update(cut.report.metrics)
        report.metrics.update(
            penalty_before=before, penalty_after=after, channels_near_zero=float(zero)
        )
        return PassResult(cut.graph, True, report)


class GroupNormPenalty:
    """Σ over groups and channels of the L2 norm of the channel's parameter elements."""

    def __init__(self, gm: fx.GraphModule, groups: list[ChannelGroup]) -> None:
        params = dict(gm.named_parameters())
        self.members: list[list[tuple[torch.nn.Parameter, int, torch.Tensor]]] = []
        self.sizes = [g.num_channels for g in groups]
        for group in groups:
            self.members.append(
                [
                    (params[d.owner], d.axis, torch.as_tensor(group.labels[d], dtype=torch.long))
                    for d in group.params
                    if d.owner in params
                ]
            )

    @property
    def channels(self) -> int:
        return sum(self.sizes)

    def norms(self) -> list[torch.Tensor]:
        """Per group, each channel's ‖θ_c‖₂ (differentiable)."""
        found = []
        for size, members in zip(self.sizes, self.members, strict=True):
            squares = torch.zeros(size)
            for param, axis, labels in members:
                others = [a for a in range(param.dim()) if a != axis]
                per_element = param.pow(2).sum(dim=others) if others else param.pow(2)
                squares = squares.index_add(0, labels, per_element)
            found.append(squares.clamp_min(1e-24).sqrt())
        return found

    def __call__(self) -> torch.Tensor:
        return sum(n.sum() for n in self.norms())

    def value(self) -> float:
        with torch.no_grad():
            return float(self())

    def channels_below(self, fraction: float) -> int:
        with torch.no_grad():
            return sum(int((n < fraction * n.mean()).sum()) for n in self.norms())
