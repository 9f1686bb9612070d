"""Handlers for attention: nn.MultiheadAttention, F.scaled_dot_product_attention and the
FX-wrapped functions of torchvision's Swin Transformer."""

from __future__ import annotations

import torch.nn.functional as F
from torch import fx, nn

from graphopt.analysis.shapes import shape_of
from graphopt.ops import examples as ex
from graphopt.ops.base import MacTerm, OpHandler, handles
from graphopt.ops.context import CouplingContext, SurgeryContext
from graphopt.ops.dims import Dim, arange, node_arg, numel, output_dims, value_dim


def _embed_links(ctx: CouplingContext, stream, weight_rows, embed: int, copies: int) -> None:
    """Stream channel e ↔ rows e, E+e, 2E+e… of a stacked projection weight."""
    for k in range(copies):
        ctx.link(stream, weight_rows, arange(embed), arange(embed) + k * embed)


class _SelfAttention(nn.Module):
    def __init__(self, embed: int, heads: int) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(embed, heads, batch_first=True)

    def forward(self, x):
        return self.attention(x, x, x, need_weights=False)[0]


@handles(nn.MultiheadAttention)
class MultiheadAttention(OpHandler):
    """The embedding dim E of q, k, v, in_proj (rows e, E+e, 2E+e; columns) and out_proj, as in
    DepGraph; each head (a block of E/h) must lose the same number of channels."""

    examples = (lambda: ex.tokens(_SelfAttention(8, 2)),)

    def couple(self, ctx: CouplingContext, node: fx.Node) -> None:
        m = ctx.module
        if not m._qkv_same_embed_dim:
            ctx.freeze_value(node, f"{node.target}: separate q/k/v projections are not supported")
            return
        query, key, value = (ctx.arg(i, n) for i, n in ((0, "query"), (1, "key"), (2, "value")))
        stream = ctx.value(query, -1)
        for source in (key, value):
            ctx.link(stream, ctx.value(source, -1))
        ctx.link(stream, ctx.param("in_proj_weight", 1))
        _embed_links(ctx, stream, ctx.param("in_proj_weight", 0), m.embed_dim, 3)
        if m.in_proj_bias is not None:
            _embed_links(ctx, stream, ctx.param("in_proj_bias", 0), m.embed_dim, 3)
        ctx.link(stream, ctx.param("out_proj.weight", 0))
        ctx.link(stream, ctx.param("out_proj.weight", 1))
        ctx.link(stream, ctx.param("out_proj.bias", 0))
        ctx.link(stream, ctx.out(-1, item=0))
        for axis in range(len(ctx.shape(query)) - 1):
            ctx.link(ctx.value(query, axis), ctx.out(axis, item=0))
        ctx.require_blocks(stream, m.num_heads, f"attention heads of {node.target}")

    def update(self, ctx: SurgeryContext, node: fx.Node) -> None:
        m = ctx.module(node)
        embed = m.in_proj_weight.shape[1]
        m.embed_dim = m.kdim = m.vdim = embed
        m.head_dim = embed // m.num_heads
        m.out_proj.in_features = m.out_proj.out_features = embed

    def mac_terms(self, node: fx.Node, module: nn.Module | None) -> list[MacTerm]:
        """Projections of q, k, v (E columns each), q·kᵀ and attention·v, the out projection."""
        query, key, value = (
            node_arg(node, i, n) for i, n in ((0, "query"), (1, "key"), (2, "value"))
        )
        q, k = shape_of(query), shape_of(key)
        if q is None or k is None:
            return []
        seq_axis = (1 if module.batch_first else 0) if len(k) == 3 else 0
        weight_in = Dim("param", f"{node.target}.in_proj_weight", 1)
        out_in = Dim("param", f"{node.target}.out_proj.weight", 1)
        out = [d for d in output_dims(node) if d.item == 0]
        key_length = value_dim(key, seq_axis)
        e = module.embed_dim
        return [
            (numel(query) * e, [*output_dims(query), weight_in]),
            (numel(key) * e, [*output_dims(key), weight_in]),
            (numel(value) * e, [*output_dims(value), weight_in]),
            (2 * numel(query) * k[seq_axis], [*output_dims(query), key_length]),
            (numel(query) * e, [*out, out_in]),
        ]


@handles(F.scaled_dot_product_attention)
class ScaledDotProductAttention(OpHandler):
    """softmax(q kᵀ) v: q.E ↔ k.E; k.S ↔ v.S; out.L ↔ q.L; out.Ev ↔ v.Ev; batch/head axes."""

    examples = (
        lambda: ex.tokens(
            lambda x: F.scaled_dot_product_attention(
                x.unsqueeze(1), x.unsqueeze(1), x.unsqueeze(1)
            )[:, 0]
        ),
    )

    def couple(self, ctx: CouplingContext, node: fx.Node) -> None:
        q, k, v = (ctx.arg(i, n) for i, n in ((0, "query"), (1, "key"), (2, "value")))
        ctx.link(ctx.value(q, -1), ctx.value(k, -1))
        ctx.link(ctx.value(k, -2), ctx.value(v, -2))
        ctx.link(ctx.value(q, -2), ctx.out(-2))
        ctx.link(ctx.value(v, -1), ctx.out(-1))
        for axis in range(len(ctx.shape(q)) - 2):
            for source in (q, k, v):
                ctx.link(ctx.value(source, axis), ctx.out(axis))
        mask = ctx.arg(3, "attn_mask")
        if isinstance(mask, fx.Node):
            ctx.freeze_value(mask, "attention mask")

    def mac_terms(self, node: fx.Node, module: nn.Module | None) -> list[MacTerm]:
        """q·kᵀ (per query element, S keys) and attention·v (per output element, S values)."""
        query, key = node_arg(node, 0, "query"), node_arg(node, 1, "key")
        k = shape_of(key)
        if k is None or shape_of(query) is None:
            return []
        length = value_dim(key, len(k) - 2)
        return [
            (numel(query) * k[-2], [*output_dims(query), length]),
            (numel(node) * k[-2], [*output_dims(node), length]),
        ]


try:  # torchvision is optional
    from torchvision.models import swin_transformer as _swin
except ImportError:  # pragma: no cover - exercised only without torchvision
    _swin = None


def _swin_attention_example():
    """(2, 4, 8) tokens as a 2×2 window of 8 channels, two heads, shifted by one."""
    block = _swin.ShiftedWindowAttention(8, [2, 2], [1, 1], num_heads=2)
    body = nn.Sequential(
        ex.Lambda(lambda x: x.reshape(2, 2, 2, 8)), block, ex.Lambda(lambda x: x.reshape(2, 4, 8))
    )
    return ex.tokens(body, length=4)


def _patch_merging_example():
    body = ex.Lambda(lambda x: _swin._patch_merging_pad(x.reshape(2, 2, 2, 8)).flatten(1, 2))
    return ex.tokens(body, length=4)


if _swin is not None:

    @handles(_swin.shifted_window_attention)
    class ShiftedWindowAttention(OpHandler):
        """Swin attention: channel C of x ↔ qkv rows c, C+c, 2C+c and columns ↔ proj rows and
        columns ↔ output; heads (blocks of C/h) lose equally."""

        examples = (_swin_attention_example,)

        def couple(self, ctx: CouplingContext, node: fx.Node) -> None:
            x = node.args[0]
            channels = ctx.shape(x)[-1]
            stream = ctx.value(x, -1)
            qkv_w, proj_w = ctx.arg(1, "qkv_weight"), ctx.arg(2, "proj_weight")
            ctx.link(stream, ctx.value(qkv_w, 1))
            qkv_b = ctx.arg(9, "qkv_bias")
            for k in range(3):
                rows = arange(channels) + k * channels
                ctx.link(stream, ctx.value(qkv_w, 0), arange(channels), rows)
                if isinstance(qkv_b, fx.Node):
                    ctx.link(stream, ctx.value(qkv_b, 0), arange(channels), rows)
            ctx.link(stream, ctx.value(proj_w, 0))
            ctx.link(stream, ctx.value(proj_w, 1))
            proj_b = ctx.arg(10, "proj_bias")
            if isinstance(proj_b, fx.Node):
                ctx.link(stream, ctx.value(proj_b, 0))
            ctx.same_shape(x)
            ctx.require_blocks(stream, ctx.arg(5, "num_heads"), "Swin attention heads")

    @handles(_swin._patch_merging_pad)
    class PatchMergingPad(OpHandler):
        """Swin patch merging: output channel k·C + c ↔ input channel c (k = 0…3)."""

        examples = (_patch_merging_example,)

        def couple(self, ctx: CouplingContext, node: fx.Node) -> None:
            x = node.args[0]
            channels = ctx.shape(x)[-1]
            for axis in range(len(ctx.shape(x)) - 3):
                ctx.link(ctx.value(x, axis), ctx.out(axis))
            for k in range(4):
                ctx.link(
                    ctx.value(x, -1), ctx.out(-1), arange(channels), arange(channels) + k * channels
                )
