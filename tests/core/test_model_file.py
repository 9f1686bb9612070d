"""Model files stay data: save_model/load_model round-trip, and no file runs code when loaded."""

from __future__ import annotations

import os
import pickle

import pytest
import torch
from torch import fx, nn

import graphopt
from graphopt.errors import ModelFileError
from graphopt.frontend.model_file import load_model, save_model
from graphopt.passes import FoldBatchNorm, LowRankFactorization
from tests.models import ConvBnRelu


class _Payload:
    """A pickle that runs a shell command when unpickled: what an attacker would send."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.register_buffer("scale", torch.tensor(0.5))
        self.head = nn.Sequential(nn.Linear(8, 4), nn.GELU(approximate="tanh"))

    def forward(self, x):
        y = self.conv(x).flatten(2).transpose(1, 2)
        y, _ = self.attn(y, y, y)
        y = torch.nn.functional.layer_norm(y, (8,)) * self.scale
        return self.head(y[:, 1:3, ...].mean(dim=1))


def _round_trip(gm, path):
    save_model(gm, path)
    return load_model(path)


def test_round_trip_keeps_graph_layers_and_outputs(tmp_path):
    x = torch.randn(2, 3, 6, 6)
    gm = graphopt.capture(_Mixed().eval(), x)
    loaded = _round_trip(gm, tmp_path / "m.pt")
    assert [(n.op, n.name, n.target) for n in loaded.graph.nodes] == [
        (n.op, n.name, n.target) for n in gm.graph.nodes
    ]
    assert isinstance(loaded.get_submodule("attn"), nn.MultiheadAttention)
    assert loaded.get_submodule("head.1").approximate == "tanh"
    assert not loaded.training
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), gm(x), rtol=0, atol=0)


def test_round_trip_of_a_rewritten_model(tmp_path):
    x = torch.randn(1, 3, 8, 8)
    result = graphopt.optimize(
        ConvBnRelu().eval(), x, [FoldBatchNorm(), LowRankFactorization(rank_ratio=0.5)]
    )
    loaded = _round_trip(result.model, tmp_path / "m.pt")
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), result.model(x), rtol=0, atol=0)
    again = graphopt.optimize(loaded, x, [])  # a loaded file is taken as already captured
    assert again.report.after.params == result.report.after.params


def test_torchvision_wrapped_functions_load_without_trust(tmp_path, torchvision_models):
    model = torchvision_models.efficientnet_b0().eval()
    x = torch.randn(1, 3, 32, 32)
    gm = graphopt.capture(model, x)
    assert any("stochastic_depth" in str(n.target) for n in gm.graph.nodes)
    loaded = _round_trip(gm, tmp_path / "m.pt")
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), gm(x), rtol=0, atol=0)


def test_a_malicious_pickle_is_refused_and_does_not_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "model.pt"
    with open(path, "wb") as f:
        pickle.dump(_Payload(marker), f)
    with pytest.raises(ModelFileError, match="pickled model.*trust=True"):
        load_model(path)
    assert not marker.exists()


def test_a_legacy_pickled_graph_module_needs_trust(tmp_path):
    x = torch.randn(1, 3, 8, 8)
    gm = graphopt.capture(ConvBnRelu().eval(), x)
    path = tmp_path / "legacy.pt"
    torch.save(gm, path)
    with pytest.raises(ModelFileError, match="--trust-model-file"):
        load_model(path)
    loaded = load_model(path, trust=True)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), gm(x))


def _tampered(tmp_path, edit):
    gm = graphopt.capture(ConvBnRelu().eval(), torch.randn(1, 3, 8, 8))
    path = tmp_path / "m.pt"
    save_model(gm, path)
    document = torch.load(path, weights_only=True)
    edit(document)
    torch.save(document, path)
    return path


def _set_first_function(document, name):
    node = next(n for n in document["graph"] if n["op"] == "call_module")
    node.update(op="call_function", target=name)


@pytest.mark.parametrize(
    "name", ["builtins.eval", "os.system", "torch.load", "torch.hub.load", "subprocess.run"]
)
def test_a_graph_naming_a_dangerous_function_is_refused(tmp_path, name):
    path = _tampered(tmp_path, lambda d: _set_first_function(d, name))
    with pytest.raises(ModelFileError, match="not an operation a model file may name"):
        load_model(path)


def test_private_attribute_reads_and_methods_are_refused(tmp_path):
    def edit(document):
        node = next(n for n in document["graph"] if n["op"] == "call_module")
        node.update(op="call_function", target="getattr", args={"tuple": [None, "__class__"]})

    with pytest.raises(ModelFileError, match="public attribute"):
        load_model(_tampered(tmp_path, edit))

    def method(document):
        node = next(n for n in document["graph"] if n["op"] == "call_module")
        node.update(op="call_method", target="__reduce_ex__")

    with pytest.raises(ModelFileError, match="not a tensor method"):
        load_model(_tampered(tmp_path, method))


def test_a_layer_class_outside_torch_nn_needs_trust(tmp_path):
    def edit(document):
        document["root"]["children"]["conv"]["class"] = "tests.models.ConvBnRelu"

    path = _tampered(tmp_path, edit)
    with pytest.raises(ModelFileError, match="outside torch.nn.*trust=True"):
        load_model(path)


def test_not_a_model_file(tmp_path):
    path = tmp_path / "state.pt"
    torch.save(ConvBnRelu().state_dict(), path)
    with pytest.raises(ModelFileError, match="not a graphopt model file"):
        load_model(path)
    (tmp_path / "junk.pt").write_bytes(b"\x00garbage")
    with pytest.raises(ModelFileError, match="not readable as data"):
        load_model(tmp_path / "junk.pt")
    with pytest.raises(ModelFileError, match="cannot read"):
        load_model(tmp_path / "junk.pt", trust=True)


def test_hooks_cannot_be_saved(tmp_path):
    gm = graphopt.capture(ConvBnRelu().eval(), torch.randn(1, 3, 8, 8))
    gm.get_submodule("conv").register_forward_hook(lambda *a: None)
    with pytest.raises(ModelFileError, match="hooks"):
        save_model(gm, tmp_path / "m.pt")


def test_user_functions_save_but_load_only_with_trust(tmp_path):
    gm = fx.symbolic_trace(_UsesHelper())
    path = tmp_path / "m.pt"
    save_model(gm, path)
    with pytest.raises(ModelFileError, match="without trust"):
        load_model(path)
    x = torch.randn(3)
    torch.testing.assert_close(load_model(path, trust=True)(x), gm(x))


@fx.wrap
def _helper(x):
    return x * 2


class _UsesHelper(nn.Module):
    def forward(self, x):
        return _helper(x) + 1


def test_a_tied_weight_is_stored_once_and_comes_back_tied(tmp_path):
    from tests.passes.test_parameter_ties import SharedConv

    x = torch.randn(1, 3, 8, 8)
    gm = graphopt.capture(SharedConv().eval(), x)
    loaded = _round_trip(gm, tmp_path / "m.pt")
    assert loaded.get_submodule("a").weight is loaded.get_submodule("b").weight
    assert len(torch.load(tmp_path / "m.pt", weights_only=True)["tensors"]) == len(
        list(gm.parameters())
    ) + len(list(gm.buffers()))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), gm(x), rtol=0, atol=0)


def test_dtype_limits_load_without_trust(tmp_path):
    # attention masking as transformers' tracer records it: the dtype's most negative value
    graph = fx.Graph()
    x = graph.placeholder("x")
    dtype = graph.call_function(getattr, (x, "dtype"))
    lowest = graph.call_function(getattr, (graph.call_function(torch.finfo, (dtype,)), "min"))
    negative = graph.call_function(torch.lt, (x, 0))
    graph.output(graph.call_method("masked_fill", (x, negative, lowest)))
    gm = fx.GraphModule(nn.Module(), graph)
    save_model(gm, tmp_path / "m.pt")
    loaded = load_model(tmp_path / "m.pt")
    x = torch.randn(3, 4)
    torch.testing.assert_close(loaded(x), gm(x))
    assert float(loaded(x).min()) == torch.finfo(torch.float32).min
