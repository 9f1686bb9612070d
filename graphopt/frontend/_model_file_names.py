"""What a model file may name without trust: the allowlists behind :mod:`model_file`.

A file names functions and layer classes by qualified name; these resolve the names without
importing anything the user has not already trusted (torch, torchvision, onnx2torch)."""

from __future__ import annotations

import importlib
import math
import operator
from functools import cache
from typing import Any

import torch
from torch import fx, nn

from graphopt.errors import ModelFileError

TRUSTED_CLASS_PACKAGES = ("torch.nn.", "onnx2torch.")
WRAPPED_FUNCTION_PACKAGES = ("torchvision.", "onnx2torch.")
# fmt: off
_OPERATORS = frozenset({
    "add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "neg", "pos", "abs",
    "invert", "eq", "ne", "lt", "le", "gt", "ge", "and_", "or_", "xor", "lshift", "rshift",
    "getitem", "setitem", "not_", "truth", "contains", "iadd", "isub", "imul", "itruediv",
})
_TORCH_EXTRAS = frozenset({  # tensor factories (not overridable) and FX's assertion
    "arange", "zeros", "ones", "full", "empty", "eye", "tensor", "linspace", "logspace",
    "randn", "rand", "randint", "randperm", "zeros_like", "ones_like", "full_like",
    "empty_like", "rand_like", "randn_like", "scalar_tensor", "_assert",
    "finfo", "iinfo",  # dtype limits (masks: transformers writes torch.finfo(dtype).min)
})
# fmt: on
_NAMESPACES = {
    "torch": torch,
    "torch.functional": torch.functional,
    "torch.nn.functional": torch.nn.functional,
    "torch._C._nn": torch._C._nn,
    "torch._C._VariableFunctions": torch._C._VariableFunctions,
    "torch.linalg": torch.linalg,
    "torch.fft": torch.fft,
    "torch.special": torch.special,
}


@cache
def _overridable() -> frozenset:
    return frozenset(f for fs in torch.overrides.get_overridable_functions().values() for f in fs)


def resolve_function(name: str, trust: bool = False):
    """The callable a model file may name ``name``, or ``None``.

    Without ``trust``: tensor operations, tensor factories, arithmetic operators, ``math``,
    ``getattr``, and the functions torchvision and onnx2torch registered with ``torch.fx.wrap``
    (declared graph leaves, such as ``stochastic_depth``). With ``trust``: anything importable.
    """
    module_name, _, attr = name.rpartition(".")
    if module_name in ("_operator", "operator"):
        return getattr(operator, attr) if attr in _OPERATORS else None
    if module_name == "math":
        fn = getattr(math, attr, None)
        return fn if callable(fn) and not attr.startswith("_") else None
    if module_name in ("builtins", ""):
        return getattr if attr == "getattr" else None
    if (namespace := _NAMESPACES.get(module_name)) is not None and not attr.startswith("__"):
        fn = getattr(namespace, attr, None)
        safe = fn in _overridable() or (module_name == "torch" and attr in _TORCH_EXTRAS)
        if fn is not None and (safe or trust):
            return fn
        return None
    if trust or module_name.startswith(WRAPPED_FUNCTION_PACKAGES):
        return _wrapped_function(module_name, attr, trust)
    return None


def _wrapped_function(module_name: str, attr: str, trust: bool):
    from torch.fx._symbolic_trace import _wrapped_fns_to_patch

    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    fn = getattr(module, attr, None)
    if trust or (id(vars(module)), attr) in _wrapped_fns_to_patch:
        return fn if callable(fn) else None
    return None


def is_public_tensor_method(name: Any) -> bool:
    """A public ``torch.Tensor`` method (or ``__getitem__``, which FX records as a method)."""
    allowed = public_name(name) or name == "__getitem__"
    return allowed and callable(getattr(torch.Tensor, name, None))


def public_name(name: Any) -> bool:
    return isinstance(name, str) and name.isidentifier() and not name.startswith("_")


def module_class(qualified: Any, trust: bool, where: str) -> type[nn.Module]:
    qualified = str(qualified)
    if not (trust or qualified.startswith(TRUSTED_CLASS_PACKAGES)):
        raise ModelFileError(
            f"module {where} is a {qualified}, outside torch.nn and onnx2torch; loading it "
            "imports that class's package (runs its code): pass trust=True if you trust it"
        )
    module_name, _, attr = qualified.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ModelFileError(f"module {where}: class {qualified} not found: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)) or issubclass(
        cls, fx.GraphModule
    ):
        raise ModelFileError(f"module {where}: {qualified} is not a layer class")
    return cls
