"""Every edge answers with a typed graphopt error and one clear message, fast: too many inputs,
hostile recipe sizes, out-of-range seeds and shapes, non-UTF-8 files, ONNX files ORT rejects."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

import graphopt
from graphopt.errors import CaptureError, ConfigError, RecipeError
from graphopt.recipe import MAX_PASSES, load_recipe, parse_recipe
from tests.models import ConvBnRelu

HEAD = "model: {torchvision: resnet18}\ninputs: [{shape: [1, 3, 8, 8]}]\n"


def test_too_many_example_inputs_is_a_capture_error():
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(CaptureError, match="takes 1 input"):
        graphopt.optimize(ConvBnRelu().eval(), (x, x))
    with pytest.raises(CaptureError, match="must be tensors"):
        graphopt.capture(ConvBnRelu().eval(), [x.numpy()])


def test_a_wrong_rank_input_names_the_node_in_one_line():
    with pytest.raises(CaptureError) as info:
        graphopt.capture(ConvBnRelu().eval(), torch.randn(3, 8))
    first = str(info.value).splitlines()[0]
    assert "at node conv" in first and "Expected 3D" in first and "meta=" not in first


@pytest.mark.parametrize("seed", [-1, 2**63, 2**64 + 5])
def test_seeds_out_of_range_are_refused(seed):
    with pytest.raises(RecipeError, match="seed"):
        parse_recipe(HEAD + f"seed: {seed}\n")
    with pytest.raises(ConfigError, match="seed"):
        graphopt.optimize(ConvBnRelu().eval(), torch.randn(1, 3, 8, 8), seed=seed)


@pytest.mark.parametrize(
    ("shape", "message"),
    [("[100000, 100000, 100000]", "elements"), ("[1, 1, 1, 1, 1, 1, 1, 1, 1]", "at most 8")],
)
def test_huge_or_deep_input_shapes_are_refused(shape, message):
    with pytest.raises(RecipeError, match=message):
        parse_recipe(f"model: {{torchvision: resnet18}}\ninputs: [{{shape: {shape}}}]\n")


def test_a_5mb_recipe_fails_in_well_under_a_second(tmp_path):
    text = HEAD + "".join(f"key{i}: {i}\n" for i in range(400_000))
    assert len(text) > 5_000_000
    path = tmp_path / "hostile.yaml"
    path.write_text(text)
    start = time.perf_counter()
    with pytest.raises(RecipeError, match="limited to"):
        load_recipe(path)
    with pytest.raises(RecipeError, match="limited to"):
        parse_recipe(text)
    assert time.perf_counter() - start < 1.0


def test_many_problems_are_located_in_linear_time_and_summarised():
    text = HEAD + "".join(f"key{i}: {i}\n" for i in range(20_000))
    start = time.perf_counter()
    with pytest.raises(RecipeError) as info:
        parse_recipe(text)
    assert time.perf_counter() - start < 5.0  # quadratic location took ~9 s here
    assert "key0: Extra inputs are not permitted (line 3)" in str(info.value)
    assert "and 19,950 more problems" in str(info.value)


def test_too_many_passes_is_one_problem():
    text = HEAD + "passes:\n" + "  - {pass: fold_batch_norm}\n" * (MAX_PASSES + 1)
    with pytest.raises(RecipeError, match=f"at most {MAX_PASSES}"):
        parse_recipe(text)


def test_duplicate_keys_are_an_error_with_their_line():
    with pytest.raises(RecipeError, match=r"seed: duplicate key \(line 4\)"):
        parse_recipe(HEAD + "seed: 1\nseed: 2\n")
    with pytest.raises(RecipeError, match=r"passes\[0\]\.ratio: duplicate key"):
        parse_recipe(HEAD + "passes:\n  - pass: channel_pruning\n    ratio: 0.5\n    ratio: 0.2\n")


def test_a_non_utf8_recipe_is_a_recipe_error(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(HEAD.encode() + b"# caf\xe9\n")
    with pytest.raises(RecipeError, match="not UTF-8"):
        load_recipe(path)


class _BoolGate(nn.Module):
    def forward(self, x, mask):
        return torch.where(mask, x, torch.zeros_like(x))


def test_an_onnx_file_with_a_bool_input_captures(tmp_path):
    path = tmp_path / "gate.onnx"
    x, mask = torch.randn(2, 4), torch.rand(2, 4) > 0.5
    torch.onnx.export(_BoolGate(), (x, mask), path, dynamo=False, opset_version=17)
    gm = graphopt.capture(path)  # example inputs from the file's declared types
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    assert placeholders[1].meta["tensor_meta"].dtype == torch.bool


def test_example_inputs_onnx_runtime_rejects_are_a_capture_error(tmp_path):
    path = tmp_path / "gate.onnx"
    x, mask = torch.randn(2, 4), torch.rand(2, 4) > 0.5
    torch.onnx.export(_BoolGate(), (x, mask), path, dynamo=False, opset_version=17)
    with pytest.raises(CaptureError, match="ONNX Runtime rejects the example inputs"):
        graphopt.capture(path, (x.double(), mask))  # torch runs it; ORT wants float32


def test_yaml_aliases_are_refused_before_they_expand():
    bomb = HEAD + 'a: &a ["x", "x", "x", "x", "x", "x", "x", "x"]\n'
    for name, below in zip("bcdefghij", "abcdefghi", strict=True):
        bomb += f"{name}: &{name} [*{below}, *{below}, *{below}, *{below}, *{below}, *{below}]\n"
    start = time.perf_counter()
    with pytest.raises(RecipeError, match="YAML aliases are not allowed"):
        parse_recipe(bomb)
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize("output_dir", ["/", "..", "../.."])
def test_output_dirs_that_hold_the_recipe_or_the_root_are_refused(tmp_path, output_dir):
    from graphopt.runner import check_output_dir

    base = tmp_path / "a" / "b"
    base.mkdir(parents=True)
    with pytest.raises(ConfigError, match="filesystem root|contains the recipe"):
        check_output_dir(base / output_dir, base)
    check_output_dir(base / "out", base)
    check_output_dir(base / "../sibling/out", base)


def _noisy_module(tmp_path, monkeypatch, name: str):
    """A module that leaves a marker file when it is imported (its code runs)."""
    marker = tmp_path / f"{name}-imported"
    (tmp_path / f"{name}.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\nimport torch\nclass Block(torch.nn.Module):\n"
        "    pass\ndef build():\n    return torch.nn.Conv2d(3, 3, 1)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return marker


def test_type_names_outside_known_modules_are_refused_and_never_imported(tmp_path, monkeypatch):
    marker = _noisy_module(tmp_path, monkeypatch, "noisy_unknown")
    with pytest.raises(RecipeError, match="'noisy_unknown.Block' is not a known module type"):
        parse_recipe(HEAD + "capture: {leaf_types: [noisy_unknown.Block]}\n")
    with pytest.raises(RecipeError, match="not a known module type"):
        parse_recipe(HEAD + "passes: [{pass: fold_batch_norm, module_types: [noisy_unknown.X]}]\n")
    assert not marker.exists()  # refused by name: none of the module's code ran


def test_a_factory_modules_types_are_imported_only_once_the_rest_is_valid(tmp_path, monkeypatch):
    marker = _noisy_module(tmp_path, monkeypatch, "noisy_factory")
    head = "model: {python: 'noisy_factory:build'}\ninputs: [{shape: [1, 3, 8, 8]}]\n"
    broken = head + "capture: {leaf_types: [noisy_factory.Block]}\nseed: -5\n"
    with pytest.raises(RecipeError, match="seed"):
        parse_recipe(broken)
    assert not marker.exists()  # the invalid recipe ran none of the module's code
    recipe = parse_recipe(head + "capture: {leaf_types: [noisy_factory.Block]}\n")
    assert recipe.capture.leaf_types[0].__name__ == "Block" and marker.exists()


def test_modules_registered_under_the_entry_point_resolve(tmp_path, monkeypatch):
    from importlib.metadata import EntryPoint

    from graphopt import selectors

    marker = _noisy_module(tmp_path, monkeypatch, "noisy_plugin")
    registered = [EntryPoint("layers", "noisy_plugin", selectors.MODULE_TYPES_GROUP)]
    monkeypatch.setattr(selectors, "entry_points", lambda group: registered)
    recipe = parse_recipe(HEAD + "capture: {leaf_types: [noisy_plugin.Block]}\n")
    assert recipe.capture.leaf_types[0].__name__ == "Block" and marker.exists()
