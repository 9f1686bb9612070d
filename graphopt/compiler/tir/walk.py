"""Rebuilding lowered TIR statements: TVM 0.27 exposes no Python statement mutator, so the
lowering passes (:mod:`.lowering`, :mod:`.schedules.prefetch`) walk the statements that nest
others (sequences, loops, attributes, conditionals) with these two functions. Declarations,
stores and calls are flat in 0.27 (they nest nothing)."""

from __future__ import annotations


def children(stmt) -> list:
    """The statements ``stmt`` nests, in order."""
    from tvm import tirx

    if isinstance(stmt, tirx.SeqStmt):
        return list(stmt.seq)
    if isinstance(stmt, tirx.IfThenElse):
        return [s for s in (stmt.then_case, stmt.else_case) if s is not None]
    if isinstance(stmt, tirx.For | tirx.AttrStmt):
        return [stmt.body]
    return []


def with_children(stmt, new: list):
    """``stmt`` nesting ``new`` instead of :func:`children`; the same object when every child
    is the same object."""
    from tvm import tirx

    old = children(stmt)
    if all(a.same_as(b) for a, b in zip(new, old, strict=True)):
        return stmt
    if isinstance(stmt, tirx.SeqStmt):
        return tirx.SeqStmt(new, stmt.span)
    if isinstance(stmt, tirx.IfThenElse):
        other = new[1] if len(new) > 1 else None
        return tirx.IfThenElse(stmt.condition, new[0], other, stmt.span)
    if isinstance(stmt, tirx.AttrStmt):
        return tirx.AttrStmt(stmt.node, stmt.attr_key, stmt.value, new[0], stmt.span)
    fields = (stmt.thread_binding, stmt.annotations, stmt.step, stmt.span)
    return tirx.For(stmt.loop_var, stmt.min, stmt.extent, stmt.kind, new[0], *fields)
