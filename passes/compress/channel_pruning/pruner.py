"""ChannelPruning: remove the least important channels of every coupled group. Lossy."""

from __future__ import annotations

import itertools
from typing import Annotated, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import fx

from graphopt.analysis.calibration import first_inputs
from graphopt.analysis.cost import model_stats
from graphopt.analysis.ties import tied_parameter_names
from graphopt.channels import ChannelGroup, build_channel_graph, find_groups
from graphopt.errors import ConfigError, NodeIssue, UnsupportedGraphError
from graphopt.pass_base import CALIBRATION, Pass, PassContext, PassResult
from graphopt.passes.compress.channel_pruning import sensitivity
from graphopt.passes.compress.channel_pruning.budget import (
    GroupPlan,
    MacModel,
    removed_counts,
    search,
    select_global,
    select_uniform,
)
from graphopt.passes.compress.channel_pruning.importance import (
    DATA_AWARE,
    TAYLOR_ONE_SHOT,
    Importance,
    channel_importance,
    taylor_gradients,
)
from graphopt.passes.compress.channel_pruning.output_error import in_order_of, output_error_order
from graphopt.passes.compress.channel_pruning.repair import (
    groups_at,
    location_of,
    removed_elements,
    try_prune,
)
from graphopt.report import Decline
from graphopt.selectors import selects

Fraction = Annotated[float, Field(gt=0, lt=1)]


class GroupOverride(BaseModel):
    """Cap how much of the groups touching the selected modules may be removed."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    include: tuple[str, ...] = Field(min_length=1, description="Module-name globs.")
    max_channel_ratio: float = Field(ge=0, lt=1, description="0 keeps these groups whole.")


class ChannelPruning(Pass):
    """W[:, S], W[S] removed for channel set S of each coupled group ⇒ physically thinner layers.

    Groups come from the coupled-channel analysis (residual adds, concat/split offsets,
    grouped and depthwise convs, reshapes, attention heads); a group touching an op without a
    rule is frozen and listed in the report with the op that froze it. Selection is by
    producer: a group is pruned only when every layer whose *output* channels it holds is
    selected (include/exclude/module_types); excluding ``fc`` keeps fc's outputs, not its inputs.
    """

    name: ClassVar[str] = "channel_pruning"
    exact: ClassVar[bool] = False

    ratio: Fraction | None = Field(default=None, description="Fraction of MACs to remove.")
    channel_ratio: Fraction | None = Field(
        default=None, description="Fraction of prunable channels to remove (instead of ratio)."
    )
    importance: Importance = Field(default="l1", description="Channel importance criterion.")
    scope: Literal["global", "uniform", "sensitivity"] = Field(
        default="global",
        description="How much each group loses: by ranking channels across groups, the same "
        "fraction each, or by each group's measured loss on calibration data (least total loss "
        "for the target).",
    )
    round_to: int = Field(default=1, ge=1, description="Kept channels are a multiple of this.")
    min_channels: int = Field(default=1, ge=1, description="Fewest channels a group keeps.")
    max_channel_ratio: Fraction = Field(
        default=0.9, description="Most of one group's channels that may be removed."
    )
    overrides: tuple[GroupOverride, ...] = Field(default=(), description="Per-module caps.")
    calibration_batches: int = Field(
        default=8,
        ge=1,
        description="Batches of calibration data used by taylor and output_error importance and "
        "by the sensitivity scope.",
    )
    iterations: int = Field(
        default=1, ge=1, le=100, description="Prune in this many rounds, re-scoring each time."
    )

    @model_validator(mode="after")
    def _one_target(self) -> ChannelPruning:
        if (self.ratio is None) == (self.channel_ratio is None):
            raise ValueError("give exactly one of ratio (MACs) or channel_ratio (channels)")
        if self.iterations > 1 and self.ratio is None:
            raise ValueError("iterations > 1 needs ratio (a MAC target)")
        return self

    def data_needs(self) -> frozenset[str]:
        data_aware = self.importance in DATA_AWARE or self.scope == "sensitivity"
        return frozenset({CALIBRATION}) if data_aware else frozenset()

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        result = self._once(gm, ctx) if self.iterations == 1 else self._iterate(gm, ctx)
        if self.importance == "taylor" and self.iterations == 1:
            result.report.notes.append(TAYLOR_ONE_SHOT)
        return result

    def _iterate(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        """Prune in rounds (MACs falling linearly to the target), re-scoring each time on the
        already thinned model: Taylor scores see the gradients of the model as it now is."""
        before, touched, notes = model_stats(gm), set(), []
        left = 1.0
        for k in range(1, self.iterations + 1):
            goal = 1 - self.ratio * k / self.iterations
            step = self.model_copy(update={"ratio": 1 - goal / left, "iterations": 1})
            result = step._once(gm, ctx)
            gm, left = result.graph, goal
            touched |= set(result.report.touched)
            notes.append(f"round {k}: " + "; ".join(result.report.notes[:1]))
        after = model_stats(gm)
        report = self.report(bool(touched), sorted(touched), result.report.declined, notes)
        report.metrics.update(
            requested_macs_reduction=self.ratio,
            achieved_macs_reduction=1 - after.macs / before.macs if before.macs else 0.0,
            params_reduction=1 - after.params / before.params if before.params else 0.0,
        )
        return PassResult(gm, bool(touched), report)

    def _once(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        return self.cut(gm, ctx)[0]

    def cut(self, gm: fx.GraphModule, ctx: PassContext):
        """One round: the result and the removed elements per dim (which
        :func:`~graphopt.passes.compress.channel_pruning.repair.try_prune` can apply to another
        graph of the same structure, e.g. a rewound copy)."""
        groups = find_groups(build_channel_graph(gm))
        plans, declined = self.plans(gm, groups)
        scores, notes = self._scores(gm, plans, ctx)
        for plan in plans:
            plan.importance = scores[plan.group.index]
        before = model_stats(gm)
        curves = self._sensitivity(gm, plans, declined, ctx)
        broke: list[NodeIssue] = []
        for _ in range(MAX_REPAIRS):
            selection, reached = self._select(gm, plans, groups, curves)
            removed = removed_elements(plans, selection)
            pruned, broken = try_prune(gm, removed, ctx)
            if broken is None:
                break
            node, error = broken
            broke.append(NodeIssue(str(node), error, location_of(gm, node)))
            culprits = groups_at(node, gm, plans, selection)
            if not culprits:  # no thinned group reaches the node that broke
                raise UnsupportedGraphError(self.name, broke[-1:])
            for plan in culprits:
                plans.remove(plan)
                declined.append(
                    Decline(
                        target=_names(plan.group), reason=f"pruning it breaks node {node}: {error}"
                    )
                )
        else:
            raise UnsupportedGraphError(self.name, broke)
        after = model_stats(pruned)
        touched = sorted(
            {d.owner.rpartition(".")[0] for d, i in removed.items() if d.kind == "param" and len(i)}
        )
        frozen = sum(1 for d in declined if d.reason.startswith("frozen"))
        notes += self._summary(before, after, plans, selection, reached, frozen)
        report = self.report(bool(touched), touched, declined, notes)
        report.metrics.update(
            requested_macs_reduction=self.ratio or 0.0,
            achieved_macs_reduction=1 - after.macs / before.macs if before.macs else 0.0,
            params_reduction=1 - after.params / before.params if before.params else 0.0,
            channels_removed=float(sum(len(c) for c in selection.values())),
        )
        return PassResult(pruned, bool(touched), report), removed

    def plans(self, gm, groups: list[ChannelGroup]) -> tuple[list[GroupPlan], list[Decline]]:
        """The groups this configuration may thin (with caps), and the declines of the rest."""
        plans, declined = [], []
        tied = tied_parameter_names(gm)
        for group in groups:
            modules = sorted({d.owner.rpartition(".")[0] for d in group.params})
            if not group.params or group.num_channels <= 1:
                continue
            if group.frozen_by:
                if not _producers(gm, group):
                    continue  # e.g. the model input's channels: nothing here could thin them
                declined.append(
                    Decline(
                        target=_names(group), reason="frozen: " + "; ".join(group.frozen_by[:3])
                    )
                )
                continue
            if not all(self.selects(m, _module(gm, m)) for m in _producers(gm, group)):
                continue
            if shared := sorted({d.owner for d in group.params} & tied):
                reason = f"tied parameter {shared[0]}: pruning one of its users would untie it"
                declined.append(Decline(target=_names(group), reason=reason))
                continue
            cap = self._cap(modules, group.num_channels)
            if cap <= 0:
                continue
            counts = {
                d: np.bincount(group.labels[d], minlength=group.num_channels) for d in group.dims
            }
            plans.append(GroupPlan(group, np.ones(group.num_channels), cap, self.round_to, counts))
        return plans, declined

    def _cap(self, modules: list[str], channels: int) -> int:
        ratio = self.max_channel_ratio
        for override in self.overrides:
            if any(selects(m, None, override.include, (), ()) for m in modules):
                ratio = min(ratio, override.max_channel_ratio)
        return min(int(ratio * channels), channels - self.min_channels)

    def _scores(self, gm, plans: list[GroupPlan], ctx: PassContext):
        groups, gradients, notes = [p.group for p in plans], None, []
        if self.importance == "taylor":
            batches = self._calibration(ctx, "importance 'taylor'")
            gradients, loss = taylor_gradients(gm, batches, self.calibration_batches)
            notes.append(f"taylor importance from {loss}")
        kind = "l1" if self.importance == "output_error" else self.importance
        scores, more = channel_importance(gm, groups, kind, ctx.seed, gradients)
        if self.importance == "output_error":
            batches = first_inputs(
                self._calibration(ctx, "importance 'output_error'"), self.calibration_batches
            )
            limits = {p.group.index: p.max_remove for p in plans}
            ordered, fallbacks = output_error_order(gm, groups, batches, limits)
            for index, order in ordered.items():
                scores[index] = in_order_of(order, scores[index])
            more += fallbacks
        return scores, notes + more

    def _calibration(self, ctx: PassContext, what: str):
        if ctx.calibration_data is None:
            raise ConfigError(
                f"{what} needs calibration_data (optimize(..., calibration_data=...))"
            )
        return ctx.calibration_data

    def _sensitivity(self, gm, plans: list[GroupPlan], declined: list[Decline], ctx):
        """Per-group loss curves (scope sensitivity); a group whose thinned copy fails to run
        keeps the removals measured before the failure, and the failure is a decline."""
        if self.scope != "sensitivity":
            return None
        data = self._calibration(ctx, "scope 'sensitivity'")
        batches = list(itertools.islice(data, self.calibration_batches))
        curves, broken = sensitivity.measure(gm, plans, batches)
        by_index = {p.group.index: p.group for p in plans}
        for index, error in broken.items():
            reason = f"thinning it further breaks the model: {error}"
            declined.append(Decline(target=_names(by_index[index]), reason=reason))
        return curves

    def _select(self, gm, plans, groups, curves=None):
        """Channels to remove per group, and whether the target was reached."""
        if curves is not None:
            return self._select_by_sensitivity(gm, plans, groups, curves)
        if self.channel_ratio is not None:
            if self.scope == "uniform":
                return select_uniform(plans, self.channel_ratio), True
            total = sum(p.group.num_channels for p in plans)
            kept = lambda sel: total - sum(len(c) for c in sel.values())  # noqa: E731
            return select_global(plans, kept, (1 - self.channel_ratio) * total)
        sizes = {d: len(g.labels[d]) for g in groups for d in g.dims}
        model = MacModel(gm, sizes)
        cost = lambda sel: model.macs(removed_counts(plans, sel))  # noqa: E731
        target = (1 - self.ratio) * model.total
        if self.scope == "uniform":
            return search(lambda f: select_uniform(plans, f), 0.0, 1.0, cost, target)
        return select_global(plans, cost, target)

    def _select_by_sensitivity(self, gm, plans, groups, curves):
        live = [p for p in plans if p.group.index in curves]
        curves = {p.group.index: curves[p.group.index] for p in live}
        if self.channel_ratio is not None:
            total = sum(p.group.num_channels for p in live)
            kept = lambda sel: total - sum(len(c) for c in sel.values())  # noqa: E731
            return sensitivity.allocate(live, curves, kept, (1 - self.channel_ratio) * total)
        sizes = {d: len(g.labels[d]) for g in groups for d in g.dims}
        model = MacModel(gm, sizes)
        cost = lambda sel: model.macs(removed_counts(live, sel))  # noqa: E731
        return sensitivity.allocate(live, curves, cost, (1 - self.ratio) * model.total)

    def _summary(self, before, after, plans, selection, reached, frozen: int) -> list[str]:
        achieved = 1 - after.macs / before.macs if before.macs else 0.0
        removed_groups = sum(1 for c in selection.values() if len(c))
        notes = [
            f"{removed_groups} of {len(plans)} prunable groups thinned; "
            f"MACs −{achieved:.1%}, params −{1 - after.params / before.params:.1%}"
        ]
        thinned = [
            f"{_names(p.group)} {p.group.num_channels - len(selection[p.group.index])}"
            f"/{p.group.num_channels}"
            for p in plans
            if len(selection.get(p.group.index, ()))
        ]
        if thinned:
            notes.append("channels kept per thinned group: " + "; ".join(thinned))
        if self.ratio is not None:
            notes.insert(0, f"requested MACs −{self.ratio:.1%}, achieved −{achieved:.1%}")
            if frozen and reached:
                notes.append(
                    f"{frozen} group(s) frozen (see declined); the other groups took their share "
                    "of the budget"
                )
            if not reached:
                notes.append(
                    "target unreachable: every prunable group is at its limit "
                    "(min_channels, max_channel_ratio, overrides, frozen groups); see declined"
                )
        return notes


MAX_REPAIRS = 20


def _producers(gm: fx.GraphModule, group: ChannelGroup) -> set[str]:
    """Modules whose output channels are in the group (the layers it makes thinner)."""
    outputs = {d.owner for d in group.dims if d.kind == "value"}
    calls = [n for n in gm.graph.nodes if n.op == "call_module"]
    called = {n.target for n in calls}
    modules = {n.target for n in calls if n.name in outputs}
    modules = {m for m in modules if any(True for _ in gm.get_submodule(m).parameters())}
    # parameters read through get_attr (layer scales, class tokens) count by their owner
    owners = {d.owner.rpartition(".")[0] for d in group.params}
    return modules | (owners - called)


def _names(group: ChannelGroup) -> str:
    modules = sorted({d.owner.rpartition(".")[0] for d in group.params})
    return ", ".join(modules[:4]) + ("…" if len(modules) > 4 else "")


def _max_score(plans: list[GroupPlan]) -> float:
    return max((float(p.importance.max()) for p in plans), default=0.0) + 1e-9


def _module(gm: fx.GraphModule, name: str):
    try:
        return gm.get_submodule(name)
    except AttributeError:
        return None
