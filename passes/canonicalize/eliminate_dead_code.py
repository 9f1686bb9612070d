"""EliminateDeadCode: drop nodes nobody uses and submodules nothing calls. Exact."""

from __future__ import annotations

from typing import ClassVar

from torch import fx

from graphopt.ir import module_of, mutates_input
from graphopt.pass_base import Pass, PassContext, PassResult


class EliminateDeadCode(Pass):
    """unused(x) ⇒ ∅: remove nodes whose value no one reads, then unused submodules.

    Nodes that may write into their inputs (in-place ops, ``inplace=True`` modules) are
    kept even when their result is unused: removing them would change the function.
    """

    name: ClassVar[str] = "eliminate_dead_code"
    exact: ClassVar[bool] = True

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        nodes_before = [n.name for n in gm.graph.nodes]
        modules_before = {name for name, _ in gm.named_modules()}
        gm.graph.eliminate_dead_code(is_impure_node=lambda n: self._keep(gm, n))
        gm.delete_all_unused_submodules()
        remaining = {n.name for n in gm.graph.nodes}
        removed = [name for name in nodes_before if name not in remaining]
        modules = sorted(modules_before - {name for name, _ in gm.named_modules()})
        notes = [f"removed unused submodules: {modules}"] if modules else []
        modified = bool(removed or modules)
        if modified:
            gm.recompile()
        return PassResult(gm, modified, self.report(modified, removed, notes=notes))

    def _keep(self, gm: fx.GraphModule, node: fx.Node) -> bool:
        """Kept even if unused: side effects, or not selected by include/exclude/types."""
        name = str(node.target) if node.op == "call_module" else node.name
        return mutates_input(gm, node) or not self.selects(name, module_of(gm, node))
