"""Rules: pattern → check → rewrite on one anchor node, with declines that say why.

A :class:`Rule` finds its pattern at a node (``match`` returns ``None`` when the node is not
the pattern at all: silent), then ``check`` decides whether the rewrite is valid there
(a failed check returns a reason, which reaches the pass report), then ``rewrite`` edits the
graph. :func:`apply_rules` drives a tuple of rules over the graph once.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar, Generic, TypeVar

from torch import fx, nn

from graphopt.analysis.shapes import source_location
from graphopt.report import Decline

M = TypeVar("M")


@dataclass(frozen=True)
class MatchResult:
    """Outcome of a rule's check: ``MatchResult.ok()`` or ``MatchResult.fail(reason)``."""

    reason: str | None = None

    @classmethod
    def ok(cls) -> MatchResult:
        return cls(None)

    @classmethod
    def fail(cls, reason: str) -> MatchResult:
        return cls(reason)

    def __bool__(self) -> bool:
        return self.reason is None


class Rule(ABC, Generic[M]):
    """One rewrite. The docstring's first line states the identity it applies.

    ``match`` and ``rewrite`` are the rule; ``target`` and ``check`` have defaults: the module
    (or node) the match is anchored at, and no condition beyond the pattern.
    """

    description: ClassVar[str]

    @abstractmethod
    def match(self, node: fx.Node, gm: fx.GraphModule) -> M | None:
        """The pattern anchored at ``node``, or ``None`` when ``node`` is not this pattern."""

    def target(self, match: M) -> str:
        """The qualified name of the module the rewrite changes (used for selection): by
        default the match's anchor node (the match itself, or its ``anchor`` attribute)."""
        node = match if isinstance(match, fx.Node) else getattr(match, "anchor", None)
        if not isinstance(node, fx.Node):
            raise TypeError(
                f"{type(self).__name__}: a match of type {type(match).__name__} has no anchor "
                "node; define target()"
            )
        return anchor_name(node)

    def check(self, match: M, gm: fx.GraphModule) -> MatchResult:
        """Whether the rewrite is valid here; a failure carries the reason (default: valid
        wherever the pattern matches)."""
        return MatchResult.ok()

    @abstractmethod
    def rewrite(self, match: M, gm: fx.GraphModule) -> list[str]:
        """Edit ``gm`` in place; return the names of what was rewritten."""


@dataclass
class RuleOutcome:
    """What :func:`apply_rules` did: the names rewritten and the declines with reasons."""

    touched: list[str] = field(default_factory=list)
    declined: list[Decline] = field(default_factory=list)

    @property
    def modified(self) -> bool:
        return bool(self.touched)


def apply_rules(gm: fx.GraphModule, rules: tuple[Rule, ...], selected) -> RuleOutcome:
    """Try every rule at every node once, in graph order; ``selected(name, module)`` filters.

    The graph is recompiled when anything changed.
    """
    outcome = RuleOutcome()
    for node in list(gm.graph.nodes):
        if node.graph is not gm.graph:  # erased by an earlier rewrite
            continue
        for rule in rules:
            match = rule.match(node, gm)
            if match is None:
                continue
            name = rule.target(match)
            if not selected(name, _module_or_none(gm, name)):
                continue
            verdict = rule.check(match, gm)
            if verdict:
                outcome.touched += rule.rewrite(match, gm)
                break
            outcome.declined.append(
                Decline(
                    target=name,
                    reason=verdict.reason or "",
                    location=source_location(node),
                    rule=type(rule).__name__,
                )
            )
    if outcome.modified:
        gm.graph.lint()
        gm.recompile()
    return outcome


def anchor_name(node: fx.Node) -> str:
    """How selection names a node: its module's qualified name, else the node's name."""
    return str(node.target) if node.op == "call_module" else node.name


def _module_or_none(gm: fx.GraphModule, name: str) -> nn.Module | None:
    try:
        return gm.get_submodule(name)
    except AttributeError:
        return None
