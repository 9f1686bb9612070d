"""Example pass for docs/how-to/write_a_pass.md; the test suite runs this file.

FoldScalarMul: Conv(W, b)(x) · s ⇒ Conv(s·W, s·b)(x), an exact rewrite.
"""

from __future__ import annotations

import copy
import operator
from dataclasses import dataclass
from typing import ClassVar

import torch
from pydantic import Field
from torch import fx, nn

import graphopt
from graphopt import MatchResult, Pass, PassContext, PassResult, Rule, apply_rules


# 1. The pattern: what the rule looks for, as a small typed value.
@dataclass(frozen=True)
class ConvTimesScalar:
    conv: fx.Node
    mul: fx.Node
    scale: float


# 2. The rule: pattern → check → rewrite. The docstring's first line is the identity.
class FoldScalarIntoConv(Rule[ConvTimesScalar]):
    """Conv(W, b)(x) · s ⇒ Conv(s·W, s·b)(x)."""

    description: ClassVar[str] = "Conv · scalar ⇒ Conv with scaled weights"

    def __init__(self, min_abs_scale: float) -> None:
        self.min_abs_scale = min_abs_scale

    def match(self, node: fx.Node, gm: fx.GraphModule) -> ConvTimesScalar | None:
        if node.op != "call_function" or node.target not in (operator.mul, torch.mul):
            return None
        conv, scale = node.args
        if isinstance(scale, fx.Node):  # s · conv(x) is the same pattern
            conv, scale = scale, conv
        is_conv = (
            isinstance(conv, fx.Node)
            and conv.op == "call_module"
            and isinstance(gm.get_submodule(conv.target), nn.Conv2d)
        )
        return (
            ConvTimesScalar(conv, node, float(scale))
            if is_conv and isinstance(scale, (int, float))
            else None
        )

    def target(self, match: ConvTimesScalar) -> str:
        return str(match.conv.target)

    def check(self, match: ConvTimesScalar, gm: fx.GraphModule) -> MatchResult:
        if len(match.conv.users) != 1:
            return MatchResult.fail("the conv output is used elsewhere too")
        if abs(match.scale) < self.min_abs_scale:
            return MatchResult.fail(f"|scale| = {abs(match.scale):g} is below min_abs_scale")
        return MatchResult.ok()

    def rewrite(self, match: ConvTimesScalar, gm: fx.GraphModule) -> list[str]:
        scaled = copy.deepcopy(gm.get_submodule(match.conv.target))
        with torch.no_grad():
            scaled.weight.mul_(match.scale)
            if scaled.bias is not None:
                scaled.bias.mul_(match.scale)
        gm.add_submodule(str(match.conv.target), scaled)
        match.mul.replace_all_uses_with(match.conv)
        gm.graph.erase_node(match.mul)
        return [str(match.conv.target)]


# 3. The pass: its fields are its validated configuration; `run` applies the rule.
class FoldScalarMul(Pass):
    """Conv(W, b)(x) · s ⇒ Conv(s·W, s·b)(x): folds a constant scale into the conv. Exact."""

    name: ClassVar[str] = "fold_scalar_mul"
    exact: ClassVar[bool] = True

    min_abs_scale: float = Field(default=0.0, ge=0, description="Leave smaller scales alone.")

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        outcome = apply_rules(gm, (FoldScalarIntoConv(self.min_abs_scale),), self.selects)
        report = self.report(outcome.modified, outcome.touched, outcome.declined)
        return PassResult(gm, outcome.modified, report)


# 4. Use it. (A package would register it with an entry point instead, see the how-to.)
class Scaled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 1)

    def forward(self, x):
        return 0.5 * self.b(torch.relu(self.a(x) * 2.0)) * 1e-9


def main() -> None:
    model, x = Scaled().eval(), torch.randn(1, 3, 16, 16)
    result = graphopt.optimize(model, x, [FoldScalarMul(min_abs_scale=1e-6)])
    report = result.report.passes[0]
    print("rewritten:", report.touched)
    print("declined:", [(d.target, d.reason) for d in report.declined])
    assert report.touched == ["a", "b"]
    assert report.declined[0].target == "b" and "below min_abs_scale" in report.declined[0].reason
    with torch.no_grad():
        torch.testing.assert_close(result.model(x), model(x))


if __name__ == "__main__":
    main()
