"""Artifacts a deployment can trust: signatures, confined file names, no swap after load."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

import graphopt
from graphopt.compiler.manifest import LIBRARY, MANIFEST, SIGNATURE, sha256
from graphopt.compiler.signing import KEY_ENV
from graphopt.errors import ArtifactError

KEY = b"a deployment key of 32+ bytes...."


def _rehash(directory, name):
    manifest = json.loads((directory / MANIFEST).read_text())
    manifest["files"][name]["sha256"] = sha256(directory / name)
    manifest["files"][name]["bytes"] = (directory / name).stat().st_size
    (directory / MANIFEST).write_text(json.dumps(manifest))


def _swap_library(directory, other):
    shutil.copy2(other / LIBRARY, directory / LIBRARY)
    _rehash(directory, LIBRARY)


def test_signed_artifact_loads_with_its_key_and_runs(tiny, tiny_artifact, tmp_path):
    _, x = tiny
    directory = tiny_artifact.save(tmp_path / "art", key=KEY)
    assert (directory / SIGNATURE).is_file()
    loaded = graphopt.load(directory, key=KEY)
    np.testing.assert_allclose(loaded(x.numpy()), tiny_artifact(x.numpy()), rtol=0, atol=0)


def test_swapped_and_rehashed_library_is_refused_with_a_key(tiny_artifact, tmp_path):
    signed = tiny_artifact.save(tmp_path / "signed", key=KEY)
    # an attacker with write access replaces the library and fixes up the manifest's hash
    other = tiny_artifact.save(tmp_path / "other")
    (other / LIBRARY).write_bytes((other / LIBRARY).read_bytes() + b"\0trailing")
    _swap_library(signed, other)
    graphopt.load(signed)  # without a key the hashes agree: integrity is not authenticity
    with pytest.raises(ArtifactError, match="signature does not match"):
        graphopt.load(signed, key=KEY)


def test_unsigned_or_wrongly_signed_artifacts_are_refused_with_a_key(tiny_artifact, tmp_path):
    unsigned = tiny_artifact.save(tmp_path / "unsigned")
    with pytest.raises(ArtifactError, match="unsigned"):
        graphopt.load(unsigned, key=KEY)
    other_key = tiny_artifact.save(tmp_path / "other", key=b"another key, also long enough")
    with pytest.raises(ArtifactError, match="signature does not match"):
        graphopt.load(other_key, key=KEY)
    (other_key / SIGNATURE).write_bytes(b"\xff\xfe not json")
    with pytest.raises(ArtifactError, match="malformed"):
        graphopt.load(other_key, key=KEY)
    with pytest.raises(ArtifactError, match="at least 16 bytes"):
        tiny_artifact.save(tmp_path / "short", key="short")


def test_the_environment_key_signs_and_checks(tiny_artifact, tmp_path, monkeypatch):
    unsigned = tiny_artifact.save(tmp_path / "unsigned")
    monkeypatch.setenv(KEY_ENV, KEY.decode())
    signed = tiny_artifact.save(tmp_path / "signed")
    assert (signed / SIGNATURE).is_file()
    graphopt.load(signed)
    with pytest.raises(ArtifactError, match="unsigned"):
        graphopt.load(unsigned)


def test_replacing_the_library_after_load_changes_nothing(tiny, tiny_artifact, tmp_path):
    _, x = tiny
    directory = tiny_artifact.save(tmp_path / "art")
    loaded = graphopt.load(directory)
    (directory / LIBRARY).write_bytes(b"not a library any more")
    np.testing.assert_allclose(loaded(x.numpy()), tiny_artifact(x.numpy()), rtol=0, atol=0)
    copy = loaded.save(tmp_path / "copy")  # saves the verified bytes, not the swapped file
    graphopt.load(copy)


@pytest.mark.parametrize("name", ["../payload.txt", "/etc/passwd", "sub/dir.txt", ".hidden"])
def test_manifest_file_names_are_confined(tiny_artifact, tmp_path, name):
    directory = tiny_artifact.save(tmp_path / "art")
    manifest = json.loads((directory / MANIFEST).read_text())
    manifest["files"][name] = {"sha256": "0" * 64, "bytes": 1}
    (directory / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="fails validation"):
        graphopt.load(directory)


def test_a_non_utf8_manifest_is_an_artifact_error(tiny_artifact, tmp_path):
    directory = tiny_artifact.save(tmp_path / "art")
    (directory / MANIFEST).write_bytes(b"\xff\xfe{}")
    with pytest.raises(ArtifactError, match="not UTF-8"):
        graphopt.load(directory)


class _Embed(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embedding = torch.nn.Embedding(50, 8)
        self.head = torch.nn.Linear(8, 3)

    def forward(self, ids, scale):
        return self.head(self.embedding(ids.view(-1)).mean(0, keepdim=True)) * scale


def test_index_inputs_are_bounds_checked_before_running(tmp_path):
    model = _Embed().eval()
    ids, scale = torch.randint(0, 50, (2, 5)), torch.ones(1, 3)
    artifact = graphopt.compile(model, (ids, scale), tuning=None)
    specs = {s.name: s.index_range for s in artifact.manifest.inputs}
    assert specs == {"ids": (0, 50), "scale": None}
    with torch.no_grad():
        torch.testing.assert_close(artifact(ids, scale), model(ids, scale), rtol=1e-4, atol=1e-5)
    loaded = graphopt.load(artifact.save(tmp_path / "embed"))
    for bad in (50, -1, 10**8):
        out_of_range = ids.clone()
        out_of_range[0, 0] = bad
        with pytest.raises(ArtifactError, match=r"'ids' indexes a table of 50 rows"):
            loaded(out_of_range, scale)
