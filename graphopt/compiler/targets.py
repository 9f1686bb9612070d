"""Targets as names a user types (``llvm``, ``cuda``, ``cuda:sm_90``, ``aarch64``) or TVM dicts.

A name resolves to a full TVM target dict plus what the rest of the compiler needs to know about
it: which machine architecture the shared library is for, which device runs it, and which C
compiler links it (the cross compiler for ``aarch64``).
"""

from __future__ import annotations

import os
import platform
import re
import shutil
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field

from graphopt.errors import CompileError

TARGET_NAMES = ("llvm", "cuda", "cuda:<arch> (e.g. cuda:sm_90)", "aarch64")
AARCH64_CC = "aarch64-linux-gnu-gcc"
DEFAULT_CUDA_ARCH = "sm_80"
Device = Literal["cpu", "cuda"]


@dataclass(frozen=True)
class ResolvedTarget:
    """A target ready for TVM: its dict, the device and machine it runs on, how to link it."""

    name: str
    spec: dict[str, Any]
    device: Device
    arch: str
    cross_compiler: str | None = None

    def tvm(self):
        """The ``tvm.target.Target`` (TVM imported lazily: it takes seconds)."""
        import tvm

        return tvm.target.Target(self.spec)

    @property
    def can_measure_locally(self) -> bool:
        """Whether tuning can time candidates on this host (same machine, device present)."""
        return host_can_run(self.device, self.arch) is None


def host_arch() -> str:
    """This machine's architecture in the names the manifests use (``x86_64``, ``aarch64``)."""
    machine = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


def physical_cores() -> int:
    """Physical cores of this host (what TVM's thread pool and MetaSchedule should use)."""
    try:
        import psutil

        return psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:  # psutil is a dependency; keep working without it all the same
        return os.cpu_count() or 1


def host_can_run(device: str, arch: str) -> str | None:
    """``None`` if this host can run code for ``device``/``arch``, else the reason it cannot."""
    if arch != host_arch():
        return f"built for {arch}; this host is {host_arch()}"
    if device == "cuda":
        import tvm

        if not tvm.cuda().exist:
            return "built for CUDA; this host has no CUDA device (or no driver)"
    return None


def check_target(target: Any) -> str | dict[str, Any]:
    """The target's form, checked without TVM (fast: recipes and ``optimize`` call it before
    any work): a known name, or a dict whose ``kind`` is llvm or cuda. Raises CompileError."""
    if isinstance(target, dict):
        if not all(isinstance(k, str) for k in target):
            raise CompileError(f"target dict keys must be strings: {target!r}")
        if target.get("kind") not in ("llvm", "cuda"):
            raise CompileError(
                f"target kind {target.get('kind')!r} is not supported; use 'llvm' or 'cuda'"
            )
        return target
    name = target.strip() if isinstance(target, str) else None
    if name in ("llvm", "cuda", "aarch64"):
        return name
    if name is not None and name.startswith("cuda:"):
        if not re.fullmatch(r"sm_\d{2,3}[a-z]?", name.partition(":")[2]):
            raise CompileError(f"CUDA arch in {target!r} should look like 'cuda:sm_90'")
        return name
    raise CompileError(
        f"unknown target {target!r}; valid targets: {', '.join(TARGET_NAMES)}, "
        "or a full TVM target dict such as {'kind': 'llvm', 'mcpu': 'znver4', 'num-cores': 2}"
    )


def _as_value_error(target: Any) -> str | dict[str, Any]:
    try:
        return check_target(target)
    except CompileError as exc:
        raise ValueError(str(exc)) from exc


TargetSpec = Annotated[
    str | dict[str, Any],
    AfterValidator(_as_value_error),
    Field(description="llvm, cuda, cuda:<arch> (e.g. cuda:sm_90), aarch64, or a TVM target dict."),
]
"""The compile target as the API and recipes accept it (one type, checked the same way)."""


def resolve_target(target: str | dict[str, Any]) -> ResolvedTarget:
    """Turn what a user typed into a :class:`ResolvedTarget`; unknown names list the valid ones."""
    target = check_target(target)
    if isinstance(target, dict):
        return _from_dict(target)
    if target == "llvm":
        return _host_llvm()
    if target == "aarch64":
        return _aarch64()
    arch = target.partition(":")[2] or _local_cuda_arch() or DEFAULT_CUDA_ARCH
    return _cuda(arch)


def _host_llvm() -> ResolvedTarget:
    from tvm.target import codegen

    cpu = codegen.llvm_get_system_cpu()
    spec = {"kind": "llvm", "mcpu": cpu, "num-cores": physical_cores()}
    hidden = hidden_features(cpu, cpuinfo_flags())
    if hidden:
        spec["mattr"] = [f"-{feature}" for feature in hidden]
    return ResolvedTarget("llvm", spec, "cpu", host_arch())


# LLVM features named as the kernel's /proc/cpuinfo flags, widest first: turning one off in LLVM
# turns off those built on it (-avx512f: every AVX-512 extension).
_VECTOR_FEATURES = ("avx512f", "avx2", "fma", "avx")


def hidden_features(cpu: str, flags: frozenset[str] | None) -> list[str]:
    """Vector features LLVM's name for this CPU implies that the host does not offer. The name
    comes from the CPU's family and model; a hypervisor can hide features of the model (cloud
    VMs of AVX-512 parts without AVX-512), and code using them would die of SIGILL."""
    from tvm.target import Target, codegen

    if flags is None:
        return []
    implied = set(codegen.llvm_get_cpu_features(Target({"kind": "llvm", "mcpu": cpu})))
    return [f for f in _VECTOR_FEATURES if f in implied and f not in flags]


@cache
def cpuinfo_flags() -> frozenset[str] | None:
    """The CPU flags Linux reports on x86 (None elsewhere or when unreadable)."""
    if host_arch() != "x86_64":
        return None
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    line = next((line for line in text.splitlines() if line.startswith("flags")), None)
    return None if line is None else frozenset(line.partition(":")[2].split())


def _cuda(arch: str) -> ResolvedTarget:
    if not arch.startswith("sm_"):
        raise CompileError(f"CUDA arch {arch!r} should look like 'sm_90'")
    host = _host_llvm().spec
    spec = {"kind": "cuda", "arch": arch, "host": host}
    return ResolvedTarget(f"cuda:{arch}", spec, "cuda", host_arch())


def _aarch64() -> ResolvedTarget:
    spec = {
        "kind": "llvm",
        "mtriple": "aarch64-linux-gnu",
        "mattr": ["+neon"],
        "num-cores": 4,
    }
    return ResolvedTarget("aarch64", spec, "cpu", "aarch64", cross_compiler=_cross_cc())


def _cross_cc() -> str:
    if shutil.which(AARCH64_CC) is None:
        raise CompileError(
            f"target 'aarch64' links with {AARCH64_CC}, which is not on PATH; install Debian's "
            "gcc-aarch64-linux-gnu (`apt-get install gcc-aarch64-linux-gnu`)"
        )
    return AARCH64_CC


def _local_cuda_arch() -> str | None:
    try:
        import tvm

        dev = tvm.cuda()
        return f"sm_{dev.compute_version.replace('.', '')}" if dev.exist else None
    except Exception:  # no CUDA runtime at all: fall back to the default arch
        return None


def _from_dict(spec: dict[str, Any]) -> ResolvedTarget:
    import tvm

    try:
        tvm.target.Target(spec)
    except Exception as exc:  # TVM raises several error types for bad dicts
        raise CompileError(f"invalid TVM target dict {spec!r}: {exc}") from exc
    kind = spec.get("kind")
    if kind == "cuda":
        return ResolvedTarget(f"cuda:{spec.get('arch', '?')}", dict(spec), "cuda", host_arch())
    if kind != "llvm":
        raise CompileError(f"target kind {kind!r} is not supported; use 'llvm' or 'cuda'")
    triple = str(spec.get("mtriple", ""))
    arch = "aarch64" if triple.startswith(("aarch64", "arm64")) else host_arch()
    spec = {"num-cores": physical_cores(), **spec}
    cross = _cross_cc() if arch != host_arch() and arch == "aarch64" else None
    return ResolvedTarget("custom", spec, "cpu", arch, cross_compiler=cross)
