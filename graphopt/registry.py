"""The pass registry: keyed by class; names exist only to read and write recipes.

Built-in passes and plugins register the same way: through the ``graphopt.passes``
entry-point group (``name = "package.module:PassClass"``), loaded on first use.
"""

from __future__ import annotations

import difflib
import inspect
import re
import warnings
from importlib.metadata import entry_points

from graphopt.errors import RegistryError
from graphopt.pass_base import Pass

ENTRY_POINT_GROUP = "graphopt.passes"
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class PassRegistry:
    """Pass classes by class and by name; two classes may never share a name."""

    def __init__(self) -> None:
        self._by_name: dict[str, type[Pass]] = {}
        self._loaded = False
        self.load_errors: dict[str, str] = {}

    def register(self, cls: type[Pass]) -> type[Pass]:
        """Add ``cls``; usable as a decorator. Validates what the pass declares."""
        _validate_pass_class(cls)
        existing = self._by_name.get(cls.name)
        if existing is not None and existing is not cls:
            raise RegistryError(
                f"pass name {cls.name!r} is claimed by both {_qualname(existing)} "
                f"and {_qualname(cls)}"
            )
        self._by_name[cls.name] = cls
        return cls

    def unregister(self, cls: type[Pass]) -> None:
        """Remove ``cls`` (for tests and for plugins that replace themselves)."""
        if self._by_name.get(cls.name) is cls:
            del self._by_name[cls.name]

    def load_entry_points(self, *, force: bool = False) -> None:
        """Import every pass advertised in the ``graphopt.passes`` entry-point group."""
        if self._loaded and not force:
            return
        self._loaded = True
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            try:
                cls = ep.load()
            except Exception as exc:  # noqa: BLE001 - a broken plugin must not hide the others
                self.load_errors[ep.name] = f"{ep.value}: {type(exc).__name__}: {exc}"
                warnings.warn(f"graphopt plugin {ep.name!r} failed to load: {exc}", stacklevel=2)
                continue
            if getattr(cls, "name", None) != ep.name:
                raise RegistryError(
                    f"entry point {ep.name!r} = {ep.value} names a pass called "
                    f"{getattr(cls, 'name', None)!r}; the two names must agree"
                )
            self.register(cls)

    def resolve(self, name: str) -> type[Pass]:
        """The class registered as ``name``; an unknown name lists the close ones."""
        self.load_entry_points()
        if name in self._by_name:
            return self._by_name[name]
        if name in self.load_errors:
            raise RegistryError(f"pass {name!r} failed to load: {self.load_errors[name]}")
        close = difflib.get_close_matches(name, self._by_name, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise RegistryError(
            f"unknown pass {name!r}{hint} (registered: {', '.join(sorted(self._by_name))})"
        )

    def passes(self) -> tuple[type[Pass], ...]:
        """Every registered pass class, sorted by name."""
        self.load_entry_points()
        return tuple(self._by_name[n] for n in sorted(self._by_name))


def _validate_pass_class(cls: object) -> None:
    if not (isinstance(cls, type) and issubclass(cls, Pass)):
        raise RegistryError(f"{cls!r} is not a subclass of graphopt.Pass")
    if inspect.isabstract(cls):
        raise RegistryError(f"{_qualname(cls)} is abstract: implement run()")
    name = cls.__dict__.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise RegistryError(f"{_qualname(cls)} must declare name: ClassVar[str] in snake_case")
    if not isinstance(getattr(cls, "exact", None), bool):
        raise RegistryError(f"{_qualname(cls)} must declare exact: ClassVar[bool]")
    if not (cls.__doc__ or "").strip():
        raise RegistryError(f"{_qualname(cls)} needs a docstring stating its rewrite")


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


REGISTRY = PassRegistry()
register_pass = REGISTRY.register
