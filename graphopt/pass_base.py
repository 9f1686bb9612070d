"""The pass contract: a pass is its validated configuration plus a function on the IR.

``Pass.__call__`` enforces the contract for every pass:

* the input graph is never changed (the pass works on a deep copy);
* the pass returns a :class:`PassResult` (anything else is a :class:`PassError`);
* passes listed in ``requires`` must have run before (a :class:`ConfigError` otherwise);
* errors raised inside the pass are wrapped in :class:`PassError` naming the pass and history.

What runs *after* a pass (lint, shape propagation, output comparison for exact passes) is the
pass manager's job: see :mod:`graphopt.verify`.
"""

from __future__ import annotations

import copy
from abc import abstractmethod
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import fx, nn

from graphopt.analysis.ties import tied_modules
from graphopt.errors import ConfigError, GraphOptError, PassError
from graphopt.report import Decline, PassReport
from graphopt.selectors import ModuleType, selects

# While a pass runs: (tied module → why, the tied modules it asked to select)
_TIED: ContextVar[tuple[dict[str, str], dict[str, str]] | None] = ContextVar(
    "graphopt_tied_modules", default=None
)
CALIBRATION = "calibration_data"
TRAINING = "training_data"  # satisfied by training_data, else calibration_data


@dataclass(frozen=True)
class PassContext:
    """What a pass may read besides the graph: example inputs, calibration and training data, a
    validation callback, seed, history, and the graph as it was before the first pass (the
    teacher of recovery passes)."""

    example_inputs: tuple[torch.Tensor, ...]
    calibration_data: Iterable[Any] | None = None
    training_data: Iterable[Any] | None = None
    """Batches for fine-tuning passes (default: the calibration data)."""
    validation: Callable[[nn.Module], float] | None = None
    """Scores a model (higher is better); fine-tuning keeps the best-scoring checkpoint."""
    seed: int = 0
    history: tuple[str, ...] = field(default=())
    original: fx.GraphModule | None = None

    def after(self, pass_name: str) -> PassContext:
        """The context for the next pass, once ``pass_name`` has run."""
        return replace(self, history=(*self.history, pass_name))


@dataclass(frozen=True)
class PassResult:
    """What a pass returns: the new graph, whether it changed, and what the pass did."""

    graph: fx.GraphModule
    modified: bool
    report: PassReport


class Pass(BaseModel):
    """Base of every pass. Subclasses declare ``name``, ``exact`` and implement :meth:`run`.

    Fields common to every pass select the modules it may touch: ``include`` / ``exclude``
    glob patterns over qualified module names (``layer3.*``) and ``module_types``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    name: ClassVar[str]
    """Registered name, used in recipes (``- pass: fold_batch_norm``)."""
    exact: ClassVar[bool]
    """True when the rewrite preserves the model's function (checked after every run)."""
    requires: ClassVar[tuple[type[Pass], ...]] = ()
    """Passes that must have run before this one."""
    changes_ties: ClassVar[bool] = False
    """True for a pass meant to tie or untie parameters (the pass manager checks the others
    keep every tie)."""
    requires_data: ClassVar[frozenset[str]] = frozenset()
    """Data the pass reads (``CALIBRATION``, ``TRAINING``), checked before the first pass runs;
    a pass whose needs depend on its fields overrides :meth:`data_needs`."""

    include: tuple[str, ...] = Field(
        default=(), description="Glob patterns of module names to touch (empty: all)."
    )
    exclude: tuple[str, ...] = Field(default=(), description="Glob patterns of names to skip.")
    module_types: tuple[ModuleType, ...] = Field(
        default=(), description="Only touch modules of these types (empty: any type)."
    )

    @abstractmethod
    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        """Rewrite ``gm`` (a private copy the pass may change) and return the result."""

    def data_needs(self) -> frozenset[str]:
        """What this configuration reads from ``optimize``'s data arguments."""
        return self.requires_data

    def is_exact(self) -> bool:
        """Whether this configuration preserves the function (``exact`` unless a pass's fields
        make it lossy, e.g. Net2Net widening with symmetry-breaking noise)."""
        return self.exact

    def selects(self, name: str, module: nn.Module | None) -> bool:
        """Whether this pass may touch the module called ``name``: chosen by the fields, and
        not holding a parameter shared with another module (see :mod:`graphopt.analysis.ties`;
        such a module is declined with the reason)."""
        if not selects(name, module, self.include, self.exclude, tuple(self.module_types)):
            return False
        tied = _TIED.get()
        if tied is not None and name in tied[0]:
            tied[1].setdefault(name, tied[0][name])
            return False
        return True

    def config(self) -> dict[str, Any]:
        """The fields as a recipe would write them."""
        return self.model_dump(mode="json")

    def report(
        self,
        modified: bool,
        touched: Iterable[str] = (),
        declined: Iterable[Decline] = (),
        notes: Iterable[str] = (),
    ) -> PassReport:
        """A report for this pass; the pass manager adds costs and verification."""
        return PassReport(
            name=self.name,
            config=self.config(),
            exact=self.is_exact(),
            modified=modified,
            touched=list(touched),
            declined=list(declined),
            notes=list(notes),
        )

    def __call__(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        """Run the pass on a copy of ``gm`` and check the result's type."""
        missing = [r.name for r in self.requires if r.name not in ctx.history]
        if missing:
            raise ConfigError(f"pass {self.name!r} requires {missing} to run before it")
        work = copy.deepcopy(gm)
        asked: dict[str, str] = {}  # tied modules the pass wanted, and why they are tied
        token = _TIED.set((tied_modules(work), asked))
        try:
            result = self.run(work, ctx)
        except GraphOptError:
            raise
        except Exception as exc:  # noqa: BLE001 - wrapped with the pass and its history
            raise PassError(self.name, ctx.history, exc) from exc
        finally:
            _TIED.reset(token)
        if not isinstance(result, PassResult):
            raise PassError(
                self.name, ctx.history, TypeError(f"run() returned {type(result).__name__}")
            )
        if asked:
            declines = [
                Decline(target=name, reason=f"tied parameter ({why}): rewriting it would untie it")
                for name, why in asked.items()
            ]
            report = result.report.model_copy(
                update={"declined": [*result.report.declined, *declines]}
            )
            result = PassResult(result.graph, result.modified, report)
        return result
