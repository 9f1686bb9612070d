"""Recipe text: one YAML parse giving both data and line numbers, the structural checks
YAML itself does not make (duplicate keys, aliases), and problem paths ↔ lines."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from graphopt.errors import RecipeError, RecipeProblem

MAX_PROBLEMS = 50  # reported in full; the rest are counted


_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when available: 10× faster


def parse_yaml(text: str, source: str) -> tuple[yaml.Node | None, Any]:
    """The composed node tree (for line numbers) and the data built from it, in one parse."""
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    except yaml.YAMLError as exc:
        line = exc.problem_mark.line + 1 if getattr(exc, "problem_mark", None) else None
        raise RecipeError(source, [RecipeProblem("", f"not valid YAML/JSON: {exc}", line)]) from exc
    except RecursionError as exc:
        raise RecipeError(source, [RecipeProblem("", "nested too deeply")]) from exc
    finally:
        loader.dispose()
    return root, data


def structure_problems(root: yaml.Node | None) -> list[RecipeProblem]:
    """YAML lets a later key silently replace an earlier one; a recipe may not. Aliases
    (``*name``) are refused too: a few of them nest into an exponentially large document
    (538 bytes became 184 MB when the recipe was written back)."""
    problems, stack, seen_nodes = [], [(root, "")], set()
    while stack:
        node, path = stack.pop()
        if isinstance(node, yaml.CollectionNode):
            if id(node) in seen_nodes:
                line = node.start_mark.line + 1
                problems.append(RecipeProblem(path, "YAML aliases are not allowed", line))
                continue
            seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            seen: set = set()
            for key, value in node.value:
                name = getattr(key, "value", None)
                where = f"{path}.{name}" if path else str(name)
                if isinstance(name, str) and name in seen:
                    problems.append(RecipeProblem(where, "duplicate key", key.start_mark.line + 1))
                seen.add(name)
                stack.append((value, where))
        elif isinstance(node, yaml.SequenceNode):
            stack += [(item, f"{path}[{i}]") for i, item in enumerate(node.value)]
    return problems


def located(problems: list[RecipeProblem], root: yaml.Node | None) -> list[RecipeProblem]:
    """Problems with their line numbers; past MAX_PROBLEMS, one line says how many more."""
    index = LineIndex(root)
    shown = [
        p if p.line is not None else RecipeProblem(p.path, p.message, index.line(p.path))
        for p in problems[:MAX_PROBLEMS]
    ]
    if len(problems) > MAX_PROBLEMS:
        shown.append(RecipeProblem("", f"... and {len(problems) - MAX_PROBLEMS:,} more problems"))
    return shown


def format_path(loc: tuple) -> str:
    """``("passes", 1, "ratio")`` → ``passes[1].ratio``."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif str(part).startswith("passes["):
            text += str(part)
        else:
            text += f".{part}" if text else str(part)
    return text


class LineIndex:
    """Line numbers of recipe paths (``passes[1].ratio``): mappings are indexed once, so
    locating every problem stays linear in the size of the recipe."""

    def __init__(self, root: yaml.Node | None) -> None:
        self.root = root
        self._keys: dict[int, dict] = {}

    def line(self, path: str) -> int | None:
        """The 1-based line of ``path`` (of the deepest part found)."""
        node, line = self.root, None
        for key, index in _path_parts(path):
            if isinstance(node, yaml.MappingNode):
                node = self._mapping(node).get(key)
            if node is not None and index is not None and isinstance(node, yaml.SequenceNode):
                node = node.value[index] if index < len(node.value) else None
            if node is None:
                break
            line = node.start_mark.line + 1
        return line

    def _mapping(self, node: yaml.MappingNode) -> dict:
        if id(node) not in self._keys:
            self._keys[id(node)] = {getattr(k, "value", None): v for k, v in reversed(node.value)}
        return self._keys[id(node)]


def _path_parts(path: str):
    for part in path.split("."):
        key, _, rest = part.partition("[")
        yield key, int(rest.rstrip("]")) if rest else None


def located_error(source: str | Path, path: str, message: str) -> RecipeError:
    """A RecipeError for ``path`` in the recipe file ``source``, with its line when readable."""
    line = None
    try:
        root, _ = parse_yaml(Path(source).read_text(), str(source))
        line = LineIndex(root).line(path)
    except (OSError, UnicodeDecodeError, RecipeError):
        pass
    return RecipeError(str(source), [RecipeProblem(path, message, line)])
