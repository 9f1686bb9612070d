"""L0Gates: θ_c ⇐ θ_c · z_c, z_c ~ HardConcrete(log α_c), trained on L + λ·Σ_c cost_c·P(z_c ≠ 0); cut the closed.

One gate per coupled channel ``c`` (Louizos, Welling & Kingma 2018, "Learning Sparse Neural
Networks through L0 Regularization"): every parameter element of the channel (the output rows
of the convs writing it, their norms' scales and shifts, the input columns of the layers
reading it) is multiplied by ``z_c``, a hard-concrete sample in [0, 1] that is exactly 0 or 1
with non-zero probability. The expected number of open gates is differentiable in ``log α``,
so the penalty ``λ · Σ_c cost_c · P(z_c ≠ 0)`` (``cost_c`` the MACs the channel costs, as a
share of the mean channel's) is trained with the loss. After training the gates take their
test-time value ``clamp(sigmoid(log α)·(ζ−γ)+γ, 0, 1)``, which is folded into the weights
(channels with a closed gate become exactly zero) and the nested ``pruning`` configuration
(importance ``l2``) cuts to its target, closed gates first.
"""

from __future__ import annotations

import math
from typing import Annotated, ClassVar

import numpy as np
import torch
from pydantic import Field
from torch import fx, nn
from torch.nn.utils import parametrize

from graphopt.channels import ChannelGroup
from graphopt.pass_base import PassContext, PassResult
from graphopt.passes.compress.channel_pruning.budget import MacModel
from graphopt.passes.compress.train_then_cut import TrainThenCut, channel_members
from graphopt.passes.recover.knowledge_distillation import KnowledgeDistillation

# The hard-concrete stretch (γ, ζ) and temperature β of Louizos et al.
GAMMA, ZETA, BETA = -0.1, 1.1, 2.0 / 3.0


class L0Gates(TrainThenCut):
    """Train a hard-concrete gate per coupled channel under an L0 (MAC-weighted) penalty, then cut.

    ``training`` is the loop (a :class:`KnowledgeDistillation` configuration); ``strength`` is
    λ; ``init_open`` the probability a gate starts open (sets log α). ``pruning`` is the cut
    after training (omitted: ``ratio 0.5, importance l2``): its groups are the gated ones, and
    with the gates folded into the weights ``l2`` removes the closed gates first. The report
    gives the expected open fraction before and after training and how many gates closed.
    """

    name: ClassVar[str] = "l0_gates"
    exact: ClassVar[bool] = False

    strength: Annotated[float, Field(ge=0, le=100)] = Field(
        default=1.0,
        description="λ per gate: the weight of Σ_c cost_c·P(z_c ≠ 0) (cost 1: a mean channel).",
    )
    init_open: Annotated[float, Field(gt=0.5, lt=1)] = Field(
        default=0.9, description="Probability each gate starts open."
    )
    training: KnowledgeDistillation = Field(
        default_factory=lambda: KnowledgeDistillation(
            epochs=1, kd_weight=1.0, label_weight=1.0, progress=True
        ),
        description="The training loop and its loss (a knowledge_distillation configuration).",
    )

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        groups = self.prunable_groups(gm, ctx)
        gates = Gates(gm, groups, channel_costs(gm, groups), self.init_open)
        before = gates.expected_open()
        with gates.attached():  # on exit the test-time gates (gm ends in eval) are folded in
            trainer, steps = self.train(gm, ctx, lambda: self.strength * gates.penalty())
        after, closed = gates.expected_open(), gates.closed()
        cut = self.pruning(gm, ctx)
        note = (
            f"{steps} training steps in {trainer.seconds:.1f} s; expected open gates "
            f"{before:.1%} → {after:.1%} (MAC-weighted); {closed} of {gates.channels} gates "
            "closed (folded to zero weights)"
        )
        removed = int(cut.report.metrics.get("channels_removed", 0))
        more = ()
        if closed > removed:
            more = (
                f"{closed - removed} closed gates outlived the cut (their channels compute "
                "zeros): the strength is too high for this target",
            )
        metrics = dict(open_before=before, open_after=after, gates_closed=float(closed))
        return self.merged(cut, note, metrics, more)


def channel_costs(gm: fx.GraphModule, groups: list[ChannelGroup]) -> list[float]:
    """Per group, the MACs one of its channels costs, over the mean channel's cost."""
    sizes = {d: len(g.labels[d]) for g in groups for d in g.dims}
    model = MacModel(gm, sizes)
    costs = []
    for group in groups:
        per_channel = {d: len(group.labels[d]) / group.num_channels for d in group.dims}
        costs.append(model.total - model.macs(per_channel))
    weights = np.asarray(costs, dtype=float)
    channels = np.asarray([g.num_channels for g in groups], dtype=float)
    mean = (weights * channels).sum() / channels.sum()
    return list(weights / mean) if mean > 0 else [1.0] * len(groups)


class Gates(nn.Module):
    """The log α of every channel of every group and the parametrizations that apply them."""

    def __init__(self, gm, groups: list[ChannelGroup], costs: list[float], init_open: float):
        super().__init__()
        self._gm, self.costs = [gm], costs  # in a list: not a submodule (gm holds this)
        start = math.log(init_open / (1 - init_open))
        self.log_alpha = nn.ParameterList(
            nn.Parameter(torch.full((g.num_channels,), start)) for g in groups
        )
        self.members = channel_members(gm, groups)
        self.samples: list[torch.Tensor] | None = None

    @property
    def channels(self) -> int:
        return sum(len(a) for a in self.log_alpha)

    def resample(self, *_) -> None:
        """One hard-concrete draw per gate for this forward (shared by all its members)."""
        if not self._gm[0].training:
            self.samples = None
            return
        draws = []
        for log_alpha in self.log_alpha:
            u = torch.rand_like(log_alpha).clamp(1e-6, 1 - 1e-6)
            s = torch.sigmoid((u.log() - (-u).log1p() + log_alpha) / BETA)
            draws.append((s * (ZETA - GAMMA) + GAMMA).clamp(0, 1))
        self.samples = draws

    def value(self, index: int) -> torch.Tensor:
        if self.samples is not None:
            return self.samples[index]
        s = torch.sigmoid(self.log_alpha[index]) * (ZETA - GAMMA) + GAMMA
        return s.clamp(0, 1)

    def open_probability(self, index: int) -> torch.Tensor:
        return torch.sigmoid(self.log_alpha[index] - BETA * math.log(-GAMMA / ZETA))

    def penalty(self) -> torch.Tensor:
        """Σ_c cost_c · P(z_c ≠ 0): the expected open gates, each weighted by its MACs."""
        return sum(c * self.open_probability(i).sum() for i, c in enumerate(self.costs))

    def expected_open(self) -> float:
        """The MAC-weighted expected share of open gates (1.0: all surely open)."""
        with torch.no_grad():
            return float(self.penalty()) / self.channels

    def closed(self) -> int:
        with torch.no_grad():
            return sum(int((self.value(i) == 0).sum()) for i in range(len(self.log_alpha)))

    def attached(self):
        return _Attached(self)


class _Gate(nn.Module):
    """θ ↦ θ · z[labels] along ``axis`` (a parametrization; several may share one Gates)."""

    def __init__(self, gates: Gates, index: int, axis: int, labels: torch.Tensor, shape):
        super().__init__()
        self.gates, self.index, self.axis, self.labels = [gates], index, axis, labels
        self.view = [1] * len(shape)
        self.view[axis] = -1

    def forward(self, param: torch.Tensor) -> torch.Tensor:
        z = self.gates[0].value(self.index)[self.labels]
        return param * z.view(self.view)


class _Attached:
    """While entered: gates parametrize the members and their log α train with the weights;
    on exit the gate values are folded into the weights and the parametrizations removed."""

    def __init__(self, gates: Gates) -> None:
        self.gates, self.hook = gates, None

    def __enter__(self):
        gm, gates = self.gates._gm[0], self.gates
        for index, members in enumerate(gates.members):
            for owner, axis, labels in members:
                parent, _, attr = owner.rpartition(".")
                module = gm.get_submodule(parent)
                gate = _Gate(gates, index, axis, labels, getattr(module, attr).shape)
                parametrize.register_parametrization(module, attr, gate, unsafe=True)
        gm.register_module("_l0_gates", gates)  # so the trainer's optimiser sees log α
        self.hook = gm.register_forward_pre_hook(gates.resample)
        return gates

    def __exit__(self, *exc) -> None:
        gm, gates = self.gates._gm[0], self.gates
        self.hook.remove()
        gates.samples = None
        with torch.no_grad():
            for members in gates.members:
                for owner, _, _ in members:
                    parent, _, attr = owner.rpartition(".")
                    module = gm.get_submodule(parent)
                    if parametrize.is_parametrized(module, attr):
                        parametrize.remove_parametrizations(module, attr, leave_parametrized=True)
        delattr(gm, "_l0_gates")
