"""Model files that stay data: a GraphModule saved as graph + layers + tensors, never as a pickle.

``torch.save(graph_module)`` pickles it, and unpickling a GraphModule runs Python (its code is
``exec``'d, and any pickle can name any callable). A file someone sends you must not do that.
``save_model`` writes instead a ``torch.save`` archive of plain data that
``torch.load(weights_only=True)`` reads without running anything:

- the graph as a node list; each ``call_function`` target by qualified name, resolved on load
  against an allowlist (tensor operations ``torch.overrides`` knows, tensor factories, Python's
  arithmetic operators, ``math``, attribute reads of public names), never imported freely;
- every layer as its class (``torch.nn`` and onnx2torch classes; others only with ``trust``),
  its plain attributes (numbers, strings, tuples, dtypes) and its children;
- parameters and buffers as tensors.

A legacy pickled file (a previous ``model.pt``) is refused unless ``trust=True``, which says
that the caller trusts the file's author with running code on this machine.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from torch import fx, nn
from torch.fx.node import _get_qualified_name

from graphopt.errors import ModelFileError
from graphopt.frontend._model_file_names import (
    is_public_tensor_method,
    module_class,
    public_name,
    resolve_function,
)

FORMAT = "graphopt-graph/1"
_MODULE_SLOTS = frozenset(nn.Module().__dict__)
_HOOK_SLOTS = tuple(k for k in _MODULE_SLOTS if "hook" in k)


# ---------------------------------------------------------------------------------- saving
def save_model(gm: fx.GraphModule, path: str | Path) -> Path:
    """Write ``gm`` as data (see the module docstring); ``load_model`` reads it back."""
    tensors = _TensorStore()
    document = {
        "format": FORMAT,
        "class_name": type(gm).__name__,
        "training": gm.training,
        "graph": [_encode_node(n) for n in gm.graph.nodes],
        "root": _encode_module(gm, "", tensors, is_root=True),
        "tensors": tensors.by_key,
    }
    path = Path(path)
    torch.save(document, path)
    return path


def _encode_node(node: fx.Node) -> dict[str, Any]:
    target = node.target
    if node.op == "call_function" and (target := _function_name(node.target)) is None:
        raise ModelFileError(
            f"node {node.name}: {node.target!r} has no name that imports back as the same function"
        )
    return {
        "op": node.op,
        "name": node.name,
        "target": target,
        "args": _encode(node.args, node.name),
        "kwargs": _encode(node.kwargs, node.name),
        "stack_trace": node.meta.get("stack_trace"),
    }


def _function_name(fn: Any) -> str | None:
    """The qualified name ``fn`` is saved under, if importing that name gives ``fn`` back."""
    try:
        name = _get_qualified_name(fn)
    except Exception:  # noqa: BLE001 - any failure means "not nameable"
        return None
    return name if resolve_function(name, trust=True) is fn else None


def _encode(value: Any, where: str) -> Any:
    """Plain data, with tuples, slices, nodes, dtypes and callables tagged."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, fx.Node):
        return {"node": value.name}
    if isinstance(value, list):
        return [_encode(v, where) for v in value]
    if isinstance(value, tuple):  # torch.Size included
        return {"tuple": [_encode(v, where) for v in value]}
    if isinstance(value, dict):
        return {"dict": [[_encode(k, where), _encode(v, where)] for k, v in value.items()]}
    if isinstance(value, slice):
        return {"slice": [_encode(v, where) for v in (value.start, value.stop, value.step)]}
    if value is Ellipsis:
        return {"ellipsis": None}
    if isinstance(value, torch.dtype | torch.device | torch.memory_format | torch.layout):
        return {type(value).__name__: str(value).removeprefix("torch.")}
    nameable = callable(value) and not isinstance(value, nn.Module)
    if nameable and (name := _function_name(value)) is not None:
        return {"function": name}
    raise ModelFileError(f"{where}: cannot save a value of type {type(value).__name__} as data")


def _encode_module(
    module: nn.Module, prefix: str, tensors: _TensorStore, is_root: bool = False
) -> dict:
    if hooks := [k for k in _HOOK_SLOTS if getattr(module, k, None)]:
        raise ModelFileError(
            f"module {prefix or '<root>'}: has hooks ({', '.join(hooks)}), "
            "which are code and cannot be saved as data"
        )
    cls = type(module)
    spec: dict[str, Any] = {
        "class": "" if is_root else f"{cls.__module__}.{cls.__qualname__}",
        "training": module.training,
        "attrs": {} if is_root else _plain_attrs(module, prefix),
        "parameters": {},
        "buffers": {},
        "children": {},
    }
    for name, param in module._parameters.items():
        key = tensors.add(prefix, name, param)
        spec["parameters"][name] = None if param is None else [key, param.requires_grad]
    for name, buffer in module._buffers.items():
        key = tensors.add(prefix, name, buffer)
        spec["buffers"][name] = [key, name not in module._non_persistent_buffers_set]
    for name, child in module._modules.items():
        child_prefix = f"{prefix}.{name}" if prefix else name
        spec["children"][name] = (
            None if child is None else _encode_module(child, child_prefix, tensors)
        )
    if is_root:  # plain tensors set as attributes (get_attr constants), not registered
        for name, value in vars(module).items():
            if isinstance(value, torch.Tensor) and name not in _MODULE_SLOTS:
                spec["attrs"][name] = {"tensor": tensors.add(prefix, name, value)}
    return spec


def _plain_attrs(module: nn.Module, prefix: str) -> dict[str, Any]:
    attrs = {}
    for name, value in vars(module).items():
        if name in _MODULE_SLOTS:
            continue
        try:
            attrs[name] = _encode(value, f"module {prefix}.{name}")
        except ModelFileError as exc:
            raise ModelFileError(
                f"module {prefix} ({type(module).__name__}): attribute {name!r} is not plain "
                f"data ({type(value).__name__})"
            ) from exc
    return attrs


class _TensorStore:
    """The file's tensors by key, each stored once: a tensor shared by several modules (a tied
    weight) keeps the key of its first user, and loading gives every user the same Parameter."""

    def __init__(self) -> None:
        self.by_key: dict[str, torch.Tensor] = {}
        self._keys: dict[tuple, str] = {}  # (storage, shape, stride, dtype) → key

    def add(self, prefix: str, name: str, value: torch.Tensor | None) -> str | None:
        if value is None:
            return None
        identity = (value.data_ptr(), tuple(value.shape), value.stride(), value.dtype)
        if identity not in self._keys:
            key = f"{prefix}.{name}" if prefix else name
            self.by_key[key] = value.detach()
            self._keys[identity] = key
        return self._keys[identity]


# --------------------------------------------------------------------------------- loading
def load_model(path: str | Path, *, trust: bool = False) -> fx.GraphModule:
    """Read a model file written by ``save_model`` without running code from it.

    ``trust=True`` also accepts a pickled GraphModule (``torch.save(gm)``, graphopt's format
    before this one) and layers of classes outside ``torch.nn``/onnx2torch: both run code
    named by the file, so use it only for files you made or whose author you trust.
    """
    path = Path(path)
    try:
        document = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if trust:
            return _load_pickled(path)
        raise ModelFileError(
            f"{path}: not readable as data ({_unpickler_reason(exc)}); if it is a pickled model "
            "(torch.save(model), or graphopt before model files) it would run code named in "
            "the file when loaded: re-save it with graphopt.save_model, or load it deliberately "
            "with trust=True (CLI: --trust-model-file; recipe: trust: true) if you trust its author"
        ) from exc
    except (OSError, RuntimeError, EOFError, ValueError) as exc:
        raise ModelFileError(f"{path}: cannot read as a model file: {exc}") from exc
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ModelFileError(
            f"{path}: not a graphopt model file (expected format {FORMAT!r}; a state dict "
            "needs its model's code: use a python: model source and load the weights there)"
        )
    try:
        return _rebuild(document, trust)
    except ModelFileError as exc:
        raise ModelFileError(f"{path}: {exc}") from exc
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise ModelFileError(f"{path}: malformed model file: {type(exc).__name__}: {exc}") from exc


def _unpickler_reason(exc: Exception) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines()]
    return next((ln for ln in lines if ln.startswith("Unsupported")), "unsupported pickle")


def _load_pickled(path: Path) -> fx.GraphModule:
    try:
        model = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - anything a broken pickle raises
        raise ModelFileError(f"{path}: cannot read: {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise ModelFileError(f"{path}: holds a {type(model).__name__}, not a model")
    return model


def _rebuild(document: dict, trust: bool) -> fx.GraphModule:
    tensors = document["tensors"]
    root = _decode_module(document["root"], tensors, trust, "<root>", {})
    graph = fx.Graph()
    nodes: dict[str, fx.Node] = {}
    for entry in document["graph"]:
        node = _decode_node(entry, nodes, graph, trust)
        nodes[node.name] = node
    graph.lint()
    class_name = str(document["class_name"])
    if not class_name.isidentifier():
        raise ModelFileError(f"class name {class_name!r} is not an identifier")
    gm = fx.GraphModule(root, graph, class_name)
    gm.train(bool(document["training"]))
    for node in graph.nodes:
        if node.op == "get_attr" and not isinstance(_attribute(gm, node.target), torch.Tensor):
            raise ModelFileError(f"node {node.name}: get_attr {node.target!r} is not a tensor")
        if node.op == "call_module" and not isinstance(_attribute(gm, node.target), nn.Module):
            raise ModelFileError(f"node {node.name}: call_module {node.target!r} is not a layer")
    return gm


def _attribute(gm: fx.GraphModule, target: str) -> Any:
    value: Any = gm
    for part in target.split("."):
        value = getattr(value, part, None)
    return value


def _decode_node(entry: dict, nodes: dict, graph: fx.Graph, trust: bool) -> fx.Node:
    op, name, target = entry["op"], str(entry["name"]), entry["target"]
    args = _decode(entry["args"], nodes, trust)
    kwargs = _decode(entry["kwargs"], nodes, trust)
    if op == "call_function":
        target = _checked_function(target, args, name, trust)
    elif op == "call_method" and not is_public_tensor_method(target):
        raise ModelFileError(f"node {name}: method {target!r} is not a tensor method")
    elif op not in ("placeholder", "get_attr", "call_module", "call_method", "output"):
        raise ModelFileError(f"node {name}: unknown op {op!r}")
    if not isinstance(target, str) and op != "call_function":
        raise ModelFileError(f"node {name}: target must be a string")
    if not isinstance(args, tuple) or not isinstance(kwargs, dict):
        raise ModelFileError(f"node {name}: args must be a tuple and kwargs a mapping")
    node = graph.create_node(op, target, args, kwargs, name=name)
    if node.name != name:
        raise ModelFileError(f"node name {name!r} is not valid or is used twice")
    if isinstance(entry.get("stack_trace"), str):
        node.meta["stack_trace"] = entry["stack_trace"]
    return node


def _checked_function(name: Any, args: tuple, node: str, trust: bool):
    fn = resolve_function(name, trust) if isinstance(name, str) else None
    if fn is None:
        raise ModelFileError(
            f"node {node}: {name!r} is not an operation a model file may name without trust "
            "(tensor ops, arithmetic, math, fx-wrapped torchvision/onnx2torch functions); "
            "pass trust=True if you trust the file's author"
        )
    if fn is getattr and (len(args) != 2 or not public_name(args[1])):
        raise ModelFileError(f"node {node}: getattr may only read public attribute names")
    return fn


def _decode(value: Any, nodes: dict, trust: bool = False) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list):
        return [_decode(v, nodes, trust) for v in value]
    if not isinstance(value, dict) or len(value) != 1:
        raise ModelFileError(f"unexpected value {type(value).__name__} in the graph")
    ((tag, body),) = value.items()
    if tag == "node":
        if body not in nodes:
            raise ModelFileError(f"node {body!r} used before it is defined")
        return nodes[body]
    if tag == "tuple":
        return tuple(_decode(v, nodes, trust) for v in body)
    if tag == "dict":
        return {_decode(k, nodes, trust): _decode(v, nodes, trust) for k, v in body}
    if tag == "slice":
        return slice(*(_decode(v, nodes, trust) for v in body))
    if tag == "ellipsis":
        return Ellipsis
    if tag in ("dtype", "memory_format", "layout"):
        found = getattr(torch, str(body), None)
        if type(found).__name__ != tag:
            raise ModelFileError(f"unknown torch.{tag} {body!r}")
        return found
    if tag == "device":
        return torch.device(str(body))
    if tag == "function":
        if (fn := resolve_function(str(body), trust)) is None:
            raise ModelFileError(f"{body!r} is not an allowed function")
        return fn
    raise ModelFileError(f"unknown value tag {tag!r}")


def _decode_module(spec: dict, tensors: dict, trust: bool, where: str, shared: dict) -> nn.Module:
    cls = nn.Module if not spec["class"] else module_class(spec["class"], trust, where)
    module = cls.__new__(cls)
    nn.Module.__init__(module)
    for name, value in spec["attrs"].items():
        if not isinstance(name, str) or name in _MODULE_SLOTS or name.startswith("__"):
            raise ModelFileError(f"module {where}: attribute {name!r} may not be set")
        tagged = isinstance(value, dict) and set(value) == {"tensor"}
        module.__dict__[name] = (
            _tensor(tensors, value["tensor"]) if tagged else _decode(value, {}, trust)
        )
    for name, entry in spec["parameters"].items():
        if entry is None:
            module._parameters[name] = None
            continue
        if entry[0] not in shared:  # one Parameter per stored tensor: ties come back
            shared[entry[0]] = nn.Parameter(_tensor(tensors, entry[0]), bool(entry[1]))
        module._parameters[name] = shared[entry[0]]
    for name, (key, persistent) in spec["buffers"].items():
        module._buffers[name] = _tensor(tensors, key) if key is not None else None
        if not persistent:
            module._non_persistent_buffers_set.add(name)
    for name, child in spec["children"].items():
        module._modules[name] = (
            None
            if child is None
            else _decode_module(
                child, tensors, trust, f"{where}.{name}" if where != "<root>" else name, shared
            )
        )
    module.training = bool(spec["training"])
    return module


def _tensor(tensors: dict, key: Any) -> torch.Tensor:
    value = tensors.get(key) if isinstance(key, str) else None
    if not isinstance(value, torch.Tensor):
        raise ModelFileError(f"tensor {key!r} is missing from the file")
    return value
