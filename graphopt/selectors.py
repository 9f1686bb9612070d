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
from dataclasses import dataclass
from dataclasses import field as dc_field
from importlib.metadata import entry_points
from typing import Annotated

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema
from torch import nn

# Packages whose modules a recipe's type names may import: graphopt's dependencies.
TRUSTED_PACKAGES = frozenset({"torch", "torchvision", "onnx2torch", "transformers"})
# Packages register the modules holding their layer types under this entry-point group
# (``my_layers = "mypkg.layers"``); reading the group imports nothing.
MODULE_TYPES_GROUP = "graphopt.module_types"
_RECIPE: ContextVar[_RecipeImports | None] = ContextVar("graphopt_recipe_imports", default=None)


@dataclass
class _RecipeImports:
    factories: frozenset[str]  # the modules of the recipe's own ``python:`` factories
    importing: bool = False  # False: those stand in as a placeholder, their names collected
    deferred: list[str] = dc_field(default_factory=list)


@contextmanager
def recipe_imports(factories: frozenset[str], *, importing: bool = False):
    """Resolve type names as a recipe may: from torch.nn, ``TRUSTED_PACKAGES``, the modules
    registered under :data:`MODULE_TYPES_GROUP`, modules already imported, and the modules of
    the recipe's own ``python:`` factories (code the recipe runs anyway). Any other module is
    refused, never imported. With ``importing=False`` the factories' modules are not imported
    either: their names stand in as a placeholder and are collected in the list this yields,
    so that the caller validates again, importing, once all else has passed."""
    state = _RecipeImports(factories, importing)
    token = _RECIPE.set(state)
    try:
        yield state.deferred
    finally:
        _RECIPE.reset(token)


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
    if not all(part.isidentifier() for part in value.split(".")):
        raise ValueError(f"{value!r} is not a dotted path")
    module_name, _, attr = value.rpartition(".")
    recipe = _RECIPE.get()
    if recipe is not None and not _known_module(module_name):
        if not _within(module_name, recipe.factories):
            raise ValueError(_unknown(value))
        if not recipe.importing:
            recipe.deferred.append(value)
            return _NotYetImported
    try:
        found = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot import module type {value!r}: {exc}") from exc
    return found


def _known_module(name: str) -> bool:
    """A module a recipe may name without anything new running but graphopt's dependencies
    and registered packages."""
    if name in sys.modules or name.partition(".")[0] in TRUSTED_PACKAGES:
        return True
    return _within(name, registered_type_modules())


def _within(name: str, modules: frozenset[str]) -> bool:
    return any(name == m or name.startswith(m + ".") for m in modules)


def registered_type_modules() -> frozenset[str]:
    """The modules packages registered under :data:`MODULE_TYPES_GROUP`."""
    return frozenset(ep.value.partition(":")[0] for ep in entry_points(group=MODULE_TYPES_GROUP))


def _unknown(value: str) -> str:
    return (
        f"{value!r} is not a known module type: a recipe names types of torch.nn, "
        f"{', '.join(sorted(TRUSTED_PACKAGES))}, modules already imported, its own python: "
        f"factories' modules, or modules registered under the {MODULE_TYPES_GROUP!r} entry "
        "point; graphopt does not import other modules a recipe names"
    )


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
            "description": "A module class: a torch.nn name (Conv2d) or a dotted path into "
            "torch, torchvision, onnx2torch, transformers, the recipe's python: factory "
            "modules or a package registered under the graphopt.module_types entry point.",
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
