"""One handler per op: everything graphopt knows of an op, looked up once along the MRO.

A handler answers four questions about a node of its op, and they must agree (a test
generates an instance of every handler's op and checks that they do):

- ``couple(ctx, node)``: which channel dims of inputs, parameters and output are the same
  channels (``ctx.link``), cannot shrink (``ctx.freeze``) or shrink in equal blocks;
- ``update(ctx, node)``: after channels were removed, fix what slicing the tensors did not
  (module attributes such as ``in_channels``, literal sizes in the node's arguments);
- ``mac_terms(node, module)``: the node's multiply-accumulates on its recorded shapes as a
  sum of terms, each with the dims whose sizes it is proportional to; the cost report sums
  the terms, the pruning budget scales each term by the kept fraction of its dims.

Handlers are keyed by ``nn.Module`` subclasses (found along the module type's MRO), torch
callables and tensor methods (``torch.Tensor.view``). A node whose op has no handler gets
:data:`UNKNOWN`, which freezes every dim the node touches and costs nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import fx, nn

from graphopt.ops.dims import Dim

if TYPE_CHECKING:
    from graphopt.ops.context import CouplingContext, SurgeryContext

Example = Callable[[], tuple[nn.Module, tuple[torch.Tensor, ...]]]
# MACs of one term and the dims whose sizes they are proportional to.
MacTerm = tuple[int, list[Dim]]


class OpHandler:
    """Defaults: no coupling (everything touched is frozen), no update, no MACs."""

    keys: ClassVar[tuple[object, ...]] = ()
    # Small models that use the op between prunable layers (the agreement test's instances).
    examples: ClassVar[tuple[Example, ...]] = ()

    @property
    def name(self) -> str:
        return type(self).__name__

    def couple(self, ctx: CouplingContext, node: fx.Node) -> None:
        reason = f"no channel rule for {op_name(op_key(ctx.gm, node))} (node {node.name})"
        for source in [*tensor_inputs(node), node]:
            ctx.freeze_value(source, reason)

    def update(self, ctx: SurgeryContext, node: fx.Node) -> None:
        """Nothing to fix beyond the sliced tensors."""

    def mac_terms(self, node: fx.Node, module: nn.Module | None) -> list[MacTerm]:
        return []

    def macs(self, node: fx.Node, module: nn.Module | None) -> int:
        return sum(macs for macs, _ in self.mac_terms(node, module))


UNKNOWN = OpHandler()
_HANDLERS: dict[object, OpHandler] = {}
_RESOLVED: dict[type, OpHandler] = {}  # module type -> handler found along its MRO


def handles(*keys: object) -> Callable[[type[OpHandler]], type[OpHandler]]:
    """Class decorator: register one instance of the handler under every key."""

    def decorate(cls: type[OpHandler]) -> type[OpHandler]:
        handler = cls()
        cls.keys = tuple(keys)
        for key in keys:
            if not (isinstance(key, type) and issubclass(key, nn.Module)) and not callable(key):
                raise TypeError(f"cannot key an op handler by {key!r}")
            _HANDLERS[key] = handler
        _RESOLVED.clear()
        return cls

    return decorate


def lookup(key: object) -> OpHandler:
    """The handler of a module type (nearest registered base class), callable or method."""
    if isinstance(key, type) and issubclass(key, nn.Module):
        if key not in _RESOLVED:
            found = (_HANDLERS[c] for c in key.__mro__ if c in _HANDLERS)
            _RESOLVED[key] = next(found, UNKNOWN)
        return _RESOLVED[key]
    try:
        return _HANDLERS.get(key, UNKNOWN)
    except TypeError:  # an unhashable target
        return UNKNOWN


def handler_for(gm: fx.GraphModule, node: fx.Node) -> OpHandler:
    """The handler of a ``call_*`` node (:data:`UNKNOWN` for other nodes)."""
    if not node.op.startswith("call_"):
        return UNKNOWN
    return lookup(op_key(gm, node))


def module_of(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    return gm.get_submodule(node.target) if node.op == "call_module" else None


def all_handlers() -> list[OpHandler]:
    """Every registered handler once, in registration order."""
    return list({id(h): h for h in _HANDLERS.values()}.values())


def op_key(gm: fx.GraphModule, node: fx.Node) -> object:
    """The object a node's handler is registered under (module type, callable or method)."""
    if node.op == "call_module":
        return type(gm.get_submodule(node.target))
    if node.op == "call_method":
        return getattr(torch.Tensor, node.target, node.target)
    return node.target


def op_name(key: object) -> str:
    """A readable name for a key: ``Conv2d``, ``torch.cumsum``, ``Tensor.view``, …"""
    name = getattr(key, "__name__", None) or str(key)
    if isinstance(key, type):
        return name
    for prefix, namespace in (
        ("torch.", torch),
        ("Tensor.", torch.Tensor),
        ("F.", torch.nn.functional),
    ):
        if getattr(namespace, name, None) is key:
            return prefix + name
    module = getattr(key, "__module__", None)
    return f"{module}.{name}" if module else name


def tensor_inputs(node: fx.Node) -> list[fx.Node]:
    """Every node argument of ``node`` (flattened through lists and dicts)."""
    found: list[fx.Node] = []
    fx.node.map_arg((node.args, node.kwargs), lambda n: found.append(n))
    return found
