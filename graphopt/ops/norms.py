"""Handlers for normalisations and per-channel affine layers (norms count one MAC per output
element: the scale-and-shift)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import fx, nn

from graphopt.ops import examples as ex
from graphopt.ops.base import MacTerm, OpHandler, handles
from graphopt.ops.context import CouplingContext, SurgeryContext
from graphopt.ops.dims import numel, output_dims


class PerElement(OpHandler):
    """A norm's cost: one MAC per output element (the affine scale-and-shift)."""

    def mac_terms(self, node: fx.Node, module: nn.Module | None) -> list[MacTerm]:
        count = numel(node)
        return [(count, output_dims(node))] if count else []


@handles(
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
)
class BatchNorm(PerElement):
    """x[:, c] ↔ γ[c] ↔ β[c] ↔ μ[c] ↔ σ²[c]; every axis passes through."""

    examples = (
        lambda: ex.image(nn.BatchNorm2d(8)),
        lambda: ex.image(nn.InstanceNorm2d(8, affine=True, track_running_stats=True)),
    )

    def couple(self, ctx: CouplingContext, node: fx.Node) -> None:
        ctx.same_shape(node.args[0])
        for name in ("weight", "bias", "running_mean", "running_var"):
            ctx.link(ctx.out(1), ctx.param(name, 0))

    def update(self, ctx: SurgeryContext, node: fx.Node) -> None:
        ctx.module(node).num_features = ctx.new_shape(node)[1]


@handles(nn.GroupNorm)
class GroupNorm(PerElement):
    """Like BatchNorm, and every group must lose the same number of channels."""

    examples = (lambda: ex.image(nn.GroupNorm(2, 8)),)

    def couple(self, ctx: CouplingContext, node: fx.Node) -> None:
        ctx.same_shape(node.args[0])
        for name in ("weight", "bias"):
            ctx.link(ctx.out(1), ctx.param(name, 0))
        ctx.require_blocks(ctx.out(1), ctx.module.num_groups, f"GroupNorm {node.target}")

    def update(self, ctx: SurgeryContext, node: fx.Node) -> None:
        ctx.module(node).num_channels = ctx.new_shape(node)[1]


@handles(nn.LayerNorm)
class LayerNorm(PerElement):
    """The normalised trailing axes ↔ γ, β; every axis passes through."""

    examples = (lambda: ex.tokens(nn.LayerNorm(8)),)

    def couple(self, ctx: CouplingContext, node: fx.Node) -> None:
        ctx.same_shape(node.args[0])
        k = len(ctx.module.normalized_shape)
        for axis in range(-k, 0):
            for name in ("weight", "bias"):
                if getattr(ctx.module, name, None) is not None:
                    ctx.link(ctx.out(axis), ctx.param(name, axis))

    def update(self, ctx: SurgeryContext, node: fx.Node) -> None:
        m = ctx.module(node)
        m.normalized_shape = ctx.new_shape(node)[-len(m.normalized_shape) :]


class _AffineLayerNorm(nn.Module):
    """F.layer_norm with a literal normalised shape and parameters read through get_attr."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.width = width
        self.weight = nn.Parameter(torch.randn(width))
        self.bias = nn.Parameter(torch.randn(width))

    def forward(self, x):
        return F.layer_norm(x, [self.width], self.weight, self.bias)


@handles(F.layer_norm)
class FunctionalLayerNorm(PerElement):
    """F.layer_norm(x, shape, γ, β): the normalised trailing axes ↔ γ, β."""

    examples = (lambda: ex.tokens(_AffineLayerNorm(8)),)

    def couple(self, ctx: CouplingContext, node: fx.Node) -> None:
        ctx.same_shape(node.args[0])
        k = len(ctx.arg(1, "normalized_shape"))
        for index, name in ((2, "weight"), (3, "bias")):
            param = ctx.arg(index, name)
            for axis in range(-k, 0):
                if isinstance(param, fx.Node):
                    ctx.link(ctx.out(axis), ctx.value(param, axis))

    def update(self, ctx: SurgeryContext, node: fx.Node) -> None:
        k = len(node.args[1])
        node.args = (node.args[0], list(ctx.new_shape(node)[-k:]), *node.args[2:])


@handles(F.batch_norm, F.group_norm, F.instance_norm)
class FunctionalNorm(PerElement):
    """Other functional norms: counted, never pruned (every dim they touch is frozen)."""

    examples = (lambda: ex.image(lambda x: F.group_norm(x, 2)),)


@handles(nn.LocalResponseNorm)
class LocalResponseNorm(PerElement):
    """Normalises across neighbouring channels: counted, never pruned."""

    examples = (lambda: ex.image(nn.LocalResponseNorm(3)),)


@handles(nn.PReLU)
class PReLU(OpHandler):
    """One slope per channel (or one for all): x[:, c] ↔ a[c]."""

    examples = (lambda: ex.image(nn.PReLU(8)), lambda: ex.image(nn.PReLU()))

    def couple(self, ctx: CouplingContext, node: fx.Node) -> None:
        ctx.same_shape(node.args[0])
        if ctx.module.num_parameters > 1:
            ctx.link(ctx.out(1), ctx.param("weight", 0))

    def update(self, ctx: SurgeryContext, node: fx.Node) -> None:
        m = ctx.module(node)
        m.num_parameters = m.weight.numel()
