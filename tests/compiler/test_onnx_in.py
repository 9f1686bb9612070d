"""ONNX in: a file becomes the same FX IR (checked against ONNX Runtime) and round-trips."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import graphopt
from graphopt.errors import CaptureError
from graphopt.frontend.onnx import check_against_onnxruntime
from graphopt.passes.compress.channel_pruning.pruner import ChannelPruning

ort = pytest.importorskip("onnxruntime", reason="onnxruntime (dev extra) not installed")


def export(model: nn.Module, x: torch.Tensor, path, **kwargs) -> None:
    """The legacy exporter (what most ONNX files in the wild come from)."""
    torch.onnx.export(model.eval(), (x,), str(path), dynamo=False, input_names=["x"], **kwargs)


def run_onnx(path, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path))
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


def test_torchvision_onnx_prune_onnx_round_trip(torchvision_models, tmp_path):
    model = torchvision_models.resnet18(num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    export(model, x, tmp_path / "in.onnx")

    gm = graphopt.capture(tmp_path / "in.onnx")  # inputs from the file's declared shapes
    adds = [n for n in gm.graph.nodes if n.target is torch.add]
    assert len(adds) == 8  # onnx2torch's Add modules were traced into torch.add
    with torch.no_grad():
        np.testing.assert_allclose(gm(x).numpy(), run_onnx(tmp_path / "in.onnx", x), atol=1e-4)

    result = graphopt.optimize(gm, x, [ChannelPruning(ratio=0.5)])
    assert result.report.ratio("macs") < 0.55
    export(result.model, x, tmp_path / "out.onnx")
    with torch.no_grad():
        pruned = result.model(x).numpy()
    np.testing.assert_allclose(run_onnx(tmp_path / "out.onnx", x), pruned, atol=1e-4)


def test_identity_aliased_constants_are_inlined(tmp_path):
    # Conv+BN with fresh statistics folds to equal (zero) biases; the legacy exporter then
    # stores one and aliases the other with an Identity node, which onnx2torch rejects.
    model = nn.Sequential(
        nn.Conv2d(3, 4, 1, bias=False),
        nn.BatchNorm2d(4),
        nn.Conv2d(4, 4, 1, bias=False),
        nn.BatchNorm2d(4),
    )
    x = torch.randn(1, 3, 5, 5)
    export(model, x, tmp_path / "m.onnx")
    import onnx

    ops = {n.op_type for n in onnx.load(str(tmp_path / "m.onnx")).graph.node}
    assert "Identity" in ops
    gm = graphopt.capture(tmp_path / "m.onnx", x)
    with torch.no_grad():
        np.testing.assert_allclose(gm(x).numpy(), run_onnx(tmp_path / "m.onnx", x), atol=1e-5)


def test_disagreement_with_onnxruntime_is_a_capture_error(tmp_path):
    x = torch.randn(2, 4)
    export(nn.Linear(4, 3), x, tmp_path / "m.onnx")
    with pytest.raises(CaptureError, match="disagrees with ONNX Runtime"):
        check_against_onnxruntime(tmp_path / "m.onnx", nn.Linear(4, 3), (x,))


def test_dynamic_shapes_need_example_inputs(tmp_path):
    x = torch.randn(2, 4)
    export(nn.Linear(4, 3), x, tmp_path / "m.onnx", dynamic_axes={"x": {0: "batch"}})
    with pytest.raises(CaptureError, match="dynamic shape"):
        graphopt.capture(tmp_path / "m.onnx")
    assert graphopt.capture(tmp_path / "m.onnx", x)(x).shape == (2, 3)


def test_bad_paths_are_capture_errors(tmp_path):
    with pytest.raises(CaptureError, match="expected an existing .onnx file"):
        graphopt.capture(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a protobuf")
    with pytest.raises(CaptureError, match="not a readable ONNX file"):
        graphopt.capture(tmp_path / "junk.onnx")
