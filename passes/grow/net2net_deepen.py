"""Net2NetDeepen: after layer → φ, insert an identity layer and φ again (φ idempotent)."""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import fx, nn

from graphopt.pass_base import Pass, PassContext, PassResult
from graphopt.report import Decline

ACTIVATION_MODULES = (nn.ReLU, nn.ReLU6)
ACTIVATION_FUNCTIONS = {F.relu: nn.ReLU, torch.relu: nn.ReLU, F.relu6: nn.ReLU6}


class Net2NetDeepen(Pass):
    """Layer [→ BN] → φ ⇒ … → φ → Identity(Conv k×k | Linear) [→ BN] → φ; exact as φ∘φ = φ.

    Net2DeeperNet (Chen, Goodfellow & Shlens 2015): after every selected Conv2d or Linear whose
    only user (through an optional BatchNorm) is a ReLU or ReLU6, insert a layer initialised to the identity (a centred
    identity kernel, 'same' padding; identity weights for Linear), optionally a BatchNorm in
    its identity state, and the same activation. Activations that are not idempotent (GELU,
    SiLU, LeakyReLU) would change the function and are declined.
    """

    name: ClassVar[str] = "net2net_deepen"
    exact: ClassVar[bool] = True

    kernel_size: Literal[1, 3, 5, 7] = Field(
        default=3, description="Kernel of inserted convolutions (odd: 'same' padding)."
    )
    batch_norm: bool = Field(default=True, description="Add an identity BatchNorm after convs.")

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        touched, declined = [], []
        for node in list(gm.graph.nodes):
            if node.op != "call_module":
                continue
            layer = gm.get_submodule(node.target)
            if type(layer) not in (nn.Conv2d, nn.Linear) or not self.selects(node.target, layer):
                continue
            activation, reason = _activation_after(gm, node)
            if reason is None and gm.training and self.batch_norm and type(layer) is nn.Conv2d:
                reason = "graph in training mode: a new BatchNorm would use batch statistics"
            if reason:
                declined.append(Decline(target=node.target, reason=reason))
                continue
            self._insert(gm, node, layer, activation)
            touched.append(node.target)
        gm.graph.lint()
        gm.recompile()
        return PassResult(gm, bool(touched), self.report(bool(touched), touched, declined))

    def _insert(self, gm: fx.GraphModule, node: fx.Node, layer: nn.Module, act: fx.Node) -> None:
        base = str(node.target).replace(".", "_") + "_deepen"
        modules = [_identity_like(layer, self.kernel_size)]
        if type(layer) is nn.Conv2d and self.batch_norm:
            modules.append(_identity_batch_norm(layer.out_channels))
        modules.append(_activation_module(gm, act))
        last = act
        for i, module in enumerate(modules):
            name = f"{base}_{i}"
            gm.add_submodule(name, module.train(gm.training))
            with gm.graph.inserting_after(last):
                last = gm.graph.call_module(name, (last,))
        first = next(n for n in act.users if n.target == f"{base}_0")
        act.replace_all_uses_with(last, delete_user_cb=lambda user: user is not first)


def _activation_after(gm, node: fx.Node) -> tuple[fx.Node | None, str | None]:
    """The activation ending ``node → [BatchNorm] → φ``, or why there is none."""
    users = list(node.users)
    while len(users) == 1 and _is_batch_norm(gm, users[0]):
        users = list(users[0].users)
    if len(users) != 1:
        return None, f"{len(users)} users; the identity goes after a layer → activation chain"
    act = users[0]
    if act.op == "call_module" and type(gm.get_submodule(act.target)) in ACTIVATION_MODULES:
        return act, None
    if act.op == "call_function" and act.target in ACTIVATION_FUNCTIONS:
        return act, None
    what = type(gm.get_submodule(act.target)).__name__ if act.op == "call_module" else act.target
    return None, f"followed by {getattr(what, '__name__', what)}, not an idempotent ReLU/ReLU6"


def _is_batch_norm(gm, node: fx.Node) -> bool:
    return node.op == "call_module" and isinstance(
        gm.get_submodule(node.target), nn.BatchNorm1d | nn.BatchNorm2d
    )


def _identity_like(layer: nn.Module, k: int) -> nn.Module:
    with torch.no_grad():
        if type(layer) is nn.Linear:
            new = nn.Linear(layer.out_features, layer.out_features)
            new.weight.copy_(torch.eye(layer.out_features))
            new.bias.zero_()
            return new
        c = layer.out_channels
        new = nn.Conv2d(c, c, k, padding=k // 2, bias=False)
        new.weight.zero_()
        new.weight[range(c), range(c), k // 2, k // 2] = 1.0
        return new


def _identity_batch_norm(channels: int) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(channels)
    with torch.no_grad():
        bn.running_var.fill_(1.0 - bn.eps)  # (x - 0) / sqrt(1 - eps + eps) = x
    return bn


def _activation_module(gm, act: fx.Node) -> nn.Module:
    if act.op == "call_module":
        return type(gm.get_submodule(act.target))()
    return ACTIVATION_FUNCTIONS[act.target]()
