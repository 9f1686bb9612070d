"""Op handlers: one per op class, with everything graphopt knows of the op (channel coupling,
surgery, MACs and the budget factor). See :mod:`graphopt.ops.base`; a new op is one handler
in one of the family modules below."""

# Register the handler families (import for side effects).
from graphopt.ops import (  # noqa: E402, F401, I001
    attention,
    elementwise,
    layers,
    norms,
    products,
    shape,
    slicing,
)
from graphopt.ops.base import (
    UNKNOWN,
    MacTerm,
    OpHandler,
    all_handlers,
    handler_for,
    handles,
    lookup,
    module_of,
    op_key,
    op_name,
    tensor_inputs,
)
from graphopt.ops.context import CouplingContext, SurgeryContext
from graphopt.ops.dims import Dim, meta_items, output_dims

__all__ = [
    "UNKNOWN",
    "CouplingContext",
    "Dim",
    "MacTerm",
    "OpHandler",
    "SurgeryContext",
    "all_handlers",
    "handler_for",
    "handles",
    "lookup",
    "meta_items",
    "module_of",
    "op_key",
    "op_name",
    "output_dims",
    "tensor_inputs",
]
