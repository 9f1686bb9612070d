"""Typed errors. Every error names what failed and where; none of them is an ``assert``.

GraphOptError
├── CaptureError          the model could not be traced into the IR
├── ModelFileError        a model file is not graphopt's data format, or is unsafe to load
├── UnsupportedGraphError a pass met nodes it cannot handle (all of them, at once)
├── ConfigError           a pass configuration or pipeline is invalid
│   └── RecipeError       a recipe file is invalid (each problem with its path in the file)
├── RegistryError         two passes share a name, or a name is unknown
├── PassError             a pass raised while running (wraps the cause, names the history)
└── VerificationError     a pass produced a graph that fails the checks run after it
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class GraphOptError(Exception):
    """Base class of every error graphopt raises on purpose."""


def first_line(exc: BaseException) -> str:
    """``TypeName: first line of the message`` (just the name when the message is empty): how
    an error from a library or the user's code is quoted inside a one-line graphopt error."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


class CaptureError(GraphOptError):
    """The model could not be traced into a torch.fx graph."""

    def __init__(
        self,
        message: str,
        *,
        module: str | None = None,
        location: str | None = None,
        hint: str | None = None,
        node: str | None = None,
    ) -> None:
        self.node = node
        self.module = module
        self.location = location
        self.hint = hint
        parts = [message]
        if module is not None:
            parts.append(f"  in module: {module or '<root>'}")
        if location is not None:
            parts.append(f"  at: {location}")
        if hint is not None:
            parts.append(f"  what to do: {hint}")
        super().__init__("\n".join(parts))


class ModelFileError(GraphOptError):
    """A model file cannot be read as data (or would run code when loaded)."""


@dataclass(frozen=True)
class NodeIssue:
    """One node a pass cannot handle, with the reason and the source line that created it."""

    node: str
    reason: str
    location: str | None = None

    def __str__(self) -> str:
        where = f" ({self.location})" if self.location else ""
        return f"{self.node}: {self.reason}{where}"


class UnsupportedGraphError(GraphOptError):
    """A pass cannot handle some nodes of the graph; all of them are listed."""

    def __init__(self, pass_name: str, issues: Sequence[NodeIssue]) -> None:
        self.pass_name = pass_name
        self.issues = tuple(issues)
        lines = [f"pass {pass_name!r} cannot handle {len(self.issues)} node(s):"]
        lines += [f"  - {issue}" for issue in self.issues]
        super().__init__("\n".join(lines))


class ConfigError(GraphOptError):
    """A pass configuration or a pipeline is invalid."""


@dataclass(frozen=True)
class RecipeProblem:
    """One problem in a recipe: where (``passes[1].ratio``), what, and the line in the file."""

    path: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f" (line {self.line})" if self.line is not None else ""
        return f"{self.path or '<recipe>'}: {self.message}{where}"


class RecipeError(ConfigError):
    """A recipe is invalid; every problem found is listed with its path in the file."""

    def __init__(self, source: str, problems: Sequence[RecipeProblem]) -> None:
        self.source = source
        self.problems = tuple(problems)
        lines = [f"invalid recipe {source}:"] + [f"  {p}" for p in self.problems]
        super().__init__("\n".join(lines))


class RegistryError(GraphOptError):
    """A pass name is unknown, or two different passes claim the same name."""


class PassError(GraphOptError):
    """A pass raised while running; names the pass and the passes that ran before it."""

    def __init__(self, pass_name: str, history: Sequence[str], cause: BaseException) -> None:
        self.pass_name = pass_name
        self.history = tuple(history)
        before = ", ".join(self.history) or "none"
        super().__init__(
            f"pass {pass_name!r} failed: {type(cause).__name__}: {cause}\n"
            f"  passes run before it: {before}"
        )


class VerificationError(GraphOptError):
    """The graph a pass returned fails the checks run after every pass."""

    def __init__(self, pass_name: str, message: str, node: str | None = None) -> None:
        self.pass_name = pass_name
        self.node = node
        where = f"\n  first diverging node: {node}" if node else ""
        super().__init__(f"pass {pass_name!r} failed verification: {message}{where}")


class CompileError(GraphOptError):
    """TVM could not compile, tune or export the model for the requested target."""


class ArtifactError(GraphOptError):
    """An artifact directory is invalid, tampered with, or cannot run on this host."""
