"""Building blocks: the bottleneck adapter and the frozen CLIP blocks run through SDPA.

The frozen blocks are open_clip `ResidualAttentionBlock`s; their weights are reused as they are
(`ln_1`, `attn.in_proj_*`, `attn.out_proj`, `ln_2`, `mlp`), but attention always runs through
`torch.nn.functional.scaled_dot_product_attention`, along whichever axis the caller picks
(tokens of a frame, frames of a video, videos of a task, prompts of a class).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Adapter", "as_float", "attend", "attend_along", "attend_first", "bottleneck_width", "frozen_block"]


def bottleneck_width(width: int, ratio: float) -> int:
    """Hidden width r*D of an adapter (at least 1)."""
    return max(1, round(width * ratio))


class Adapter(nn.Module):
    """`Linear(D, rD) -> GELU -> Linear(rD, D)`; with `skip`, A(y) = y + bottleneck(y).

    `zero_init` zeroes the last Linear so that the bottleneck first outputs zeros; otherwise both
    Linears keep PyTorch's default init (the released code's task adapter).
    """

    def __init__(self, width: int, ratio: float, *, skip: bool = False, zero_init: bool = True) -> None:
        super().__init__()
        hidden = bottleneck_width(width, ratio)
        self.down = nn.Linear(width, hidden)
        self.act = nn.GELU()  # exact GELU, whatever the frozen blocks use
        self.up = nn.Linear(hidden, width)
        self.skip = skip
        if zero_init:
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)

    def forward(self, y: Tensor) -> Tensor:  # (..., D) -> (..., D)
        out = self.up(self.act(self.down(y)))
        return y + out if self.skip else out


def attend(attn: nn.MultiheadAttention, x: Tensor, mask: Tensor | None = None, causal: bool = False) -> Tensor:
    """Self-attention with a frozen `nn.MultiheadAttention`'s weights over the second-last axis of x.

    x: (..., L, D); mask: None or bool (L, L), True = may attend. Returns (..., L, D).
    """
    *lead, length, width = x.shape
    heads = attn.num_heads
    flat = x.reshape(-1, length, width)  # (B, L, D)
    qkv = F.linear(flat, attn.in_proj_weight, attn.in_proj_bias)  # (B, L, 3D)
    q, k, v = qkv.view(flat.shape[0], length, 3, heads, width // heads).permute(2, 0, 3, 1, 4)  # 3 x (B, H, L, D/H)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)  # (B, H, L, D/H)
    out = out.transpose(1, 2).reshape(flat.shape[0], length, width)  # (B, L, D)
    return F.linear(out, attn.out_proj.weight, attn.out_proj.bias).view(*lead, length, width)


def attend_first(attn: nn.MultiheadAttention, x: Tensor) -> Tensor:
    """`attend(attn, x)[..., 0, :]` without the other positions' outputs: position 0 attends over all L.

    x: (..., L, D) -> (..., D). Keys and values come from every position, the query from position 0 only.
    """
    *lead, length, width = x.shape
    heads = attn.num_heads
    flat = x.reshape(-1, length, width)  # (B, L, D)
    q = F.linear(flat[:, :1], attn.in_proj_weight[:width], attn.in_proj_bias[:width])  # (B, 1, D)
    kv = F.linear(flat, attn.in_proj_weight[width:], attn.in_proj_bias[width:])  # (B, L, 2D)
    q = q.view(flat.shape[0], 1, heads, width // heads).transpose(1, 2)  # (B, H, 1, D/H)
    k, v = kv.view(flat.shape[0], length, 2, heads, width // heads).permute(2, 0, 3, 1, 4)  # 2 x (B, H, L, D/H)
    out = F.scaled_dot_product_attention(q, k, v)  # (B, H, 1, D/H)
    out = out.transpose(1, 2).reshape(flat.shape[0], width)  # (B, D)
    return F.linear(out, attn.out_proj.weight, attn.out_proj.bias).view(*lead, width)


def attend_along(attn: nn.MultiheadAttention, x: Tensor, dim: int, mask: Tensor | None = None) -> Tensor:
    """`attend` with the sequence on axis `dim` of x (..., D); every other axis is a batch axis.

    The projections run in x's own layout (contiguous matrix products, forward and backward); only the
    q, k, v heads are moved for the attention and the output moved back. A Linear on a moved (strided)
    view falls back to a batched product several times slower on CPU.
    """
    axis = dim % x.dim()
    if axis == x.dim() - 2:
        return attend(attn, x, mask)
    length, width, heads = x.shape[axis], x.shape[-1], attn.num_heads
    qkv = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).unflatten(-1, (3, heads, width // heads))  # (..., 3, H, D/H)
    moved = qkv.movedim(axis, -4)  # (lead..., L, 3, H, D/H)
    lead = moved.shape[:-4]
    q, k, v = moved.reshape(-1, length, 3, heads, width // heads).permute(2, 0, 3, 1, 4)  # 3 x (B, H, L, D/H)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, L, D/H)
    out = F.linear(out.transpose(1, 2).reshape(-1, length, width), attn.out_proj.weight, attn.out_proj.bias)  # (B, L, D)
    return out.view(*lead, length, width).movedim(-2, axis).contiguous()  # (..., D) in x's layout


def frozen_block(block: nn.Module, x: Tensor, causal: bool = False) -> Tensor:
    """An unchanged CLIP block: x + attn(ln_1(x)); x + mlp(ln_2(x)). x: (B, L, D)."""
    x = x + attend(block.attn, block.ln_1(x), causal=causal)
    return x + block.mlp(block.ln_2(x))


def as_float(x: Tensor) -> Tensor:
    """fp32 copy of an autocast (half-precision) output; no-op in fp32 (and float64, which tests use)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
