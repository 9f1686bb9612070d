"""Parameter ties: one ``Parameter`` reached from several modules (two convolutions sharing a
weight, a language model's output head reusing the embedding matrix).

A pass that rewrote one user of a tied parameter would silently untie it: the model would
gain parameters the report does not count, and training it would update the copies apart.
Passes skip tied layers (``Pass.selects`` declines them, with the reason in the report) and
the pass manager checks after every pass that the ties are the ones it had before.
"""

from __future__ import annotations

from torch import fx


def parameter_ties(gm: fx.GraphModule) -> tuple[tuple[str, ...], ...]:
    """Groups (sorted) of qualified parameter names that are one tensor; only groups of two
    or more."""
    by_tensor: dict[int, list[str]] = {}
    for name, param in gm.named_parameters(remove_duplicate=False):
        by_tensor.setdefault(id(param), []).append(name)
    return tuple(sorted(tuple(sorted(names)) for names in by_tensor.values() if len(names) > 1))


def tied_modules(gm: fx.GraphModule) -> dict[str, str]:
    """Module name → why it is tied (``weight is also b.weight``), for every tied module."""
    reasons: dict[str, list[str]] = {}
    for group in parameter_ties(gm):
        for name in group:
            module, _, attr = name.rpartition(".")
            others = ", ".join(n for n in group if n != name)
            reasons.setdefault(module, []).append(f"{attr} is also {others}")
    return {module: "; ".join(why) for module, why in reasons.items()}


def tied_parameter_names(gm: fx.GraphModule) -> frozenset[str]:
    return frozenset(name for group in parameter_ties(gm) for name in group)
