"""Small helpers over the IR (a module-level ``torch.fx.GraphModule`` with shapes)."""

from __future__ import annotations

import operator

from torch import fx, nn

_INPLACE_OPERATORS = frozenset(
    {
        operator.iadd,
        operator.isub,
        operator.imul,
        operator.itruediv,
        operator.ifloordiv,
        operator.imod,
        operator.ipow,
        operator.iand,
        operator.ior,
        operator.ixor,
        operator.ilshift,
        operator.irshift,
        operator.imatmul,
        operator.setitem,
    }
)


def module_of(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    """The module a ``call_module`` node calls, else ``None``."""
    return gm.get_submodule(node.target) if node.op == "call_module" else None


def call_sites(gm: fx.GraphModule, target: str) -> list[fx.Node]:
    """Every ``call_module`` node calling the module ``target``."""
    return [n for n in gm.graph.nodes if n.op == "call_module" and n.target == target]


def mutates_input(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Whether ``node`` may write into one of its inputs or have another side effect.

    Conservative: in-place methods (``x.add_``), in-place operators, ``inplace=True``
    arguments, modules built with ``inplace=True``, and whatever torch.fx calls impure.
    """
    if node.is_impure():
        return True
    if node.kwargs.get("inplace") is True:
        return True
    if node.op == "call_method":
        return node.target.endswith("_") and not node.target.startswith("__")
    if node.op == "call_function":
        name = getattr(node.target, "__name__", "")
        return node.target in _INPLACE_OPERATORS or (
            name.endswith("_") and not name.startswith("__")
        )
    if node.op == "call_module":
        return getattr(gm.get_submodule(node.target), "inplace", False) is True
    return False
