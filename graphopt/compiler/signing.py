"""Artifact signatures: an HMAC-SHA256 over ``manifest.json``, kept in ``signature.json``.

The manifest holds the SHA-256 of every other file of the artifact, so a valid MAC over its
exact bytes says every listed file is what the key holder built. What it does not protect:
files the manifest does not list (the loader never reads them), and anything once the key
itself is known to whoever can write the directory. HMAC needs the same key at build and at
load time; keep it out of recipes and artifacts (``GRAPHOPT_ARTIFACT_KEY`` or a secret store).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from pathlib import Path

from graphopt.compiler.manifest import MANIFEST, SIGNATURE
from graphopt.errors import ArtifactError

KEY_ENV = "GRAPHOPT_ARTIFACT_KEY"
ALGORITHM = "hmac-sha256"
MIN_KEY_BYTES = 16


def key_from_env() -> bytes | None:
    """The signing key from ``GRAPHOPT_ARTIFACT_KEY``, or ``None`` when it is not set."""
    value = os.environ.get(KEY_ENV)
    return value.encode() if value else None


def _key_bytes(key: bytes | str) -> bytes:
    raw = key.encode() if isinstance(key, str) else bytes(key)
    if len(raw) < MIN_KEY_BYTES:
        raise ArtifactError(f"a signing key needs at least {MIN_KEY_BYTES} bytes, got {len(raw)}")
    return raw


def mac(manifest_bytes: bytes, key: bytes | str) -> str:
    return hmac.new(_key_bytes(key), manifest_bytes, hashlib.sha256).hexdigest()


def sign(directory: Path, key: bytes | str) -> Path:
    """Write ``signature.json`` for the manifest now in ``directory``."""
    manifest = (directory / MANIFEST).read_bytes()
    document = {"algorithm": ALGORITHM, "mac": mac(manifest, key)}
    path = directory / SIGNATURE
    path.write_text(json.dumps(document, indent=2))
    return path


def check_signature(directory: Path, manifest_bytes: bytes, key: bytes | str) -> None:
    """Raise :class:`ArtifactError` unless ``signature.json`` is a valid MAC of the manifest."""
    path = directory / SIGNATURE
    expected = mac(manifest_bytes, key)
    if not path.is_file():
        raise ArtifactError(f"refusing to load {directory}: unsigned ({SIGNATURE} missing)")
    try:
        document = json.loads(path.read_bytes().decode("utf-8"))
        algorithm, given = document["algorithm"], document["mac"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"refusing to load {directory}: {SIGNATURE} is malformed") from exc
    if algorithm != ALGORITHM or not isinstance(given, str):
        raise ArtifactError(f"refusing to load {directory}: unknown signature {algorithm!r}")
    if not hmac.compare_digest(given, expected):
        raise ArtifactError(
            f"refusing to load {directory}: the signature does not match "
            "(signed with another key, or the manifest was modified)"
        )
