"""Handlers for parameter-free ops that keep or reduce axes: elementwise (unary and
broadcasting), pooling and resizing, reductions, and ops that only read metadata."""

from __future__ import annotations

import builtins
import operator

import torch
import torch.nn.functional as F
from torch import fx, nn

from graphopt.ops import examples as ex
from graphopt.ops.base import OpHandler, handles
from graphopt.ops.context import CouplingContext

T = torch.Tensor

try:
    from torchvision.ops import stochastic_depth as _stochastic_depth
except ImportError:  # pragma: no cover
    _stochastic_depth = None

# ---------------------------------------------------------------- same shape in and out

UNARY_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.SiLU,
    nn.GELU,
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Hardtanh,
    nn.LeakyReLU,
    nn.ELU,
    nn.Mish,
    nn.Softplus,
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.Softmax,
    nn.LogSoftmax,
)
UNARY_FUNCTIONS = (
    F.relu,
    F.relu6,
    F.gelu,
    F.silu,
    F.hardswish,
    F.hardsigmoid,
    F.hardtanh,
    F.leaky_relu,
    F.elu,
    F.mish,
    F.dropout,
    F.dropout1d,
    F.dropout2d,
    F.softmax,
    F.log_softmax,
    torch.relu,
    torch.sigmoid,
    torch.tanh,
    torch.softmax,
    torch.clamp,
    torch.exp,
    torch.sqrt,
    torch.neg,
    operator.neg,
    T.relu,
    T.sigmoid,
    T.tanh,
    T.softmax,
    T.contiguous,
    T.clone,
    T.float,
    T.to,
    T.clamp,
    T.exp,
    T.sqrt,
    T.neg,
    T.type_as,
    T.detach,
)


@handles(*UNARY_MODULES, *UNARY_FUNCTIONS, *([_stochastic_depth] if _stochastic_depth else []))
class Unary(OpHandler):
    """y = f(x) elementwise: every axis of x ↔ the same axis of y."""

    examples = (
        lambda: ex.image(nn.ReLU()),
        lambda: ex.image(lambda x: torch.sigmoid(x).clamp(0.1, 0.9).contiguous()),
        lambda: ex.tokens(nn.Softmax(-1)),
    )

    def couple(self, ctx: CouplingContext, node: fx.Node) -> None:
        ctx.same_shape(node.args[0])


@handles(
    operator.add,
    operator.sub,
    operator.mul,
    operator.truediv,
    torch.add,
    torch.sub,
    torch.mul,
    torch.div,
    T.add,
    T.sub,
    T.mul,
    T.div,
    operator.iadd,
    operator.imul,
)
class Broadcast(OpHandler):
    """Broadcasting: an operand's axis ↔ the output axis it lines up with (size > 1 only)."""

    examples = (
        lambda: ex.image(lambda x: x + x.relu()),
        lambda: ex.image(lambda x: x * x.mean((2, 3), keepdim=True).sigmoid()),  # gate
        lambda: ex.image(lambda x: torch.add(x, 1.0) / 2),
    )

    def couple(self, ctx: CouplingContext, node: fx.Node) -> None:
        out_shape = ctx.shape(node)
        for operand in node.args[:2]:
            shape = ctx.shape(operand)
            if shape is None:
                continue
            offset = len(out_shape) - len(shape)
            for axis, size in enumerate(shape):
                if (
                    size == out_shape[axis + offset]
                    and size > 1
                    or size == out_shape[axis + offset] == 1
                ):
                    ctx.link(ctx.value(operand, axis), ctx.out(axis + offset))


# ---------------------------------------------------------------- pooling, reductions

POOL_MODULES = (
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool2d,
    nn.Upsample,
)
POOL_FUNCTIONS = (
    F.max_pool1d,
    F.max_pool2d,
    F.max_pool3d,
    F.avg_pool1d,
    F.avg_pool2d,
    F.avg_pool3d,
    torch._C._nn.avg_pool2d,
    F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d,
    F.adaptive_max_pool2d,
    F.interpolate,
)


@handles(*POOL_MODULES, *POOL_FUNCTIONS)
class Pool(OpHandler):
    """N×C×spatial pooling/resizing: batch and channel axes pass through; spatial axes are new."""

    examples = (
        lambda: ex.image(nn.MaxPool2d(2)),
        lambda: ex.flat(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())),
        lambda: ex.image(lambda x: F.interpolate(x, scale_factor=2.0)),
    )

    def couple(self, ctx: CouplingContext, node: fx.Node) -> None:
        for axis in (0, 1):
            ctx.link(ctx.value(node.args[0], axis), ctx.out(axis))


@handles(torch.mean, torch.sum, torch.amax, T.mean, T.sum, T.amax)
class Reduce(OpHandler):
    """Reduction: axes not reduced pass through (a reduced channel axis simply disappears)."""

    examples = (
        lambda: ex.flat(lambda x: x.mean((2, 3))),
        lambda: ex.image(lambda x: x * torch.sum(x, 1, keepdim=True)),
    )

    def couple(self, ctx: CouplingContext, node: fx.Node) -> None:
        x = node.args[0]
        rank = len(ctx.shape(x))
        dims = ctx.arg(1, "dim")
        dims = range(rank) if dims is None else ([dims] if isinstance(dims, int) else dims)
        reduced = {d % rank for d in dims}
        keepdim = bool(ctx.arg(2, "keepdim", False))
        out_axis = 0
        for axis in range(rank):
            if axis in reduced:
                out_axis += keepdim
                continue
            ctx.link(ctx.value(x, axis), ctx.out(out_axis))
            out_axis += 1


@handles(T.size, T.dim, T.numel, torch._assert, builtins.getattr, T.__len__)
class Metadata(OpHandler):
    """Reads a tensor's metadata (size, dim, …): couples no channels."""

    examples = (
        lambda: ex.image(
            lambda x: x.relu().reshape(x.size(0), x.size(1), -1).reshape(x.shape[0], -1, 6, 6)
        ),
    )

    def couple(self, ctx: CouplingContext, node: fx.Node) -> None:
        """Nothing to link or freeze."""
