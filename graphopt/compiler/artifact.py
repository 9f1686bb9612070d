"""An artifact directory (``model.so`` + ``manifest.json`` + ``model.onnx`` + ``model.pt2``) and
the small loader that checks and runs it."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from graphopt.compiler.manifest import LIBRARY, MANIFEST, Manifest, sha256
from graphopt.compiler.signing import check_signature, key_from_env, sign
from graphopt.compiler.targets import host_can_run
from graphopt.compiler.threads import ENV, default_threads, use_threads
from graphopt.errors import ArtifactError, first_line


class Artifact:
    """A compiled model: call it on numpy arrays or torch tensors; ``save`` it; ``load`` it back.

    Results come back as the inputs came in: torch tensors for torch inputs, else numpy arrays;
    one value for a model that returned one tensor, a tuple otherwise.

    A CPU artifact runs on ``threads`` TVM workers: by default ``TVM_NUM_THREADS`` when set, else
    the host's physical cores (TVM's own default is half of them on x86). The pool belongs to
    the process, so the last artifact to start sets it for all.
    """

    def __init__(
        self,
        directory: Path,
        manifest: Manifest,
        *,
        threads: int | None = None,
        _keep: Any = None,
        _library: Path | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.manifest = manifest
        self.threads = threads
        self._keep = _keep  # a TemporaryDirectory that must live as long as this object
        # the library that runs: load() gives the private copy of the bytes it verified
        self._library = _library or self.directory / LIBRARY
        self._vm = None

    def __repr__(self) -> str:
        t = self.manifest.target
        return f"Artifact({str(self.directory)!r}, target={t.name!r}, arch={t.arch!r})"

    @property
    def runnable(self) -> str | None:
        """``None`` if this host can run the artifact, else why not."""
        return host_can_run(self.manifest.target.device, self.manifest.target.arch)

    def save(self, directory: str | Path, key: bytes | str | None = None) -> Path:
        """Copy the artifact's files into ``directory`` (created; existing files replaced).

        With ``key`` (default: the ``GRAPHOPT_ARTIFACT_KEY`` environment variable, when set),
        also write ``signature.json``: an HMAC-SHA256 of the manifest, whose hashes cover every
        file, so ``load(directory, key=...)`` can tell the artifact came from a holder of the key.
        """
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        if out.resolve() != self.directory.resolve():
            for name in [*self.manifest.files, MANIFEST]:
                source = self._library if name == LIBRARY else self.directory / name
                shutil.copy2(source, out / name)
        key = key if key is not None else key_from_env()
        if key is not None:
            sign(out, key)
        return out

    def __call__(self, *inputs):
        arrays, as_torch = self._check_inputs(inputs)
        vm, device = self._machine()
        import tvm

        try:
            result = vm["main"](*(tvm.runtime.tensor(a, device) for a in arrays))
            outputs = [o.numpy() for o in _flatten(result)]
        except Exception as exc:  # noqa: BLE001 - TVM raises its own untyped errors
            raise ArtifactError(
                f"{self.directory}: the compiled model failed on these inputs ({first_line(exc)})"
            ) from exc
        if len(outputs) != len(self.manifest.outputs):
            raise ArtifactError(
                f"{self.directory}: the library returned {len(outputs)} outputs, the manifest "
                f"lists {len(self.manifest.outputs)}"
            )
        if as_torch:
            import torch

            outputs = [torch.from_numpy(o) for o in outputs]
        return outputs[0] if self.manifest.output_structure == "single" else tuple(outputs)

    def _check_inputs(self, inputs) -> tuple[list[np.ndarray], bool]:
        specs = self.manifest.inputs
        if len(inputs) != len(specs):
            raise ArtifactError(f"the artifact takes {len(specs)} inputs, got {len(inputs)}")
        as_torch = any(type(x).__module__.startswith("torch") for x in inputs)
        arrays = []
        for spec, x in zip(specs, inputs, strict=True):
            a = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
            if list(a.shape) != spec.shape or a.dtype.name != spec.dtype:
                raise ArtifactError(
                    f"input {spec.name!r}: expected {spec.dtype}{spec.shape}, "
                    f"got {a.dtype.name}{list(a.shape)} (the artifact is compiled for static shapes)"
                )
            _check_range(spec, a)
            arrays.append(np.ascontiguousarray(a))
        return arrays, as_torch

    def _machine(self):
        if self._vm is None:
            if reason := self.runnable:
                raise ArtifactError(f"cannot run {self.directory}: {reason}")
            import tvm
            from tvm import relax

            device = tvm.cuda() if self.manifest.target.device == "cuda" else tvm.cpu()
            if self.manifest.target.device == "cpu":
                self._size_pool()
            try:
                lib = tvm.runtime.load_module(str(self._library))
                self._vm = (relax.VirtualMachine(lib, device), device)
            except Exception as exc:  # noqa: BLE001 - TVM raises its own untyped errors
                raise ArtifactError(f"{self.directory}: cannot open {LIBRARY}: {exc}") from exc
        return self._vm

    def _size_pool(self) -> None:
        wanted = self.threads or default_threads()
        got = use_threads(wanted)
        if got < wanted:
            warnings.warn(
                f"{self.directory}: runs on {got} threads, not {wanted}: TVM's thread pool was "
                f"created before graphopt was imported; set {ENV} before importing tvm",
                RuntimeWarning,
                stacklevel=3,
            )


def load(
    directory: str | Path, threads: int | None = None, *, key: bytes | str | None = None
) -> Artifact:
    """Open an artifact directory, refusing it if the manifest, a hash, the signature or the
    host is wrong.

    ``threads``: CPU worker threads (default: ``TVM_NUM_THREADS``, else physical cores).
    ``key`` (default: ``GRAPHOPT_ARTIFACT_KEY`` when set): the artifact must carry a valid
    signature made with it (see :meth:`Artifact.save`); unsigned or wrongly signed is refused.
    The library that runs is a private copy of the bytes whose hash was checked, so replacing
    ``model.so`` after ``load`` returns changes nothing.
    """
    path = Path(directory)
    manifest_bytes = _read_bytes(path / MANIFEST)
    key = key if key is not None else key_from_env()
    if key is not None:
        check_signature(path, manifest_bytes, key)
    manifest = parse_manifest(manifest_bytes, path / MANIFEST)
    problems = []
    for name, entry in manifest.files.items():
        file = path / name
        if not file.is_file() or file.is_symlink():
            problems.append(f"{name}: missing (or not a regular file)")
        elif name != LIBRARY and sha256(file) != entry.sha256:
            problems.append(f"{name}: sha256 differs from the manifest (modified or corrupted)")
    if LIBRARY not in manifest.files:
        problems.append(f"{LIBRARY}: not listed in the manifest")
    if reason := host_can_run(manifest.target.device, manifest.target.arch):
        problems.append(f"target {manifest.target.name}: {reason}")
    private = None  # with no problem so far, the library is listed and a regular file
    if not problems:
        private = _verified_copy(path / LIBRARY, manifest.files[LIBRARY].sha256)
        if private is None:
            problems.append(f"{LIBRARY}: sha256 differs from the manifest (modified or corrupted)")
    if problems:
        raise ArtifactError(f"refusing to load {path}:\n" + "\n".join(f"  - {p}" for p in problems))
    library = Path(private.name) / LIBRARY
    return Artifact(path, manifest, threads=threads, _keep=private, _library=library)


def _verified_copy(library: Path, expected: str) -> tempfile.TemporaryDirectory | None:
    """Read ``library`` once; if its bytes hash to ``expected``, write them to a private
    directory (mode 0700) and return it, else ``None``."""
    data = library.read_bytes()
    if hashlib.sha256(data).hexdigest() != expected:
        return None
    private = staging_dir()
    os.chmod(private.name, 0o700)
    copy = Path(private.name) / LIBRARY
    with open(os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
        f.write(data)
    return private


def _read_bytes(file: Path) -> bytes:
    try:
        return file.read_bytes()
    except OSError as exc:
        raise ArtifactError(f"{file}: cannot read: {exc}") from exc


def read_manifest(path: Path) -> Manifest:
    """The validated manifest of the artifact at ``path``."""
    return parse_manifest(_read_bytes(path / MANIFEST), path / MANIFEST)


def parse_manifest(raw: bytes, file: Path) -> Manifest:
    """Validate manifest bytes (UTF-8 JSON)."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ArtifactError(f"{file}: not UTF-8 text: {exc}") from exc
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ArtifactError(f"{file}: not JSON: {exc}") from exc
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        lines = [
            f"  - {'.'.join(map(str, e['loc'])) or '<root>'}: {e['msg']}" for e in exc.errors()
        ]
        raise ArtifactError(f"{file} fails validation:\n" + "\n".join(lines)) from exc


def staging_dir() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="graphopt-artifact-")


def _check_range(spec, a: np.ndarray) -> None:
    """Index inputs stay inside the table they index (the compiled gather does not check)."""
    if spec.index_range is None or a.size == 0:
        return
    low, high = spec.index_range
    least, most = int(a.min()), int(a.max())
    if least < low or most >= high:
        raise ArtifactError(
            f"input {spec.name!r} indexes a table of {high} rows: values must be in "
            f"[{low}, {high}), got [{least}, {most}]"
        )


def _flatten(value) -> list:
    if hasattr(value, "numpy") or not hasattr(value, "__len__"):
        return [value]
    return [leaf for item in value for leaf in _flatten(item)]
