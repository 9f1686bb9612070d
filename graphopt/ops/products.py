"""Handlers for parameter-free products: matmul and einsum."""

from __future__ import annotations

import math
import operator

import torch
from torch import fx, nn

from graphopt.analysis.shapes import shape_of
from graphopt.ops import examples as ex
from graphopt.ops.base import MacTerm, OpHandler, handles
from graphopt.ops.context import CouplingContext
from graphopt.ops.dims import output_dims, value_dim

T = torch.Tensor


@handles(torch.matmul, operator.matmul, torch.bmm, torch.mm, T.matmul, T.bmm, T.mm)
class MatMul(OpHandler):
    """a[…, n, k] @ b[…, k, m]: a.k ↔ b.k; out.n ↔ a.n; out.m ↔ b.m; batch axes broadcast."""

    examples = (
        lambda: ex.tokens(lambda x: torch.matmul(x.transpose(1, 2), x)),
        lambda: ex.tokens(lambda x: x @ x.transpose(1, 2)),
        lambda: ex.tokens(ex.WithWeight(lambda x, w: torch.mm(x.flatten(0, 1), w), (8, 6))),
    )

    def couple(self, ctx: CouplingContext, node: fx.Node) -> None:
        a, b = node.args[:2]
        sa, sb, so = ctx.shape(a), ctx.shape(b), ctx.shape(node)
        if len(sa) < 2 or len(sb) < 2:
            ctx.freeze_value(node, "matmul with a vector operand")
            return
        ctx.link(ctx.value(a, -1), ctx.value(b, -2))
        ctx.link(ctx.value(a, -2), ctx.out(-2))
        ctx.link(ctx.value(b, -1), ctx.out(-1))
        for operand, shape in ((a, sa), (b, sb)):
            for axis in range(len(shape) - 2):
                if shape[axis] == so[axis + len(so) - len(shape)] and shape[axis] > 1:
                    ctx.link(ctx.value(operand, axis), ctx.out(axis + len(so) - len(shape)))

    def mac_terms(self, node: fx.Node, module: nn.Module | None) -> list[MacTerm]:
        a = node.args[0]
        sa, out = shape_of(a), shape_of(node)
        if sa is None or out is None or shape_of(node.args[1]) is None:
            return []
        return [(math.prod(out) * sa[-1], [*output_dims(node), value_dim(a, len(sa) - 1)])]


@handles(torch.einsum, torch.functional.einsum)
class Einsum(OpHandler):
    """Axes with the same letter are the same channel space, across operands and output."""

    examples = (lambda: ex.tokens(lambda x: torch.einsum("nlc,nmc->nlm", x, x).softmax(-1) @ x),)

    def couple(self, ctx: CouplingContext, node: fx.Node) -> None:
        equation = node.args[0].replace(" ", "")
        operands = node.args[1:]
        if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
            operands = operands[0]
        if "..." in equation or "->" not in equation:
            ctx.freeze_value(node, f"einsum {equation!r} (ellipsis or implicit output)")
            return
        inputs, output = equation.split("->")
        first: dict[str, object] = {}
        for letters, operand in [*zip(inputs.split(","), operands, strict=True), (output, node)]:
            for axis, letter in enumerate(letters):
                dim = ctx.value(operand, axis)
                if letter in first:
                    ctx.link(first[letter], dim)
                else:
                    first[letter] = dim
