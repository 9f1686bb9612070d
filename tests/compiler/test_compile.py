"""compile → artifact → load: numbers equal PyTorch, files are hashed, tampering is refused."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import graphopt
from graphopt.compiler.manifest import LIBRARY, MANIFEST
from graphopt.errors import ArtifactError, CompileError
from tests.compiler.conftest import TwoOutputs, tiny_net

TOLERANCE = 1e-4


def expected(model, *inputs):
    with torch.no_grad():
        return model(*inputs)


def test_artifact_equals_pytorch(tiny, tiny_artifact):
    model, x = tiny
    got = tiny_artifact(x)
    assert isinstance(got, torch.Tensor)
    assert torch.allclose(got, expected(model, x), atol=TOLERANCE, rtol=0)
    as_numpy = tiny_artifact(x.numpy())
    assert isinstance(as_numpy, np.ndarray)
    np.testing.assert_allclose(as_numpy, got.numpy(), atol=0, rtol=0)


def test_manifest_describes_the_build(tiny, tiny_artifact):
    import tvm

    _, x = tiny
    m = tiny_artifact.manifest
    assert m.versions.graphopt == graphopt.__version__ and m.versions.tvm == tvm.__version__
    assert m.target.name == "llvm" and m.target.device == "cpu"
    assert [(s.shape, s.dtype) for s in m.inputs] == [(list(x.shape), "float32")]
    assert [(s.shape, s.dtype) for s in m.outputs] == [([1, 5], "float32")]
    assert set(m.files) == {"model.so", "model.onnx", "model.pt2"}
    assert m.tuning is None and m.compile_seconds > 0


def test_compile_does_not_change_the_model(tiny):
    model, x = tiny
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert not model.training
    graphopt.compile(model.train(), x, tuning=None)
    assert model.training  # the caller's mode is kept; compilation used an eval copy
    model.eval()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_tuple_outputs_and_input_checks():
    model, x = TwoOutputs().eval(), torch.randn(3, 6)
    artifact = graphopt.compile(model, x, tuning=None)
    got = artifact(x)
    assert isinstance(got, tuple) and len(got) == 2
    for g, e in zip(got, expected(model, x), strict=True):
        assert torch.allclose(g, e, atol=TOLERANCE)
    with pytest.raises(ArtifactError, match=r"expected float32\[3, 6\]"):
        artifact(torch.randn(4, 6))
    with pytest.raises(ArtifactError, match="takes 1 inputs"):
        artifact(x, x)


def test_saved_artifact_runs_in_a_fresh_process(tiny, tiny_artifact, tmp_path):
    model, x = tiny
    directory = tiny_artifact.save(tmp_path / "art")
    np.save(tmp_path / "x.npy", x.numpy())
    script = textwrap.dedent(f"""
        import numpy as np, graphopt
        artifact = graphopt.load({str(directory)!r})
        np.save({str(tmp_path / "y.npy")!r}, artifact(np.load({str(tmp_path / "x.npy")!r})))
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=300)
    got = np.load(tmp_path / "y.npy")
    np.testing.assert_allclose(got, expected(model, x).numpy(), atol=TOLERANCE, rtol=0)


def test_portable_exports_match(tiny, tiny_artifact):
    import onnxruntime as ort

    model, x = tiny
    session = ort.InferenceSession(str(tiny_artifact.directory / "model.onnx"))
    (onnx_out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    np.testing.assert_allclose(onnx_out, expected(model, x).numpy(), atol=TOLERANCE)
    program = torch.export.load(str(tiny_artifact.directory / "model.pt2"))
    assert torch.allclose(program.module()(x), expected(model, x), atol=TOLERANCE)


def test_tampered_library_is_refused(tiny_artifact, tmp_path):
    directory = tiny_artifact.save(tmp_path / "art")
    with open(directory / LIBRARY, "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ArtifactError, match="model.so: sha256 differs"):
        graphopt.load(directory)


def test_missing_file_and_invalid_manifest_are_refused(tiny_artifact, tmp_path):
    directory = tiny_artifact.save(tmp_path / "art")
    (directory / "model.onnx").unlink()
    with pytest.raises(ArtifactError, match="model.onnx: missing"):
        graphopt.load(directory)
    manifest = json.loads((directory / MANIFEST).read_text())
    manifest["target"]["device"] = "tpu"
    manifest["surprise"] = 1
    (directory / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError) as info:
        graphopt.load(directory)
    assert "target.device" in str(info.value) and "surprise" in str(info.value)
    (directory / MANIFEST).write_text("{not json")
    with pytest.raises(ArtifactError, match="not JSON"):
        graphopt.load(directory)


@pytest.mark.skipif(shutil.which("aarch64-linux-gnu-gcc") is None, reason="no aarch64 gcc")
def test_aarch64_artifact_is_an_aarch64_elf_and_refuses_to_load_here(tiny, tmp_path):
    from graphopt.compiler.targets import host_arch

    model, x = tiny
    artifact = graphopt.compile(model, x, target="aarch64", tuning=None)
    header = (artifact.directory / LIBRARY).read_bytes()[:20]
    assert header[:4] == b"\x7fELF"
    assert int.from_bytes(header[18:20], "little") == 183  # e_machine EM_AARCH64
    if host_arch() != "aarch64":
        with pytest.raises(ArtifactError, match="built for aarch64"):
            graphopt.load(artifact.save(tmp_path / "arm"))
        with pytest.raises(ArtifactError, match="built for aarch64"):
            artifact(x)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")
def test_cuda_artifact_holds_kernels(tiny, tmp_path):
    import tvm

    model, x = tiny
    artifact = graphopt.compile(model, x, target="cuda:sm_90", tuning=None)
    assert artifact.manifest.target.device == "cuda"
    assert b"__global__" in (artifact.directory / LIBRARY).read_bytes()
    if tvm.cuda().exist:  # on a GPU machine, run it
        assert torch.allclose(artifact(x), expected(model, x), atol=TOLERANCE)
    else:
        with pytest.raises(ArtifactError, match="no CUDA device"):
            graphopt.load(artifact.save(tmp_path / "cuda"))


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")
def test_generated_cuda_compiles_with_nvcc(tiny):
    """The CUDA source TVM generates (dlight schedules) is valid for sm_90: nvcc makes PTX."""
    import tvm
    from tvm.support import nvcc

    from graphopt.compiler.build import export_program, lower_program
    from graphopt.compiler.targets import resolve_target

    model, x = tiny
    target = resolve_target("cuda:sm_90")
    mod, _ = lower_program(export_program(model.eval(), (x,)), target, None)
    executable = tvm.compile(mod, target=target.tvm())
    modules = [executable.mod]
    while modules and modules[0].kind != "cuda":
        modules = modules[1:] + list(modules[0].imports)
    source = modules[0].inspect_source("")
    assert source.count("__global__") >= 3
    with target.tvm():
        ptx = bytes(nvcc.compile_cuda(source, target_format="ptx", compiler="nvcc"))
    assert b".entry" in ptx and b".target sm_90" in ptx


def test_untraceable_model_is_a_compile_error():
    class DataDependent(torch.nn.Module):
        def forward(self, x):
            return x * 2 if x.sum() > 0 else x

    with pytest.raises(CompileError, match="torch.export"):
        graphopt.compile(DataDependent(), torch.ones(2), tuning=None)


def test_optimize_with_a_target_compiles_the_rewritten_graph():
    from graphopt.passes.canonicalize.fold_batch_norm import FoldBatchNorm

    model = tiny_net()
    x = torch.randn(1, 3, 12, 12)
    result = graphopt.optimize(model, x, [FoldBatchNorm()], target="llvm", tuning=None)
    artifact = result.artifact
    assert artifact.manifest.passes == ["fold_batch_norm"]
    assert artifact.manifest.report.after.params < artifact.manifest.report.before.params
    assert torch.allclose(artifact(x), expected(model, x), atol=TOLERANCE)
    assert any(type(m).__name__ == "BatchNorm2d" for m in model.modules())  # unchanged


class SelfAttention(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.attention = torch.nn.MultiheadAttention(16, 2, batch_first=True)

    def forward(self, x):
        return self.attention(x, x, x, need_weights=False)[0]


def test_attention_exports_to_onnx_too():
    """In eval mode without gradients, nn.MultiheadAttention takes PyTorch's fast path
    (``aten::_native_multi_head_attention``), which the ONNX exporter cannot write (ViT-B/16's
    artifact had no model.onnx, so no ONNX Runtime baseline): the export runs with that fast
    path off, through the exportable one."""
    import onnxruntime as ort

    torch.manual_seed(0)
    model, x = SelfAttention().eval(), torch.randn(1, 6, 16)
    artifact = graphopt.compile(model, x, tuning=None)
    assert (artifact.directory / "model.onnx").exists(), artifact.manifest.notes
    session = ort.InferenceSession(str(artifact.directory / "model.onnx"))
    (onnx_out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    np.testing.assert_allclose(onnx_out, expected(model, x).numpy(), atol=TOLERANCE)
