"""The module pass every call-by-call rewrite of ours shares: visit each Relax function bottom
up and hand each call of the operators it names to a rewrite, with the block builder it may
emit bindings into (a Winograd convolution's three stages, a widened convolution before its
crop) and look earlier bindings up in (a reshape moved past its consumers)."""

from __future__ import annotations


def rewrite_calls(name: str, op_names: str | tuple[str, ...], rewrite):
    """A module pass named ``name`` replacing each call of ``op_names`` (one operator's name or
    several; the call's arguments already rewritten) by ``rewrite(builder, call)``, or keeping
    it where that returns None."""
    import tvm
    from tvm import relax

    ops = [tvm.ir.Op.get(n) for n in ((op_names,) if isinstance(op_names, str) else op_names)]

    @relax.expr_functor.mutator
    class Rewrite(relax.PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            if not any(call.op.same_as(op) for op in ops):
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
