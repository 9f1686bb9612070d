"""The graphopt CLI: run, passes, schema, inspect; graphopt errors exit 1 without a traceback."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from graphopt.cli import app

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner(env={"COLUMNS": "240"})


def write_recipe(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(textwrap.dedent(body))
    return path


def test_run_writes_outputs_and_prints_the_table(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    recipe = write_recipe(
        tmp_path,
        """
        model: {python: "tests.models:conv_bn_model"}
        inputs: [{shape: [1, 3, 8, 8]}]
        passes: [{pass: fold_batch_norm}, {pass: eliminate_dead_code}]
        output_dir: result
    """,
    )
    result = runner.invoke(app, ["run", str(recipe)])
    assert result.exit_code == 0, result.output
    assert (
        "before" in result.output
        and "after" in result.output
        and "fold_batch_norm" in result.output
    )
    report = json.loads((tmp_path / "result" / "report.json").read_text())
    assert len(report["passes"][0]["touched"]) == 3


def test_run_reports_recipe_errors_with_paths(tmp_path):
    recipe = write_recipe(
        tmp_path,
        """
        model: {torchvision: resnet18}
        inputs: [{shape: [1, 3, 8, 8]}]
        passes: [{pass: fold_batch_norm, ratio: 2}]
    """,
    )
    result = runner.invoke(app, ["run", str(recipe)])
    assert result.exit_code == 2
    assert "passes[0].ratio: Extra inputs are not permitted" in result.output
    assert "Traceback" not in result.output


def test_passes_lists_builtins_with_their_rewrite():
    result = runner.invoke(app, ["passes"])
    assert result.exit_code == 0
    for name in ("fold_batch_norm", "remove_identity", "eliminate_dead_code"):
        assert name in result.output
    assert "BatchNorm" in result.output


def test_schema_prints_valid_json_and_lists_names():
    listed = runner.invoke(app, ["schema"])
    assert "recipe" in listed.output.split() and "fold_batch_norm" in listed.output.split()
    result = runner.invoke(app, ["schema", "fold_batch_norm"])
    assert json.loads(result.output)["title"] == "FoldBatchNorm"
    unknown = runner.invoke(app, ["schema", "nope"])
    assert unknown.exit_code == 2 and "unknown pass" in unknown.output


def test_inspect_a_torchvision_model_and_a_recipe(tmp_path, monkeypatch):
    result = runner.invoke(app, ["inspect", "torchvision:resnet18", "--shape", "1,3,224,224"])
    assert result.exit_code == 0, result.output
    assert "layer1.0.conv1" in result.output
    assert "total: 11,689,512 params, 1,816,557,056 MACs" in result.output
    monkeypatch.chdir(ROOT)
    result = runner.invoke(app, ["inspect", str(ROOT / "docs/examples/resnet18_demo.yaml")])
    assert result.exit_code == 0 and "fc" in result.output


def test_compile_section_writes_an_artifact_and_bench_times_it(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    recipe = write_recipe(
        tmp_path,
        """
        model: {python: "tests.models:conv_bn_model"}
        inputs: [{shape: [1, 3, 8, 8]}]
        passes: [{pass: fold_batch_norm}]
        compile: {target: llvm, tuning: null, baseline: onnxruntime}
        output_dir: result
    """,
    )
    result = runner.invoke(app, ["run", str(recipe)])
    assert result.exit_code == 0, result.output
    assert " vs onnxruntime " in result.output  # the never-slower check's line
    artifact = tmp_path / "result" / "artifact"
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert manifest["passes"] == ["fold_batch_norm"] and manifest["tuning"] is None
    assert manifest["baseline"]["baseline"] == "onnxruntime"

    timings = tmp_path / "timings.json"
    args = ["bench", str(artifact), "--model", str(artifact / "model.pt2"), "--rounds", "3"]
    result = runner.invoke(app, [*args, "--json", str(timings)])
    assert result.exit_code == 0, result.output
    assert "pytorch eager" in result.output and "graphopt (llvm)" in result.output
    assert "never-slower check against onnxruntime" in result.output
    data = json.loads(timings.read_text())
    checks = data.pop("baseline")
    assert checks["at_compile"] == manifest["baseline"] and checks["now"]["rounds"] == 3
    assert set(data) == {"pytorch eager", "graphopt (llvm)"}
    assert all(t["rounds"] == 3 and t["median_ms"] > 0 for t in data.values())


def test_bench_refuses_a_tampered_artifact(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    recipe = write_recipe(
        tmp_path,
        """
        model: {python: "tests.models:conv_bn_model"}
        inputs: [{shape: [1, 3, 8, 8]}]
        compile: {target: llvm, tuning: null}
        output_dir: result
    """,
    )
    assert runner.invoke(app, ["run", str(recipe)]).exit_code == 0
    (tmp_path / "result" / "artifact" / "model.onnx").write_bytes(b"changed")
    result = runner.invoke(app, ["bench", str(tmp_path / "result" / "artifact")])
    assert result.exit_code == 2 and "sha256 differs" in result.output


def test_inspect_refuses_a_pickled_model_file_without_running_it(tmp_path):
    import os
    import pickle

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "model.pt"
    evil.write_bytes(pickle.dumps(Payload()))
    for args in (["inspect", str(evil), "--shape", "1,3,8,8"],):
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and "--trust-model-file" in result.output, result.output
    assert not marker.exists()


def test_run_writes_a_model_file_inspect_reads_back(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    recipe = write_recipe(
        tmp_path,
        """
        model: {python: "tests.models:conv_bn_model"}
        inputs: [{shape: [1, 3, 8, 8]}]
        passes: [{pass: fold_batch_norm}]
        output_dir: result
    """,
    )
    assert runner.invoke(app, ["run", str(recipe)]).exit_code == 0
    result = runner.invoke(
        app, ["inspect", str(tmp_path / "result/model.pt"), "--shape", "1,3,8,8"]
    )
    assert result.exit_code == 0, result.output
    assert "total:" in result.output


FACTORIES = """
import torch


def raises():
    raise RuntimeError("weights file not found")


def takes_width(width):
    return torch.nn.Conv2d(3, width, 1)


def not_a_module():
    return 42
"""


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ('{python: "nowhere:model"}', "cannot import 'nowhere'"),
        ('{python: "cli_factories:missing"}', "cli_factories has no 'missing'"),
        ('{python: "cli_factories:raises"}', "raised RuntimeError: weights file not found"),
        ('{python: "cli_factories:takes_width", kwargs: {depth: 3}}', "does not take these kwargs"),
        ('{python: "cli_factories:not_a_module"}', "returned a int, not a module"),
        ("{torchvision: resnet9000}", "unknown torchvision model 'resnet9000'"),
    ],
)
def test_model_source_failures_are_one_located_line_and_exit_2(tmp_path, model, message):
    (tmp_path / "cli_factories.py").write_text(FACTORIES)
    recipe = write_recipe(tmp_path, f"model: {model}\ninputs: [{{shape: [1, 3, 8, 8]}}]\n")
    result = runner.invoke(app, ["run", str(recipe)])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    if "python" in model:
        assert "model.python" in result.output and "(line 1)" in result.output
    else:
        assert "model.torchvision" in result.output and "(line 1)" in result.output


def test_a_wrong_rank_input_and_an_output_file_exit_2(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    recipe = write_recipe(
        tmp_path, 'model: {python: "tests.models:conv_bn_model"}\ninputs: [{shape: [3, 8]}]\n'
    )
    result = runner.invoke(app, ["run", str(recipe)])
    assert result.exit_code == 2 and "Expected 3D" in result.output, result.output
    (tmp_path / "taken").write_text("a file")
    recipe = write_recipe(
        tmp_path,
        'model: {python: "tests.models:conv_bn_model"}\ninputs: [{shape: [1, 3, 8, 8]}]\n'
        "output_dir: taken/out\n",
    )
    result = runner.invoke(app, ["run", str(recipe)])
    assert result.exit_code == 2 and "is a file" in result.output, result.output


def test_non_utf8_and_duplicate_key_recipes_exit_2(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_bytes(b"model: {torchvision: resnet18}\n# caf\xe9\n")
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == 2 and "not UTF-8" in result.output
    path.write_text("model: {torchvision: resnet18}\nmodel: {torchvision: resnet50}\n")
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == 2 and "duplicate key (line 2)" in result.output
