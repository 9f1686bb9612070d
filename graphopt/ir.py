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


def replace_with_chain(gm: fx.GraphModule, node: fx.Node, modules: list[nn.Module]) -> list[str]:
    """Replace the ``call_module`` ``node`` by calls of ``modules`` in sequence.

    The modules are registered as ``<name>.0``, ``<name>.1``, … under an ``nn.Sequential``
    that takes the old module's place, so qualified names stay readable. Returns their names.
    """
    name = str(node.target)
    gm.add_submodule(name, nn.Sequential(*modules))
    value, names = node.args[0], []
    anchor = node
    for index in range(len(modules)):
        names.append(f"{name}.{index}")
        with gm.graph.inserting_after(anchor):
            anchor = value = gm.graph.call_module(names[-1], (value,))
        anchor.meta["stack_trace"] = node.meta.get("stack_trace")
    if "tensor_meta" in node.meta:  # the chain computes what the layer did: same output shape
        value.meta["tensor_meta"] = node.meta["tensor_meta"]
    node.replace_all_uses_with(value)
    gm.graph.erase_node(node)
    return names
