"""The module pass every call-by-call rewrite of ours shares: visit each Relax function bottom
up and hand each call of one operator to a rewrite, with the block builder it may emit
bindings into (a Winograd convolution's three stages, a widened convolution before its crop)."""

from __future__ import annotations


def rewrite_calls(name: str, op_name: str, rewrite):
    """A module pass named ``name`` replacing each call of ``op_name`` (its arguments already
    rewritten) by ``rewrite(builder, call)``, or keeping it where that returns None."""
    import tvm
    from tvm import relax

    op = tvm.ir.Op.get(op_name)

    @relax.expr_functor.mutator
    class Rewrite(relax.PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            if not call.op.same_as(op):
                return call
            new = rewrite(self.builder_, call)
            return call if new is None else new

    @tvm.ir.transform.module_pass(opt_level=0, name=name)
    def run(mod, _ctx):
        mutator = Rewrite(mod)
        for gvar, func in mod.functions_items():
            if isinstance(func, relax.Function):
                mutator.builder_.update_func(gvar, mutator.visit_expr(func))
        return mutator.builder_.get()

    return run
