"""Capture does not give up on shape-dependent ``forward`` code: it traces with concrete shapes,
says so in the report, and the passes work on the result. Value-dependent branches still fail."""

from __future__ import annotations

import pytest
import torch

import graphopt
from graphopt.errors import CaptureError
from graphopt.frontend.fx import ROUTE_CONCRETE, ROUTE_SYMBOLIC
from graphopt.passes import ChannelPruning, FoldBatchNorm
from tests.models import ConvBnRelu, DataDependentBranch, randomize_batch_norm
from tests.models_shape_dependent import ShapeBranchingResNet, ShapeBranchingVGG


def _model(cls):
    torch.manual_seed(0)
    return randomize_batch_norm(cls()).eval()


@pytest.mark.parametrize("cls", [ShapeBranchingResNet, ShapeBranchingVGG])
def test_shape_dependent_models_capture_exactly(cls):
    model, x = _model(cls), torch.randn(2, 3, 16, 16)
    with pytest.raises((torch.fx.proxy.TraceError, RuntimeError), match="control flow|len"):
        torch.fx.symbolic_trace(model)  # what the fallback exists for
    gm = graphopt.capture(model, x)
    assert gm.meta["capture_route"] == ROUTE_CONCRETE
    assert gm.meta["capture_fallback_reason"]
    assert not any(n.op == "call_function" and n.target is getattr for n in gm.graph.nodes)
    with torch.no_grad():
        torch.testing.assert_close(gm(x), model(x), rtol=0, atol=0)


def test_traceable_models_keep_the_symbolic_route():
    gm = graphopt.capture(ConvBnRelu().eval(), torch.randn(1, 3, 8, 8))
    assert gm.meta["capture_route"] == ROUTE_SYMBOLIC


@pytest.mark.parametrize("cls", [ShapeBranchingResNet, ShapeBranchingVGG])
def test_shape_dependent_models_fold_and_prune_and_report_the_route(cls):
    model, x = _model(cls), torch.randn(2, 3, 16, 16)
    result = graphopt.optimize(model, x, [FoldBatchNorm(), ChannelPruning(ratio=0.5)])
    assert result.report.capture_route == ROUTE_CONCRETE
    assert result.report.after.macs < 0.75 * result.report.before.macs
    assert result.model(x).shape == model(x).shape


def test_the_residual_shortcut_stays_aligned_after_pruning():
    model, x = _model(ShapeBranchingResNet), torch.randn(1, 3, 16, 16)
    result = graphopt.optimize(model, x, [ChannelPruning(ratio=0.5, include=["layers.*"])])
    assert result.report.after.params < result.report.before.params
    with torch.no_grad():
        assert torch.isfinite(result.model(x)).all()


def test_value_dependent_branches_still_fail_with_a_capture_error():
    with pytest.raises(CaptureError, match="control flow"):
        graphopt.capture(DataDependentBranch(), torch.randn(2, 3))


def test_values_for_the_trace_come_from_a_copy_of_the_model():
    model = _model(ShapeBranchingVGG).train()  # BatchNorm updates its statistics in train mode
    x = torch.randn(2, 3, 16, 16)
    stats = {k: v.clone() for k, v in model.state_dict().items()}
    gm = graphopt.capture(model, x)
    assert gm.meta["capture_route"] == ROUTE_CONCRETE
    for name, value in gm.state_dict().items():
        torch.testing.assert_close(value, stats[name], rtol=0, atol=0)


def test_unfed_keyword_defaults_are_traced_as_constants():
    model, x = _model(ShapeBranchingResNet), torch.randn(1, 3, 16, 16)
    gm = graphopt.capture(model, x)
    assert [n.name for n in gm.graph.nodes if n.op == "placeholder"][0] == "x"
    with torch.no_grad():
        torch.testing.assert_close(gm(x), model(x), rtol=0, atol=0)


def test_an_onnx_embedding_gather_captures(tmp_path):
    class Embed(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embedding = torch.nn.Embedding(50, 8)
            self.head = torch.nn.Linear(8, 3)

        def forward(self, ids):
            return self.head(self.embedding(ids).mean(1))

    model, ids = Embed().eval(), torch.randint(0, 50, (2, 5))
    path = tmp_path / "embed.onnx"
    torch.onnx.export(model, (ids,), path, dynamo=False, input_names=["ids"], opset_version=17)
    gm = graphopt.capture(path, ids)
    assert gm.meta["capture_route"] == ROUTE_CONCRETE
    with torch.no_grad():
        torch.testing.assert_close(gm(ids), model(ids), rtol=1e-5, atol=1e-6)


def test_the_graph_takes_exactly_the_example_inputs():
    gm = graphopt.capture(_model(ShapeBranchingResNet), torch.randn(1, 3, 16, 16))
    assert [n.name for n in gm.graph.nodes if n.op == "placeholder"] == ["x"]
    assert not any(n.target is torch._assert for n in gm.graph.nodes)
