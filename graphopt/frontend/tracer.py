"""The FX tracer capture uses: torch.fx's leaves plus the user's chosen modules."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable

from torch import fx, nn


class LeafTracer(fx.Tracer):
    """An FX tracer that also keeps chosen user modules as leaves."""

    def __init__(self, leaf_modules: Iterable[str] = (), leaf_types: Iterable[type] = ()):
        super().__init__()
        self.record_stack_traces = True
        self._leaf_patterns = tuple(leaf_modules)
        self._leaf_types = tuple(leaf_types)

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if self._leaf_types and isinstance(m, self._leaf_types):
            return True
        if any(fnmatch.fnmatchcase(module_qualified_name, p) for p in self._leaf_patterns):
            return True
        return super().is_leaf_module(m, module_qualified_name)
