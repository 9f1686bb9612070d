"""Depth shrink for Net2NetShrink: remove (near-)identity layers, fuse linear ∘ linear.

- ``Linear(W₂) ∘ Linear(W₁)`` ⇒ ``Linear(W₂W₁)``, ``Conv1×1(W₂) ∘ Conv k×k(W₁)`` ⇒
  ``Conv k×k(W₂W₁)`` when nothing nonlinear sits between them and the product costs fewer MACs.
- Identity-like layers go: a square Linear with W ≈ I and b ≈ 0, a Conv whose kernel is the
  centred identity (stride 1, 'same' padding), an eval BatchNorm that maps x to x, and an
  idempotent activation (ReLU, ReLU6) applied to its own output. These are what
  Net2NetDeepen inserts, so deepen ∘ shrink is the identity.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import fx, nn

from graphopt.ir import mutates_input
from graphopt.report import Decline

IDEMPOTENT_MODULES = (nn.ReLU, nn.ReLU6)
IDEMPOTENT_FUNCTIONS = (F.relu, torch.relu, F.relu6)


def shrink_depth(gm: fx.GraphModule, pass_, ctx):
    """Fold identities then fuse linear pairs; returns (gm, touched, notes, declined)."""
    touched, notes, declined = [], [], []
    for node in list(gm.graph.nodes):
        if node.op not in ("call_module", "call_function") or not _selected(gm, node, pass_):
            continue
        if _is_identity(gm, node, pass_.tolerance):
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
            touched.append(str(node.target) if node.op == "call_module" else node.name)
            notes.append(f"{touched[-1]}: identity removed")
    for node in list(gm.graph.nodes):
        fused, reason = _try_fuse(gm, node, pass_)
        if fused:
            touched.append(fused)
            notes.append(f"{fused}: fused with the linear map after it")
        elif reason:
            declined.append(Decline(target=str(node.target), reason=reason))
    gm.graph.eliminate_dead_code(is_impure_node=lambda n: mutates_input(gm, n))
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm, touched, notes, declined


def _selected(gm, node, pass_) -> bool:
    if node.op != "call_module":
        return True
    return pass_.selects(node.target, gm.get_submodule(node.target))


def _callee(gm, node):
    return gm.get_submodule(node.target) if node.op == "call_module" else node.target


def _is_identity(gm, node: fx.Node, tolerance: float) -> bool:
    callee = _callee(gm, node)
    if _idempotent(callee):
        source = node.args[0]
        return isinstance(source, fx.Node) and _same_activation(gm, source, callee)
    if isinstance(callee, nn.Linear) and callee.in_features == callee.out_features:
        eye = torch.eye(callee.in_features)
        return _close(callee.weight, eye, tolerance) and _zero(callee.bias, tolerance)
    if isinstance(callee, nn.Conv2d):
        return _identity_conv(callee, tolerance)
    if isinstance(callee, nn.BatchNorm2d | nn.BatchNorm1d) and not callee.training:
        if not callee.track_running_stats or callee.running_var is None:
            return False
        scale = (callee.weight if callee.affine else 1) / torch.sqrt(
            callee.running_var + callee.eps
        )
        shift = (callee.bias if callee.affine else 0) - callee.running_mean * scale
        return _close(scale, torch.ones_like(scale), tolerance) and _zero(shift, tolerance)
    return False


def _same_activation(gm, source: fx.Node, callee) -> bool:
    if source.op not in ("call_module", "call_function"):
        return False
    other = _callee(gm, source)
    kind = lambda c: "relu6" if c in (F.relu6,) or isinstance(c, nn.ReLU6) else "relu"  # noqa: E731
    return _idempotent(other) and kind(other) == kind(callee)


def _idempotent(callee) -> bool:
    if isinstance(callee, nn.Module):
        return isinstance(callee, IDEMPOTENT_MODULES)
    return callee in IDEMPOTENT_FUNCTIONS


def _identity_conv(conv: nn.Conv2d, tolerance: float) -> bool:
    k = conv.kernel_size
    if (
        conv.in_channels != conv.out_channels
        or conv.groups != 1
        or conv.stride != (1, 1)
        or conv.dilation != (1, 1)
        or conv.padding != (k[0] // 2, k[1] // 2)
        or k[0] % 2 == 0
        or k[1] % 2 == 0
    ):
        return False
    eye = torch.zeros_like(conv.weight)
    eye[range(conv.out_channels), range(conv.in_channels), k[0] // 2, k[1] // 2] = 1
    return _close(conv.weight, eye, tolerance) and _zero(conv.bias, tolerance)


def _close(a: torch.Tensor, b: torch.Tensor, tolerance: float) -> bool:
    return float((a.detach() - b).abs().max()) <= tolerance * max(1.0, float(b.abs().max()))


def _zero(t: torch.Tensor | None, tolerance: float) -> bool:
    return t is None or float(t.detach().abs().max()) <= tolerance


def _try_fuse(gm, first: fx.Node, pass_) -> tuple[str | None, str | None]:
    """Fuse ``first`` with its only user when both are linear maps; (fused name, decline)."""
    if first.op != "call_module" or len(first.users) != 1:
        return None, None
    second = next(iter(first.users))
    if second.op != "call_module" or second.args[0] is not first:
        return None, None
    a, b = gm.get_submodule(first.target), gm.get_submodule(second.target)
    if not (_selected(gm, first, pass_) and _selected(gm, second, pass_)):
        return None, None
    fused = _fused(a, b)
    if fused is None:
        return None, None
    if _macs(fused) >= _macs(a) + _macs(b):
        return None, f"fusing with {second.target} would not lower MACs"
    gm.add_submodule(first.target, fused)
    second.replace_all_uses_with(first)
    gm.graph.erase_node(second)
    return str(first.target), None


def _fused(a: nn.Module, b: nn.Module) -> nn.Module | None:
    with torch.no_grad():
        if type(a) is nn.Linear and type(b) is nn.Linear:
            fused = nn.Linear(a.in_features, b.out_features, bias=_any_bias(a, b))
            fused.weight.copy_(b.weight @ a.weight)
            if fused.bias is not None:
                fused.bias.copy_(_bias(a, b))
            return fused
        if type(a) is nn.Conv2d and type(b) is nn.Conv2d and _pointwise(b) and a.groups == 1:
            fused = nn.Conv2d(
                a.in_channels, b.out_channels, a.kernel_size, a.stride, a.padding, a.dilation,
                bias=_any_bias(a, b), padding_mode=a.padding_mode,
            )  # fmt: skip
            fused.weight.copy_(torch.einsum("om,mikl->oikl", b.weight[:, :, 0, 0], a.weight))
            if fused.bias is not None:
                fused.bias.copy_(_bias(a, b))
            return fused
    return None


def _pointwise(conv: nn.Conv2d) -> bool:
    return (
        conv.kernel_size == (1, 1)
        and conv.stride == (1, 1)
        and conv.padding == (0, 0)
        and conv.groups == 1
    )


def _any_bias(a, b) -> bool:
    return a.bias is not None or b.bias is not None


def _bias(a, b) -> torch.Tensor:
    w = b.weight.reshape(b.weight.shape[0], -1)
    inner = a.bias if a.bias is not None else torch.zeros(w.shape[1])
    return w @ inner + (b.bias if b.bias is not None else 0)


def _macs(m: nn.Module) -> int:
    """Weight elements stand in for MACs: both layers see the same positions (1×1 stride 1)."""
    return m.weight.numel()
