"""The layout rules a maintainer relies on: small files, unique module names, no import cycle
inside graphopt, and tests that use only public names of the modules they import."""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = [*sorted((ROOT / "graphopt").rglob("*.py")), *sorted((ROOT / "passes").rglob("*.py"))]
MAX_LINES = 400


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[0] == "passes":
        parts = ["graphopt", *parts]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(module, imported names, line) for every import statement, at any depth (function-level
    imports included: deferring an import hides a cycle, it does not remove it), except those
    under ``if TYPE_CHECKING:``, which never run."""
    tree = ast.parse(path.read_text(), str(path))
    typing_only = {
        id(n)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and ast.unparse(block.test).endswith("TYPE_CHECKING")
        for n in ast.walk(block)
    }
    found = []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names]
    return found


def test_no_library_file_is_over_400_lines():
    long = {
        str(p.relative_to(ROOT)): n
        for p in LIBRARY
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"split these files: {long}"


def test_no_two_library_modules_share_a_file_name():
    names = Counter(p.name for p in LIBRARY if p.name != "__init__.py")
    assert not [n for n, c in names.items() if c > 1]


def test_graphopt_has_no_import_cycle():
    """Edges between modules: ``from a.b import c`` depends on ``a.b.c`` when that is a module,
    else on ``a.b`` (checked the same way: ``pylint --disable=all --enable=cyclic-import``)."""
    modules = {_module_name(p): p for p in LIBRARY}
    graph = nx.DiGraph()
    for name, path in modules.items():
        graph.add_node(name)
        for module, names, _ in _imports(path):
            targets = [f"{module}.{n}" for n in names if f"{module}.{n}" in modules]
            if not targets and module in modules:
                targets = [module]
            graph.add_edges_from((name, t) for t in targets if t != name)
    cycles = list(nx.simple_cycles(graph, length_bound=6))
    assert not cycles, f"import cycles: {cycles[:5]}"


def _private_attributes(path: Path) -> list[str]:
    """``module._name`` where ``module`` was imported from graphopt."""
    tree = ast.parse(path.read_text(), str(path))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("graphopt"):
            imported |= {a.asname or a.name for a in node.names}
        elif isinstance(node, ast.Import):
            imported |= {
                (a.asname or a.name).split(".")[0]
                for a in node.names
                if a.name.startswith("graphopt")
            }
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_"):
            base = node.value
            while isinstance(base, ast.Attribute):
                base = base.value
            named = isinstance(base, ast.Name) and base.id in imported
            if named and not node.attr.startswith("__"):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {ast.unparse(node)}")
    return found


def test_tests_import_only_public_names():
    private = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        private += _private_attributes(path)
        for module, names, line in _imports(path):
            if not module.startswith("graphopt"):
                continue
            bad = [n for n in names if n.startswith("_")] + [
                part for part in module.split(".") if part.startswith("_")
            ]
            if bad:
                private.append(f"{path.relative_to(ROOT)}:{line} {module} {bad}")
    assert not private, "tests import private names:\n" + "\n".join(private)


def test_every_library_folder_is_a_package():
    """A folder without ``__init__.py`` imports (namespace package) but is left out of the
    wheel by package discovery."""
    folders = {p.parent for p in LIBRARY}
    missing = [str(f.relative_to(ROOT)) for f in folders if not (f / "__init__.py").exists()]
    assert not missing
