"""Channel rules for torchvision's FX-wrapped functions (Swin Transformer)."""

from __future__ import annotations

from torch import fx

from graphopt.channels.rules import RuleContext, arange, register

try:  # torchvision is optional
    from torchvision.models import swin_transformer as _swin
except ImportError:  # pragma: no cover - exercised only without torchvision
    _swin = None


def shifted_window_attention_rule(ctx: RuleContext, node: fx.Node) -> None:
    """Swin attention: channel C of x ↔ qkv rows c, C+c, 2C+c and columns ↔ proj rows and
    columns ↔ output; heads (blocks of C/h) lose equally."""
    x = node.args[0]
    channels = ctx.shape(x)[-1]
    stream = ctx.value(x, -1)
    qkv_w, proj_w = ctx.arg(1, "qkv_weight"), ctx.arg(2, "proj_weight")
    ctx.link(stream, ctx.value(qkv_w, 1))
    for k in range(3):
        ctx.link(stream, ctx.value(qkv_w, 0), arange(channels), arange(channels) + k * channels)
        qkv_b = ctx.arg(9, "qkv_bias")
        if isinstance(qkv_b, fx.Node):
            ctx.link(stream, ctx.value(qkv_b, 0), arange(channels), arange(channels) + k * channels)
    ctx.link(stream, ctx.value(proj_w, 0))
    ctx.link(stream, ctx.value(proj_w, 1))
    proj_b = ctx.arg(10, "proj_bias")
    if isinstance(proj_b, fx.Node):
        ctx.link(stream, ctx.value(proj_b, 0))
    ctx.same_shape(x)
    ctx.require_blocks(stream, ctx.arg(5, "num_heads"), "Swin attention heads")


def patch_merging_pad_rule(ctx: RuleContext, node: fx.Node) -> None:
    """Swin patch merging: output channel k·C + c ↔ input channel c (k = 0…3)."""
    x = node.args[0]
    channels = ctx.shape(x)[-1]
    for axis in range(len(ctx.shape(x)) - 3):
        ctx.link(ctx.value(x, axis), ctx.out(axis))
    for k in range(4):
        ctx.link(ctx.value(x, -1), ctx.out(-1), arange(channels), arange(channels) + k * channels)


if _swin is not None:
    register(_swin.shifted_window_attention)(shifted_window_attention_rule)
    register(_swin._patch_merging_pad)(patch_merging_pad_rule)
