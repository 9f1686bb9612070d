"""Channel rules for layers with parameters: conv, linear, norms, attention."""

from __future__ import annotations

import numpy as np
import torch.nn.functional as F
from torch import fx, nn

from graphopt.channels.rules import RuleContext, arange, register

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_T = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def _batch_axes_identity(ctx: RuleContext, source: fx.Node, upto: int) -> None:
    for axis in range(upto):
        ctx.link(ctx.value(source, axis), ctx.out(axis))


@register(*_CONV)
def conv_rule(ctx: RuleContext, node: fx.Node) -> None:
    """out[:, o] ↔ W[o] ↔ b[o]; in[:, c] ↔ W[:, c mod (C/g)]; depthwise: in c ↔ out c·m…c·m+m−1."""
    m, x = ctx.module, node.args[0]
    _batch_axes_identity(ctx, x, 1)
    out_ch = ctx.out(1)
    weight_out = ctx.param("weight", 0)
    ctx.link(out_ch, weight_out)
    ctx.link(out_ch, ctx.param("bias", 0))
    in_ch = ctx.value(x, 1)
    per_group = m.in_channels // m.groups
    if m.groups == 1:
        ctx.link(in_ch, ctx.param("weight", 1))
    elif per_group == 1:  # depthwise (channel multiplier m)
        mult = m.out_channels // m.in_channels
        ctx.link(in_ch, out_ch, np.repeat(arange(m.in_channels), mult), arange(m.out_channels))
    else:  # grouped: the same local input index goes from every group
        ctx.link(
            in_ch, ctx.param("weight", 1), arange(m.in_channels), arange(m.in_channels) % per_group
        )
        ctx.require_blocks(weight_out, m.groups, f"grouped conv {node.target}")


@register(*_CONV_T)
def conv_transpose_rule(ctx: RuleContext, node: fx.Node) -> None:
    """W is (in, out/g, k…): in[:, c] ↔ W[c]; out[:, o] ↔ W[:, o] ↔ b[o] (groups = 1 only)."""
    m, x = ctx.module, node.args[0]
    _batch_axes_identity(ctx, x, 1)
    if m.groups != 1:
        ctx.freeze(ctx.value(x, 1), f"grouped ConvTranspose {node.target} is not supported")
        ctx.freeze(ctx.out(1), f"grouped ConvTranspose {node.target} is not supported")
        return
    ctx.link(ctx.value(x, 1), ctx.param("weight", 0))
    ctx.link(ctx.out(1), ctx.param("weight", 1))
    ctx.link(ctx.out(1), ctx.param("bias", 0))


@register(nn.Linear)
def linear_rule(ctx: RuleContext, node: fx.Node) -> None:
    """in[…, i] ↔ W[:, i]; out[…, o] ↔ W[o] ↔ b[o]; leading axes pass through."""
    x = node.args[0]
    _batch_axes_identity(ctx, x, len(ctx.shape(x)) - 1)
    ctx.link(ctx.value(x, -1), ctx.param("weight", 1))
    ctx.link(ctx.out(-1), ctx.param("weight", 0))
    ctx.link(ctx.out(-1), ctx.param("bias", 0))


@register(F.linear)
def functional_linear_rule(ctx: RuleContext, node: fx.Node) -> None:
    x, weight, bias = node.args[0], ctx.arg(1, "weight"), ctx.arg(2, "bias")
    _batch_axes_identity(ctx, x, len(ctx.shape(x)) - 1)
    ctx.link(ctx.value(x, -1), ctx.value(weight, 1))
    ctx.link(ctx.out(-1), ctx.value(weight, 0))
    if isinstance(bias, fx.Node):
        ctx.link(ctx.out(-1), ctx.value(bias, 0))


@register(
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
)
def batch_norm_rule(ctx: RuleContext, node: fx.Node) -> None:
    """x[:, c] ↔ γ[c] ↔ β[c] ↔ μ[c] ↔ σ²[c]; every axis passes through."""
    ctx.same_shape(node.args[0])
    for name in ("weight", "bias", "running_mean", "running_var"):
        ctx.link(ctx.out(1), ctx.param(name, 0))


@register(nn.GroupNorm)
def group_norm_rule(ctx: RuleContext, node: fx.Node) -> None:
    """Like BatchNorm, and every group must lose the same number of channels."""
    ctx.same_shape(node.args[0])
    for name in ("weight", "bias"):
        ctx.link(ctx.out(1), ctx.param(name, 0))
    ctx.require_blocks(ctx.out(1), ctx.module.num_groups, f"GroupNorm {node.target}")


@register(nn.LayerNorm)
def layer_norm_rule(ctx: RuleContext, node: fx.Node) -> None:
    """The normalised trailing axes ↔ γ, β; every axis passes through."""
    ctx.same_shape(node.args[0])
    k = len(ctx.module.normalized_shape)
    for axis in range(-k, 0):
        for name in ("weight", "bias"):
            if getattr(ctx.module, name, None) is not None:
                ctx.link(ctx.out(axis), ctx.param(name, axis))


@register(F.layer_norm)
def functional_layer_norm_rule(ctx: RuleContext, node: fx.Node) -> None:
    ctx.same_shape(node.args[0])
    k = len(ctx.arg(1, "normalized_shape"))
    for index, name in ((2, "weight"), (3, "bias")):
        param = ctx.arg(index, name)
        for axis in range(-k, 0):
            if isinstance(param, fx.Node):
                ctx.link(ctx.out(axis), ctx.value(param, axis))


@register(nn.PReLU)
def prelu_rule(ctx: RuleContext, node: fx.Node) -> None:
    ctx.same_shape(node.args[0])
    if ctx.module.num_parameters > 1:
        ctx.link(ctx.out(1), ctx.param("weight", 0))


def _embed_links(ctx: RuleContext, stream, weight_rows, embed: int, copies: int) -> None:
    """Stream channel e ↔ rows e, E+e, 2E+e… of a stacked projection weight."""
    for k in range(copies):
        ctx.link(stream, weight_rows, arange(embed), arange(embed) + k * embed)


@register(nn.MultiheadAttention)
def multihead_attention_rule(ctx: RuleContext, node: fx.Node) -> None:
    """The embedding dim E of q, k, v, in_proj (rows e, E+e, 2E+e; columns) and out_proj, as in
    DepGraph; each head (a block of E/h) must lose the same number of channels."""
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
