"""Target names a user types resolve to full TVM targets; wrong ones list the valid names."""

from __future__ import annotations

import shutil

import pytest

from graphopt.compiler.targets import host_arch, host_can_run, resolve_target
from graphopt.errors import CompileError


def test_llvm_detects_this_host():
    from tvm.target import codegen

    target = resolve_target("llvm")
    assert target.spec["kind"] == "llvm"
    assert target.spec["mcpu"] == codegen.llvm_get_system_cpu()
    assert target.spec["num-cores"] >= 1
    assert (target.device, target.arch) == ("cpu", host_arch())
    assert target.can_measure_locally
    target.tvm()  # TVM accepts it


def test_cuda_arch_is_taken_from_the_name():
    target = resolve_target("cuda:sm_90")
    assert target.spec["kind"] == "cuda" and target.spec["arch"] == "sm_90"
    assert target.spec["host"]["kind"] == "llvm"
    assert target.device == "cuda"
    with pytest.raises(CompileError, match="sm_90"):
        resolve_target("cuda:ampere")


@pytest.mark.skipif(shutil.which("aarch64-linux-gnu-gcc") is None, reason="no aarch64 gcc")
def test_aarch64_cross_compiles_with_neon():
    target = resolve_target("aarch64")
    assert target.spec["mtriple"] == "aarch64-linux-gnu"
    assert "+neon" in target.spec["mattr"]
    assert target.cross_compiler == "aarch64-linux-gnu-gcc"
    assert target.arch == "aarch64" and not target.can_measure_locally


def test_unknown_name_lists_valid_targets():
    with pytest.raises(CompileError) as info:
        resolve_target("x86")
    for name in ("llvm", "cuda", "aarch64"):
        assert name in str(info.value)


def test_expert_dicts_pass_through_and_bad_ones_are_refused():
    target = resolve_target({"kind": "llvm", "mcpu": "skylake-avx512"})
    assert target.spec["mcpu"] == "skylake-avx512" and target.spec["num-cores"] >= 1
    assert target.name == "custom"
    with pytest.raises(CompileError, match="invalid TVM target"):
        resolve_target({"kind": "llvm", "no-such-option": 1})
    with pytest.raises(CompileError, match="not supported"):
        resolve_target({"kind": "no-such-kind"})
    with pytest.raises(CompileError, match="not supported"):
        resolve_target({"kind": "c"})


def test_host_can_run_explains_why_not():
    assert host_can_run("cpu", host_arch()) is None
    other = "aarch64" if host_arch() != "aarch64" else "x86_64"
    assert f"built for {other}" in host_can_run("cpu", other)


def test_vector_features_a_hypervisor_hides_are_turned_off():
    from graphopt.compiler import targets

    avx2_only = frozenset({"sse2", "avx", "avx2", "fma"})
    assert targets.hidden_features("znver4", avx2_only) == ["avx512f"]  # Zen 4 VM, AVX-512 off
    assert targets.hidden_features("znver4", avx2_only | {"avx512f"}) == []
    assert targets.hidden_features("haswell", frozenset({"sse2", "avx"})) == ["avx2", "fma"]
    assert targets.hidden_features("znver4", None) == []  # no /proc/cpuinfo: LLVM's name stands


def test_the_host_target_has_only_the_vector_features_the_host_reports(monkeypatch):
    from tvm.target import codegen

    from graphopt.compiler import targets, vector_lanes_for

    monkeypatch.setattr(codegen, "llvm_get_system_cpu", lambda: "znver4")
    monkeypatch.setattr(targets, "cpuinfo_flags", lambda: frozenset({"sse2", "avx", "avx2", "fma"}))
    resolved = resolve_target("llvm")
    assert resolved.spec["mcpu"] == "znver4" and resolved.spec["mattr"] == ["-avx512f"]
    assert not codegen.target_has_features("avx512f", resolved.tvm())
    assert vector_lanes_for("llvm") == 8


@pytest.mark.skipif(host_arch() != "x86_64", reason="/proc/cpuinfo flags are read on x86 only")
def test_cpuinfo_flags_are_read_on_x86_linux():
    from pathlib import Path

    from graphopt.compiler import targets

    if not Path("/proc/cpuinfo").exists():
        pytest.skip("no /proc/cpuinfo on this system")
    assert "sse2" in targets.cpuinfo_flags()  # every x86-64 CPU has it
