"""The pass contract: validated configs, functional passes, verification after each pass."""

from __future__ import annotations

import copy
from typing import ClassVar

import pydantic
import pytest
import torch
from torch import nn

import graphopt
from graphopt.errors import ConfigError, PassError, VerificationError
from graphopt.pass_base import Pass, PassContext, PassResult
from graphopt.pass_manager import PassManager
from graphopt.passes import EliminateDeadCode, FoldBatchNorm, RemoveIdentity
from graphopt.passes.canonicalize.fold_batch_norm import FoldNormIntoProducer
from tests.models import ConvBnRelu, ResidualBlock, randomize_batch_norm


def small_model() -> nn.Module:
    return randomize_batch_norm(nn.Sequential(ConvBnRelu(3, 8), ResidualBlock(8))).eval()


class BrokenFold(FoldNormIntoProducer):
    """Folds the BatchNorm scale but forgets its shift: a deliberately wrong rewrite."""

    def rewrite(self, match, gm):
        norm = gm.get_submodule(match.norm.target)
        with torch.no_grad():
            norm.running_mean.zero_()
            if norm.affine:
                norm.bias.zero_()
        return super().rewrite(match, gm)


class BrokenFoldBatchNorm(FoldBatchNorm):
    """Conv → BN ⇒ Conv, wrongly (test double)."""

    name: ClassVar[str] = "broken_fold_batch_norm"
    rules: ClassVar[tuple] = (BrokenFold(),)


class ScaleOutput(Pass):
    """y ⇒ 2·y at the output (lossy test double: changes the function on purpose)."""

    name: ClassVar[str] = "scale_output"
    exact: ClassVar[bool] = False

    def run(self, gm, ctx):
        output = next(n for n in gm.graph.nodes if n.op == "output")
        with gm.graph.inserting_before(output):
            doubled = gm.graph.call_function(torch.mul, (output.args[0], 2.0))
        output.args = (doubled,)
        return PassResult(gm, True, self.report(True, [doubled.name]))


class ChangeOutputShape(Pass):
    """y ⇒ flatten(y) (test double: changes the model's interface)."""

    name: ClassVar[str] = "change_output_shape"
    exact: ClassVar[bool] = False

    def run(self, gm, ctx):
        output = next(n for n in gm.graph.nodes if n.op == "output")
        with gm.graph.inserting_before(output):
            flat = gm.graph.call_function(torch.flatten, (output.args[0],))
        output.args = (flat,)
        return PassResult(gm, True, self.report(True))


class Crashes(Pass):
    """x ⇒ ZeroDivisionError (test double)."""

    name: ClassVar[str] = "crashes"
    exact: ClassVar[bool] = True

    def run(self, gm, ctx):
        return 1 / 0


class ReturnsGraph(Pass):
    """Returns the bare graph instead of a PassResult (test double)."""

    name: ClassVar[str] = "returns_graph"
    exact: ClassVar[bool] = True

    def run(self, gm, ctx):
        return gm


class NeedsFold(Pass):
    """x ⇒ x, but only after fold_batch_norm (test double for `requires`)."""

    name: ClassVar[str] = "needs_fold"
    exact: ClassVar[bool] = True
    requires: ClassVar[tuple] = (FoldBatchNorm,)

    def run(self, gm, ctx):
        return PassResult(gm, False, self.report(False))


X = torch.randn(2, 3, 8, 8)


def test_bad_field_values_fail_at_construction():
    with pytest.raises(pydantic.ValidationError):
        FoldBatchNorm(include="layer1.*")  # a string where a list of globs is expected
    with pytest.raises(pydantic.ValidationError):
        FoldBatchNorm(ratio=0.5)  # unknown field: extra="forbid"
    with pytest.raises(pydantic.ValidationError):
        FoldBatchNorm(module_types=["NotAModule"])


def test_module_types_accept_classes_and_names_and_serialise_back():
    p = RemoveIdentity(module_types=["Dropout", nn.Identity, "torch.nn.Dropout2d"])
    assert p.module_types == (nn.Dropout, nn.Identity, nn.Dropout2d)
    assert p.config()["module_types"] == ["Dropout", "Identity", "Dropout2d"]
    assert RemoveIdentity.model_validate(p.config()) == p


def test_passes_are_frozen_values():
    p = FoldBatchNorm()
    with pytest.raises(pydantic.ValidationError):
        p.include = ("x",)


def test_a_pass_never_changes_its_input_graph():
    gm = graphopt.capture(small_model(), X)
    snapshot = copy.deepcopy(gm)
    result = FoldBatchNorm()(gm, PassContext(example_inputs=(X,)))
    assert result.modified
    assert str(gm.graph) == str(snapshot.graph)
    for (k, a), (_, b) in zip(gm.state_dict().items(), snapshot.state_dict().items(), strict=True):
        assert torch.equal(a, b), k


def test_exact_pass_that_changes_outputs_is_caught_with_the_diverging_node():
    with pytest.raises(VerificationError) as info:
        graphopt.optimize(small_model(), X, [BrokenFoldBatchNorm()])
    error = info.value
    assert error.pass_name == "broken_fold_batch_norm"
    assert error.node is not None and "call_module[target=0.conv]" in error.node
    assert "declared exact" in str(error)


def test_correct_exact_pass_passes_verification_with_recorded_error():
    result = graphopt.optimize(small_model(), X, [FoldBatchNorm()])
    verification = result.report.passes[0].verification
    assert verification.compared and verification.max_rel_error < 1e-6


def test_lossy_pass_is_run_but_not_compared():
    model = small_model()
    result = graphopt.optimize(model, X, [ScaleOutput()])
    verification = result.report.passes[0].verification
    assert verification.ran and not verification.compared
    with torch.no_grad():
        torch.testing.assert_close(result.model(X), 2 * model(X))


def test_changing_the_output_shape_fails_verification():
    with pytest.raises(VerificationError, match="output shapes changed"):
        graphopt.optimize(small_model(), X, [ChangeOutputShape()])


def test_exceptions_inside_a_pass_name_the_pass_and_history():
    with pytest.raises(PassError) as info:
        graphopt.optimize(small_model(), X, [FoldBatchNorm(), Crashes()])
    assert info.value.pass_name == "crashes"
    assert info.value.history == ("fold_batch_norm",)
    assert isinstance(info.value.__cause__, ZeroDivisionError)


def test_a_pass_must_return_a_pass_result():
    with pytest.raises(PassError, match="returned GraphModule"):
        graphopt.optimize(small_model(), X, [ReturnsGraph()])


def test_requires_is_checked_before_anything_runs():
    with pytest.raises(
        ConfigError, match=r"passes\[0\] \(needs_fold\) requires \['fold_batch_norm'\]"
    ):
        PassManager([NeedsFold(), FoldBatchNorm()])
    PassManager([FoldBatchNorm(), NeedsFold()])  # the right order is accepted
    gm = graphopt.capture(small_model(), X)
    with pytest.raises(ConfigError):
        NeedsFold()(gm, PassContext(example_inputs=(X,)))


def test_pass_manager_rejects_non_passes():
    with pytest.raises(ConfigError, match="expected Pass instances"):
        PassManager([FoldBatchNorm, "remove_identity"])


def test_observer_sees_every_pass_in_order():
    events = []

    class Recorder:
        def pass_started(self, index, total, pass_):
            events.append(("start", index, total, pass_.name))

        def pass_finished(self, index, total, report):
            events.append(("end", index, total, report.name))

    graphopt.optimize(small_model(), X, [FoldBatchNorm(), EliminateDeadCode()], observer=Recorder())
    assert events == [
        ("start", 0, 2, "fold_batch_norm"),
        ("end", 0, 2, "fold_batch_norm"),
        ("start", 1, 2, "eliminate_dead_code"),
        ("end", 1, 2, "eliminate_dead_code"),
    ]


def test_selectors_limit_what_a_pass_touches():
    model = small_model()
    only_block = graphopt.optimize(model, X, [FoldBatchNorm(include=["1.*"])]).report.passes[0]
    assert only_block.touched == ["1.conv1", "1.conv2"]
    skip_first = graphopt.optimize(model, X, [FoldBatchNorm(exclude=["0.*"])]).report.passes[0]
    assert skip_first.touched == ["1.conv1", "1.conv2"]
    by_type = graphopt.optimize(model, X, [FoldBatchNorm(module_types=[nn.Linear])]).report.passes[
        0
    ]
    assert by_type.touched == [] and not by_type.modified


def test_graph_lint_failure_is_a_verification_error():
    class DanglingUse(Pass):
        """Makes a node use a value defined after it (test double)."""

        name: ClassVar[str] = "dangling_use"
        exact: ClassVar[bool] = True

        def run(self, gm, ctx):
            nodes = list(gm.graph.nodes)
            first_op, last_op = nodes[1], nodes[-2]
            first_op.args = (last_op, *first_op.args[1:])
            return PassResult(gm, True, self.report(True))

    with pytest.raises(VerificationError, match="lint"):
        graphopt.optimize(small_model(), X, [DanglingUse()])


def test_running_the_graph_for_checks_leaves_training_state_alone():
    model = small_model().train()
    stats_before = model[0].bn.running_mean.clone()
    result = graphopt.optimize(model, X, [FoldBatchNorm(), EliminateDeadCode()])
    assert torch.equal(model[0].bn.running_mean, stats_before)
    assert torch.equal(result.model.get_submodule("0.bn").running_mean, stats_before)


def test_exact_passes_verify_on_graphs_with_random_ops():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Dropout(0.5), nn.Identity()).train()
    result = graphopt.optimize(model, X, [RemoveIdentity()])
    assert result.report.passes[0].touched == ["2"]
    assert result.report.passes[0].declined[0].target == "1"
