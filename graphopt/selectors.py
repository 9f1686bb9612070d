"""Module selection shared by every pass: glob patterns over qualified names, type filters.

Types are classes inside graphopt; at the recipe boundary they are written as dotted paths
(``torch.nn.Conv2d``) or, for modules of ``torch.nn``, bare names (``Conv2d``).
"""

from __future__ import annotations

import fnmatch
import importlib
import sys
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Annotated

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema
from torch import nn

# Packages whose modules a recipe's type names may import while it is being validated; other
# modules are imported only once everything else in the recipe has validated.
TRUSTED_PACKAGES = frozenset({"torch", "torchvision", "onnx2torch", "transformers"})
_DEFERRED: ContextVar[list[str] | None] = ContextVar("graphopt_deferred_imports", default=None)


@contextmanager
def deferred_imports():
    """Validate type names without importing modules outside ``TRUSTED_PACKAGES``: they stand
    in as a placeholder class, and their names are collected in the list this yields, so the
    caller validates again (importing) once all else passed, and only if the list is not empty."""
    deferred: list[str] = []
    token = _DEFERRED.set(deferred)
    try:
        yield deferred
    finally:
        _DEFERRED.reset(token)


class _NotYetImported(nn.Module):
    """Placeholder for a module type whose module is imported after validation."""


def resolve_module_type(value: object) -> object:
    """``"Conv2d"`` / ``"torch.nn.Conv2d"`` / ``"pkg.mod.Cls"`` → the class; classes pass."""
    if not isinstance(value, str):
        return value
    if "." not in value:
        found = getattr(nn, value, None)
        if isinstance(found, type):
            return found
        raise ValueError(f"{value!r} is not a module type of torch.nn; use a dotted path")
    module_name, _, attr = value.rpartition(".")
    top = module_name.partition(".")[0]
    deferred = _DEFERRED.get()
    if deferred is not None and top not in TRUSTED_PACKAGES and module_name not in sys.modules:
        if not all(part.isidentifier() for part in value.split(".")):
            raise ValueError(f"{value!r} is not a dotted path")
        deferred.append(value)
        return _NotYetImported
    try:
        found = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot import module type {value!r}: {exc}") from exc
    return found


def module_type_name(cls: type) -> str:
    """The name a recipe uses for ``cls`` (inverse of :func:`resolve_module_type`)."""
    if getattr(nn, cls.__name__, None) is cls:
        return cls.__name__
    return f"{cls.__module__}.{cls.__qualname__}"


ModuleType = Annotated[
    type[nn.Module],
    BeforeValidator(resolve_module_type),
    PlainSerializer(module_type_name, return_type=str),
    WithJsonSchema(
        {
            "type": "string",
            "description": "A module class: a torch.nn name (Conv2d) or a dotted path.",
        }
    ),
]


def selects(
    name: str,
    module: nn.Module | None,
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    module_types: tuple[type[nn.Module], ...],
) -> bool:
    """Whether the module ``name`` passes the include/exclude globs and the type filter."""
    if include and not any(fnmatch.fnmatchcase(name, p) for p in include):
        return False
    if any(fnmatch.fnmatchcase(name, p) for p in exclude):
        return False
    return not module_types or isinstance(module, module_types)
