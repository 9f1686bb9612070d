"""The wheel is what users install: every module, the passes mapped to graphopt.passes, real
package data, the entry points, and a declared distribution for every third-party import.

(``.ci/wheel_smoke.sh``, run by ``make test``, installs the wheel non-editable into a fresh
virtual environment and runs the CLI, a recipe and a compile from there.)"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# import name → distribution name, where they differ
DISTRIBUTION = {"yaml": "pyyaml", "tvm": "apache-tvm", "tvm_ffi": "apache-tvm-ffi"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    """A wheel built from the tracked files only (no stale build/ directory)."""
    source = tmp_path_factory.mktemp("src")
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
            str(source),
        ],
        check=True,
        capture_output=True,
    )
    (built,) = out.glob("graphopt-*.whl")
    return zipfile.ZipFile(built)


def _sources() -> dict[str, Path]:
    """Installed module path → source file, for every module of the repository."""
    found = {
        f"graphopt/{p.relative_to(ROOT / 'graphopt')}": p for p in (ROOT / "graphopt").rglob("*.py")
    }
    found |= {
        f"graphopt/passes/{p.relative_to(ROOT / 'passes')}": p
        for p in (ROOT / "passes").rglob("*.py")
    }
    return found


def test_every_module_is_in_the_wheel_and_nothing_else(wheel):
    names = set(wheel.namelist())
    modules = {n for n in names if n.endswith(".py")}
    assert modules == set(_sources())
    assert "graphopt/py.typed" in names
    assert not any(n.startswith(("passes/", "tests/", "bench/")) for n in names)


def test_entry_points_name_every_builtin_pass(wheel):
    text = next(wheel.read(n).decode() for n in wheel.namelist() if n.endswith("entry_points.txt"))
    assert "[graphopt.passes]" in text and "[console_scripts]" in text
    from graphopt.passes import BUILTIN_PASSES

    for cls in BUILTIN_PASSES:
        assert f"{cls.name} = {cls.__module__}:{cls.__name__}" in text


def _third_party_imports() -> set[str]:
    found = set()
    for path in _sources().values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return {m for m in found if m not in sys.stdlib_module_names and m != "graphopt"}


def test_every_import_is_a_declared_dependency(wheel):
    metadata = next(wheel.read(n).decode() for n in wheel.namelist() if n.endswith("METADATA"))
    declared = set()
    for requirement in Parser().parsestr(metadata).get_all("Requires-Dist"):
        name = requirement.split(";")[0].strip()
        for stop in "=<>[ !~":
            name = name.split(stop)[0]
        declared.add(name.lower().replace("_", "-"))
    imports = {DISTRIBUTION.get(m, m).lower().replace("_", "-") for m in _third_party_imports()}
    assert imports - declared == set()
