"""RemoveIdentity: nodes that return their input unchanged are bypassed. Exact."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import fx, nn

from graphopt.analysis.shapes import shape_of
from graphopt.ir import module_of
from graphopt.pass_base import Pass, PassContext, PassResult
from graphopt.rewrite import MatchResult, Rule, anchor_name, apply_rules

DROPOUT_MODULES = (
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)
DROPOUT_FUNCTIONS = (
    F.dropout,
    F.dropout1d,
    F.dropout2d,
    F.dropout3d,
    F.alpha_dropout,
    F.feature_alpha_dropout,
    torch.dropout,
)
SHAPE_FUNCTIONS = (torch.reshape, torch.flatten)
SHAPE_METHODS = ("view", "reshape", "flatten", "contiguous")


def _bypass(node: fx.Node, gm: fx.GraphModule) -> list[str]:
    source = node.args[0]
    node.replace_all_uses_with(source)
    gm.graph.erase_node(node)
    return [anchor_name(node)]


class IdentityModule(Rule[fx.Node]):
    """nn.Identity(x) ⇒ x."""

    description: ClassVar[str] = "nn.Identity(x) ⇒ x"

    def match(self, node, gm):
        return node if isinstance(module_of(gm, node), nn.Identity) and node.args else None

    def rewrite(self, match, gm):
        return _bypass(match, gm)


class EvalDropout(Rule[fx.Node]):
    """Dropout(x) in eval mode ⇒ x (module or functional with training=False)."""

    description: ClassVar[str] = "Dropout(x), not training ⇒ x"

    def match(self, node, gm):
        if isinstance(module_of(gm, node), DROPOUT_MODULES):
            return node
        return node if node.op == "call_function" and node.target in DROPOUT_FUNCTIONS else None

    def check(self, match, gm):
        module = module_of(gm, match)
        training = module.training if module is not None else _functional_training(match)
        if training is not False:
            return MatchResult.fail("dropout in training mode is random, not the identity")
        return MatchResult.ok()

    def rewrite(self, match, gm):
        return _bypass(match, gm)


def _functional_training(node: fx.Node) -> object:
    """The ``training``/``train`` argument of a functional dropout (defaults per torch)."""
    if "training" in node.kwargs:
        return node.kwargs["training"]
    if "train" in node.kwargs:
        return node.kwargs["train"]
    if len(node.args) > 2:
        return node.args[2]
    return node.target is not torch.dropout  # F.dropout defaults to training=True


class NoOpReshape(Rule[fx.Node]):
    """view/reshape/flatten/contiguous(x) whose output shape equals x's ⇒ x."""

    description: ClassVar[str] = "reshape(x) to x's own shape ⇒ x"

    def match(self, node, gm):
        is_shape_op = (node.op == "call_method" and node.target in SHAPE_METHODS) or (
            node.op == "call_function" and node.target in SHAPE_FUNCTIONS
        )
        source = node.args[0] if node.args else None
        if not is_shape_op or not isinstance(source, fx.Node):
            return None
        out, src = shape_of(node), shape_of(source)
        return node if out is not None and out == src else None

    def rewrite(self, match, gm):
        return _bypass(match, gm)


class RemoveIdentity(Pass):
    """Identity(x) ⇒ x: nn.Identity, dropout in eval mode, reshapes to the same shape. Exact.

    Reshapes are judged on the shapes recorded for the example inputs: a graph meant for other
    input shapes should exclude them (``exclude: [...]``).
    """

    name: ClassVar[str] = "remove_identity"
    exact: ClassVar[bool] = True
    rules: ClassVar[tuple[Rule, ...]] = (IdentityModule(), EvalDropout(), NoOpReshape())

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        outcome = apply_rules(gm, self.rules, self.selects)
        if outcome.modified:
            gm.delete_all_unused_submodules()
        return PassResult(
            gm, outcome.modified, self.report(outcome.modified, outcome.touched, outcome.declined)
        )
