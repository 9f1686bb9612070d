"""Fuzzing what users are sent: recipes, ONNX files and artifacts, valid and broken.

Each answer must be a graphopt error or a correct result: never another exception, never a
crash. Bounded example counts keep this to about a minute in CI."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import graphopt
from graphopt.errors import ArtifactError, CaptureError, RecipeError
from graphopt.recipe import Recipe, parse_recipe

FUZZ = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

# ------------------------------------------------------------------------------- recipes
WORDS = st.sampled_from(
    [
        "model",
        "inputs",
        "passes",
        "pass",
        "shape",
        "dtype",
        "ratio",
        "torchvision",
        "python",
        "graph_module",
        "onnx",
        "compile",
        "target",
        "tuning",
        "seed",
        "output_dir",
        "data",
        "calibration",
        "capture",
        "leaf_modules",
        "mode",
        "trust",
        "kwargs",
        "low",
        "high",
        "include",
        "exclude",
        "module_types",
        "energy",
        "rank_ratio",
        "factor",
        "trials",
    ]
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.sampled_from(["resnet18", "fold_batch_norm", "channel_pruning", "llvm", "float32"]),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(WORDS | st.text(max_size=6), inner, max_size=5)
    ),
    max_leaves=25,
)
VALID = {
    "model": {"torchvision": "resnet18"},
    "inputs": [{"shape": [1, 3, 8, 8]}],
    "passes": [{"pass": "fold_batch_norm"}, {"pass": "channel_pruning", "ratio": 0.5}],
}


def _parse_or_recipe_error(text: str) -> None:
    try:
        assert isinstance(parse_recipe(text), Recipe)
    except RecipeError as exc:
        assert str(exc).startswith("invalid recipe")


@FUZZ
@given(text=st.text(max_size=300))
def test_any_text_is_a_recipe_or_a_recipe_error(text):
    _parse_or_recipe_error(text)


@FUZZ
@given(document=st.dictionaries(WORDS, VALUES, max_size=6))
def test_any_document_is_a_recipe_or_a_recipe_error(document):
    _parse_or_recipe_error(json.dumps(document, allow_nan=True))


@FUZZ
@given(
    key=st.sampled_from(sorted(VALID)), path=st.lists(st.integers(0, 3), max_size=3), value=VALUES
)
def test_valid_recipes_with_one_value_replaced(key, path, value):
    document = json.loads(json.dumps(VALID))
    node, step = document, key
    for index in path:  # walk into the chosen entry as far as the path goes
        child = node[step]
        if isinstance(child, list) and child:
            node, step = child, index % len(child)
        elif isinstance(child, dict) and child:
            node, step = child, sorted(child)[index % len(child)]
        else:
            break
    node[step] = value
    _parse_or_recipe_error(yaml.safe_dump(document))


# ---------------------------------------------------------------------------------- ONNX
class _Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def onnx_bytes(tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "small.onnx"
    torch.manual_seed(0)
    torch.onnx.export(
        _Small().eval(), (torch.randn(1, 3, 6, 6),), path, dynamo=False, opset_version=17
    )
    return path.read_bytes()


MUTATIONS = st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=6)


def _mutate(data: bytes, edits, truncate: int | None) -> bytes:
    buffer = bytearray(data)
    for position, value in edits:
        buffer[position % len(buffer)] = value
    return bytes(buffer[:truncate] if truncate else buffer)


@FUZZ
@given(edits=MUTATIONS, truncate=st.none() | st.integers(1, 3000))
def test_mutated_onnx_files_capture_correctly_or_fail_with_a_capture_error(
    onnx_bytes, tmp_path, edits, truncate
):
    path = tmp_path / "mutated.onnx"
    path.write_bytes(_mutate(onnx_bytes, edits, truncate))
    try:
        gm = graphopt.capture(path)  # checked against ONNX Runtime on the file when it loads
    except CaptureError:
        return
    assert isinstance(gm, torch.fx.GraphModule)


# ----------------------------------------------------------------------------- artifacts
@pytest.fixture(scope="module")
def artifact_dir(tmp_path_factory):
    torch.manual_seed(0)
    model, x = _Small().eval(), torch.randn(1, 3, 6, 6)
    directory = graphopt.compile(model, x, tuning=None).save(tmp_path_factory.mktemp("a") / "a")
    with torch.no_grad():
        return directory, x.numpy(), model(x).numpy()


def _load_and_run(directory, x, want, spec_unchanged: bool) -> None:
    try:
        artifact = graphopt.load(directory)
        got = artifact(x)
    except ArtifactError:
        return
    if spec_unchanged:
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def _fresh_copy(artifact_dir, tmp_path):
    directory = tmp_path / "copy"
    shutil.rmtree(directory, ignore_errors=True)
    shutil.copytree(artifact_dir[0], directory)
    return directory


@FUZZ
@given(
    key=st.sampled_from(
        [
            "format",
            "target",
            "inputs",
            "outputs",
            "output_structure",
            "files",
            "versions",
            "created",
            "compile_seconds",
            "notes",
        ]
    ),
    value=VALUES,
)
def test_manifest_fields_replaced(artifact_dir, tmp_path, key, value):
    directory = _fresh_copy(artifact_dir, tmp_path)
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest[key] = value
    (directory / "manifest.json").write_text(json.dumps(manifest, allow_nan=True))
    _load_and_run(directory, *artifact_dir[1:], spec_unchanged=key not in ("inputs", "outputs"))


@FUZZ
@given(edits=MUTATIONS, name=st.sampled_from(["manifest.json", "model.so", "model.onnx"]))
def test_artifact_files_with_mutated_bytes(artifact_dir, tmp_path, edits, name):
    directory = _fresh_copy(artifact_dir, tmp_path)
    file = directory / name
    file.write_bytes(_mutate(file.read_bytes(), edits, None))
    _load_and_run(directory, *artifact_dir[1:], spec_unchanged=name != "manifest.json")


class _Lookup(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(40, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, ids, scale):
        return torch.relu(self.head(self.embedding(ids).mean(1)) * scale)  # relu(NaN) is NaN


@pytest.fixture(scope="module")
def lookup():
    torch.manual_seed(0)
    model = _Lookup().eval()
    ids, scale = torch.randint(0, 40, (2, 5)), torch.ones(2, 3)
    return model, graphopt.compile(model, (ids, scale), tuning=None)


SCALES = st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=6, max_size=6)


@FUZZ
@given(ids=st.lists(st.integers(-(2**63), 2**63 - 1), min_size=10, max_size=10), scale=SCALES)
def test_ids_over_the_whole_int64_range_and_non_finite_inputs(lookup, ids, scale):
    model, artifact = lookup
    ids = torch.tensor(ids, dtype=torch.int64).reshape(2, 5)
    scale = torch.tensor(scale, dtype=torch.float32).reshape(2, 3)
    try:
        with torch.no_grad():
            want = model(ids, scale)
    except IndexError:
        with pytest.raises(ArtifactError, match="indexes a table of 40 rows"):
            artifact(ids, scale)
        return
    got = artifact(ids, scale)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-4, atol=1e-5, equal_nan=True)
