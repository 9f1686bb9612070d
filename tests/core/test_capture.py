"""Capture: module-level FX graphs with shapes on every node; clear errors when tracing fails."""

from __future__ import annotations

import pytest
import torch
from torch import fx, nn

import graphopt
from graphopt.analysis.shapes import shape_of, source_location
from graphopt.errors import CaptureError
from tests.models import ConvBnRelu, DataDependentBranch, NeedsLeaf


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "densenet121"])
def test_torchvision_models_capture_with_shapes_and_leaf_modules(torchvision_models, name):
    model = getattr(torchvision_models, name)().eval()
    x = torch.randn(1, 3, 64, 64)
    gm = graphopt.capture(model, x)

    assert isinstance(gm, fx.GraphModule)
    module_nodes = [n for n in gm.graph.nodes if n.op == "call_module"]
    leaf_types = {type(gm.get_submodule(n.target)) for n in module_nodes}
    assert nn.Conv2d in leaf_types and nn.BatchNorm2d in leaf_types
    assert not any(isinstance(gm.get_submodule(n.target), nn.Sequential) for n in module_nodes)
    for node in gm.graph.nodes:
        if node.op != "output":
            assert node.meta["tensor_meta"] is not None, node.format_node()
    with torch.no_grad():
        torch.testing.assert_close(gm(x), model(x), rtol=0, atol=0)


def test_capture_does_not_share_parameters_with_the_model():
    model = ConvBnRelu().eval()
    gm = graphopt.capture(model, torch.randn(1, 3, 8, 8))
    assert gm.get_submodule("conv").weight is not model.conv.weight
    with torch.no_grad():
        gm.get_submodule("conv").weight.zero_()
    assert model.conv.weight.abs().sum() > 0


def test_shapes_and_dtypes_are_recorded():
    gm = graphopt.capture(ConvBnRelu(3, 8), torch.randn(2, 3, 5, 7))
    conv = next(n for n in gm.graph.nodes if n.target == "conv")
    assert shape_of(conv) == (2, 8, 5, 7)
    assert conv.meta["tensor_meta"].dtype == torch.float32


def test_untraceable_model_names_module_line_and_remedy():
    with pytest.raises(CaptureError) as info:
        graphopt.capture(NeedsLeaf(), torch.randn(1, 3, 4, 4))
    error = info.value
    assert error.module == "gate"
    assert "if x.sum() > 0" in error.location
    assert "leaf_modules=['gate']" in error.hint
    assert "cannot trace NeedsLeaf" in str(error)


def test_marking_the_submodule_as_leaf_fixes_tracing():
    x = torch.randn(1, 3, 4, 4)
    for kwargs in ({"leaf_modules": ["gate"]}, {"leaf_types": [DataDependentBranch]}):
        gm = graphopt.capture(NeedsLeaf(), x, **kwargs)
        gate = [n for n in gm.graph.nodes if n.target == "gate"]
        assert len(gate) == 1 and gate[0].op == "call_module"


def test_untraceable_root_forward_suggests_fx_wrap():
    with pytest.raises(CaptureError) as info:
        graphopt.capture(DataDependentBranch(), torch.randn(2))
    assert info.value.module == ""
    assert "torch.fx.wrap" in info.value.hint


def test_wrong_input_shape_names_the_failing_node():
    with pytest.raises(CaptureError) as info:
        graphopt.capture(ConvBnRelu(3, 8), torch.randn(1, 5, 8, 8))
    assert info.value.module == "conv"
    assert "example input" in info.value.hint


def test_capture_refuses_non_modules():
    with pytest.raises(CaptureError, match="expects a torch.nn.Module"):
        graphopt.capture(lambda x: x, torch.randn(1))


def test_source_location_points_at_model_code():
    gm = graphopt.capture(NeedsLeaf(), torch.randn(1, 3, 4, 4), leaf_modules=["gate"])
    conv = next(n for n in gm.graph.nodes if n.target == "conv")
    location = source_location(conv)
    assert location is not None and "tests/models.py" in location
    assert "self.gate(self.conv(x))" in location
