"""IterativePruning: (prune to the k-th of n MAC goals → recover) × n, optionally rewinding the weights.

Pruning in steps with recovery between them lets each step's importance see a model that has
adapted to the previous cuts (Han et al. 2015; the iterative schedules of the lottery-ticket
line, Frankle & Carbin 2019). The MACs fall linearly to the target of ``pruning``. After each
cut the ``recover`` stages run, each with its full schedule: that is learning-rate rewinding
(Renda et al. 2020). ``rewind: weights`` is weight rewinding: each step's cut is applied to the
model as it came into this pass (the same channels removed), so the kept channels restart
from their original weights and only the choice of channels carries the training over.
"""

from __future__ import annotations

import copy
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field
from torch import fx

from graphopt.analysis.cost import model_stats
from graphopt.errors import ConfigError
from graphopt.pass_base import Pass, PassContext, PassResult
from graphopt.passes.compress.channel_pruning import ChannelPruning
from graphopt.passes.compress.channel_pruning.repair import try_prune
from graphopt.passes.recover.batch_norm_recalibration import BatchNormRecalibration
from graphopt.passes.recover.knowledge_distillation import KnowledgeDistillation
from graphopt.passes.recover.layerwise_reconstruction import LayerwiseReconstruction


class Recovery(BaseModel):
    """The recovery run after each cut, in this order: BN recalibration, layer-wise
    reconstruction (then BN recalibration again, when both are given), distillation."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    batch_norm_recalibration: BatchNormRecalibration | None = None
    layerwise_reconstruction: LayerwiseReconstruction | None = None
    knowledge_distillation: KnowledgeDistillation | None = None

    def passes(self) -> list[Pass]:
        bn, rebuild = self.batch_norm_recalibration, self.layerwise_reconstruction
        chain = [bn, rebuild, bn if rebuild is not None else None, self.knowledge_distillation]
        return [p for p in chain if p is not None]


class IterativePruning(Pass):
    """Reach ``pruning``'s MAC target in ``steps`` cuts with ``recover`` after each.

    ``pruning`` must give ``ratio`` (MACs removed, the final target) and run one round
    (``iterations: 1``). The report has one note and metrics per step: MACs removed so far and,
    with a ``validation`` callback in the context, the score after the step's recovery.
    """

    name: ClassVar[str] = "iterative_pruning"
    exact: ClassVar[bool] = False

    steps: int = Field(default=4, ge=1, le=50, description="Cuts to reach the target.")
    pruning: ChannelPruning = Field(
        default_factory=lambda: ChannelPruning(ratio=0.5),
        description="The cut (its ratio is the final MAC target; one round per step).",
    )
    recover: Recovery = Field(
        default_factory=lambda: Recovery(batch_norm_recalibration=BatchNormRecalibration()),
        description="Recovery after each cut (and after the last).",
    )
    rewind: Literal["none", "weights"] = Field(
        default="none",
        description="none: keep training the pruned model (with each step's recovery "
        "restarting its learning-rate schedule); weights: each cut restarts the kept "
        "channels from the weights this pass was given.",
    )

    def data_needs(self) -> frozenset[str]:
        needs = self.pruning.data_needs()
        for p in self.recover.passes():
            needs |= p.data_needs()
        return needs

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        if self.pruning.ratio is None or self.pruning.iterations != 1:
            raise ConfigError(f"{self.name}: pruning needs a MAC ratio and iterations: 1")
        before = macs = model_stats(gm).macs
        # scoring may run the model: the weights to rewind to are kept apart
        rewound = copy.deepcopy(gm) if self.rewind == "weights" else None
        notes, metrics, touched = [], {}, set()
        for k in range(1, self.steps + 1):
            goal = 1 - self.pruning.ratio * k / self.steps  # MACs left after step k
            left = macs / before
            step = self.pruning.model_copy(update={"ratio": min(0.99, max(1e-6, 1 - goal / left))})
            result, removed = step.cut(gm, ctx)
            touched |= set(result.report.touched)
            gm = result.graph
            if rewound is not None:
                # a fresh copy that recovery (passes run on copies) and scoring never touch
                gm = rewound = self._rewound(rewound, removed, gm, ctx)
            gm = self.recovered(gm, ctx)
            macs = model_stats(gm).macs
            reduction = 1 - macs / before
            metrics[f"step{k}_macs_reduction"] = reduction
            note = f"step {k}: {reduction:.1%} of MACs removed"
            if ctx.validation is not None:
                score = float(ctx.validation(gm))
                metrics[f"step{k}_validation"] = score
                note += f", validation {score:.4g} after recovery"
            notes.append(note)
        report = self.report(bool(touched), sorted(touched), (), notes)
        report.metrics.update(metrics)
        report.metrics.update(
            requested_macs_reduction=self.pruning.ratio,
            achieved_macs_reduction=metrics[f"step{self.steps}_macs_reduction"],
        )
        return PassResult(gm, bool(touched), report)

    def _rewound(self, rewound, removed, pruned, ctx) -> fx.GraphModule:
        """The same cut applied to the rewind copy (structures must match exactly)."""
        cut, broken = try_prune(rewound, removed, ctx)
        shapes = lambda g: {n: tuple(p.shape) for n, p in g.state_dict().items()}  # noqa: E731
        if broken is not None or shapes(cut) != shapes(pruned):
            raise ConfigError(f"{self.name}: the cut does not apply to the rewound weights")
        return cut

    def recovered(self, gm: fx.GraphModule, ctx: PassContext) -> fx.GraphModule:
        for p in self.recover.passes():
            gm = p(gm, ctx).graph
        return gm
