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

from graphopt.channels import ChannelGroup
from graphopt.pass_base import PassContext, PassResult
from graphopt.passes.compress.train_then_cut import TrainThenCut, channel_members
from graphopt.passes.recover.knowledge_distillation import KnowledgeDistillation

# A channel whose norm is below this fraction of its group's mean counts as driven to zero.
ZERO = 1e-2


class GroupSparseTraining(TrainThenCut):
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

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        penalty = GroupNormPenalty(gm, self.prunable_groups(gm, ctx))
        before = penalty.value()
        trainer, steps = self.train(gm, ctx, lambda: self.strength * penalty())
        after, zero = penalty.value(), penalty.channels_below(ZERO)
        note = (
            f"{steps} training steps in {trainer.seconds:.1f} s; Σ‖θ_c‖₂ {before:.4g} → "
            f"{after:.4g}; {zero} of {penalty.channels} channels below {ZERO:.0%} of their "
            "group's mean norm"
        )
        metrics = dict(penalty_before=before, penalty_after=after, channels_near_zero=float(zero))
        return self.merged(self.pruning(gm, ctx), note, metrics)


class GroupNormPenalty:
    """Σ over groups and channels of the L2 norm of the channel's parameter elements."""

    def __init__(self, gm: fx.GraphModule, groups: list[ChannelGroup]) -> None:
        params = dict(gm.named_parameters())
        self.members: list[list[tuple[torch.nn.Parameter, int, torch.Tensor]]] = [
            [(params[owner], axis, labels) for owner, axis, labels in members]
            for members in channel_members(gm, groups)
        ]
        self.sizes = [g.num_channels for g in groups]

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
