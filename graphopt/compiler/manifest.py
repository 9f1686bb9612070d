"""The artifact manifest: what was compiled, for which target, from what, and every file's hash."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from graphopt.compiler.measure.baseline import BaselineCheck
from graphopt.compiler.tune.tuning import TuningSummary
from graphopt.report import OptimizeReport

MANIFEST = "manifest.json"
SIGNATURE = "signature.json"
LIBRARY = "model.so"
# A plain file name in the artifact directory: no separators, no "..", not hidden.
FileName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TensorSpec(_Strict):
    """One input or output of the compiled function."""

    name: str
    shape: list[int] = Field(description="Static shape (batch included).")
    dtype: str = Field(description="numpy dtype name, e.g. float32.")
    index_range: tuple[int, int] | None = Field(
        default=None,
        description="For an integer input used as an index (embedding ids): the valid [low, "
        "high). The loader refuses values outside it before running.",
    )


class TargetInfo(_Strict):
    """The target the library was compiled for."""

    name: str = Field(description="As the user gave it: llvm, cuda:sm_90, aarch64 or custom.")
    spec: dict[str, Any] = Field(description="The full TVM target dict.")
    device: Literal["cpu", "cuda"]
    arch: str = Field(description="Machine architecture of model.so (x86_64, aarch64).")


class FileEntry(_Strict):
    """A file of the artifact and its content hash."""

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int = Field(ge=0)


class Versions(_Strict):
    graphopt: str
    tvm: str
    torch: str


class Manifest(_Strict):
    """``manifest.json`` of an artifact directory."""

    format: Literal["graphopt-artifact/1"] = "graphopt-artifact/1"
    created: str = Field(description="UTC time of compilation, ISO 8601.")
    versions: Versions
    target: TargetInfo
    inputs: list[TensorSpec] = Field(min_length=1)
    outputs: list[TensorSpec] = Field(min_length=1)
    output_structure: Literal["single", "tuple"] = Field(
        description="Whether the model returned one tensor or a tuple of them."
    )
    passes: list[str] = Field(default_factory=list, description="Pass history, in order.")
    report: OptimizeReport | None = Field(default=None, description="The optimize report.")
    tuning: TuningSummary | None = Field(default=None, description="None when not tuned.")
    compile_seconds: float = Field(ge=0)
    baseline: BaselineCheck | None = Field(
        default=None, description="The never-slower check, when compile was given a baseline."
    )
    files: dict[FileName, FileEntry] = Field(
        description="Every other file of the directory (plain names; the signature is not one)."
    )
    notes: list[str] = Field(default_factory=list, description="E.g. why an export was skipped.")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_entries(directory: Path) -> dict[str, FileEntry]:
    """Hash every file of ``directory`` except the manifest itself."""
    return {
        p.name: FileEntry(sha256=sha256(p), bytes=p.stat().st_size)
        for p in sorted(directory.iterdir())
        if p.is_file() and p.name not in (MANIFEST, SIGNATURE)
    }
