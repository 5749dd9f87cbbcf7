"""Text tower with the semantic order adapter (docs/method.md, "Text encoder").

The frozen open_clip text transformer is passed in at call time; this module holds only what
trains: the order adapter of each of the last M_t blocks (and the optional sub-action index
embedding, an extension, off by default).

    prefix: tokens -> token + positional embedding -> frozen causal blocks 1..L_t-M_t   (cacheable)
    encode: adapted blocks (causal attention, attention across the S prompts of a class, order
            adapter, MLP) -> EOT token -> ln_final -> text_projection
"""

from __future__ import annotations

import torch
from open_clip.transformer import text_global_pool
from torch import Tensor, nn

from pipeline.model.layers import Adapter, as_float, attend, attend_along, frozen_block

__all__ = ["AdaptedText", "OrderAdapterBlock", "format_prompt", "pooled_length"]

PROMPT_AXIS = 1  # axis of the S prompts in the (N, S, L, D) hidden states


def format_prompt(template: str, class_name: str, sub_action: str) -> str:
    """One sub-action prompt: `template` (model.prompt_template) with {c} = class name, {s} = sub-action sentence."""
    return template.format(c=class_name, s=sub_action)


class OrderAdapterBlock(nn.Module):
    """The order adapter of one adapted text block (the block stays CLIP's)."""

    def __init__(self, width: int, ratio: float) -> None:
        super().__init__()
        self.order = Adapter(width, ratio)  # zero-init, no inner skip

    def forward(self, block: nn.Module, x: Tensor) -> Tensor:
        """x: (N, S, L, D): the S prompts of each of N classes."""
        x = x + attend(block.attn, block.ln_1(x), causal=True)  # frozen, as in CLIP
        y = attend_along(block.attn, block.ln_1(x), PROMPT_AXIS)  # across the S prompts, per token position, no mask
        x = x + self.order(y)
        return x + block.mlp(block.ln_2(x))  # (N, S, L, D)


class AdaptedText(nn.Module):
    """Order adapters of the last `adapted_layers` blocks of a frozen open_clip text transformer."""

    def __init__(
        self, num_layers: int, width: int, num_sub_actions: int, adapted_layers: int, ratio: float, index_embedding: bool
    ) -> None:
        super().__init__()
        if adapted_layers > num_layers:
            raise ValueError(f"text_adapted_layers={adapted_layers} exceeds the {num_layers} blocks of the text tower")
        self.num_sub_actions = num_sub_actions
        self.num_frozen = num_layers - adapted_layers
        self.blocks = nn.ModuleList(OrderAdapterBlock(width, ratio) for _ in range(adapted_layers))
        # extension (off by default): learnable sub-action index embedding, zero-init, added before the first adapted block
        self.subaction_embedding = nn.Parameter(torch.zeros(num_sub_actions, width)) if index_embedding else None

    def prefix(self, text: nn.Module, tokens: Tensor) -> Tensor:
        """(P, L) token ids -> (P, L, D_t) states after the frozen blocks 1..L_t-M_t."""
        length = tokens.shape[-1]
        if length > text.positional_embedding.shape[0]:
            raise ValueError(f"tokens have {length} positions; the text tower has {text.positional_embedding.shape[0]}")
        x = text.token_embedding(tokens) + text.positional_embedding[:length]  # (P, L, D_t)
        for block in text.transformer.resblocks[: self.num_frozen]:
            x = frozen_block(block, x, causal=True)
        return x

    def encode(self, text: nn.Module, tokens: Tensor, prefix: Tensor | None = None, keep: int | None = None) -> Tensor:
        """(N, S, L) token ids (+ their cached (N, S, L, D_t) prefix) -> (N, S, E) prompt features.

        `keep`: the positions to run, at least `pooled_length(text, tokens)` (computed from `tokens` when None:
        a host synchronisation when they are on a GPU); positions after the pooled tokens never reach them.
        """
        classes, prompts, length = tokens.shape
        if prompts != self.num_sub_actions:
            raise ValueError(f"text tokens hold {prompts} prompts per class but the model was built for S={self.num_sub_actions}")
        if prefix is not None and prefix.shape[:3] != tokens.shape:
            raise ValueError(f"text prefix of shape {tuple(prefix.shape)} does not match tokens of shape {tuple(tokens.shape)}")
        if prefix is None:  # at full length, so that the numbers equal those of a cached prefix
            prefix = self.prefix(text, tokens.flatten(0, 1)).unflatten(0, (classes, prompts))  # (N, S, L, D_t)
        if keep is None:
            keep = _pooled_length(text, tokens)  # positions after the pooled token never reach it (causal attention)
        elif not 1 <= keep <= length:
            raise ValueError(f"text keep {keep} is outside 1..{length} (the token positions)")
        tokens = tokens[..., :keep]  # (N, S, L')
        x = as_float(prefix[..., :keep, :])  # (N, S, L', D_t); a cache may be stored in half precision, the stream runs in fp32
        if self.subaction_embedding is not None:
            x = x + self.subaction_embedding[None, :, None, :]  # (1, S, 1, D_t)
        for block, adapter in zip(text.transformer.resblocks[self.num_frozen :], self.blocks, strict=True):
            x = adapter(block, x)  # (N, S, L', D_t)
        return self._pool(text, x.flatten(0, 1), tokens.flatten(0, 1)).unflatten(0, (classes, prompts))  # (N, S, E)

    @staticmethod
    def _pool(text: nn.Module, x: Tensor, tokens: Tensor) -> Tensor:
        """(P, L, D_t) -> (P, E): the EOT token -> ln_final -> text_projection, as open_clip's encode_text."""
        pool_type, eos_id = _pool_settings(text)
        pooled = text.ln_final(text_global_pool(x, tokens, pool_type, eos_token_id=eos_id))  # (P, D_t)
        proj = text.text_projection
        if proj is None:
            return pooled
        return proj(pooled) if isinstance(proj, nn.Linear) else pooled @ proj  # (P, E)


def _pool_settings(text: nn.Module) -> tuple[str, int | None]:
    """(pool type, EOS token id) of an open_clip text tower (CLIP itself or its TextTransformer)."""
    pool_type = getattr(text, "text_pool_type", None) or getattr(text, "pool_type", "argmax")
    eos_id = getattr(text, "text_eos_id", None) if hasattr(text, "text_pool_type") else getattr(text, "eos_id", None)
    return pool_type, eos_id


def pooled_length(text: nn.Module, tokens: Tensor) -> int:
    """Token positions the pooled output of `tokens` (..., L) depends on (see `_pooled_length`); CPU tokens: no sync."""
    return _pooled_length(text, tokens)


def _pooled_length(text: nn.Module, tokens: Tensor) -> int:
    """Token positions the pooled output depends on: up to the last prompt's pooled token (..., L) -> L' <= L.

    Every op of the adapted blocks is causal along the sequence (causal self-attention) or per position (the
    attention across prompts, the adapters, the MLP), so position i depends on positions <= i of every prompt
    and dropping the positions after the last pooled token changes no output (a test). "last" pooling keeps all.
    """
    length = tokens.shape[-1]
    pool_type, eos_id = _pool_settings(text)
    if pool_type == "first":
        return min(1, length)
    if pool_type == "argmax":
        where = tokens.argmax(dim=-1)  # (...,) EOT position (the highest id), as text_global_pool
    elif pool_type == "eos" and eos_id is not None:
        where = (tokens == eos_id).int().argmax(dim=-1)  # (...,)
    else:
        return length
    return int(where.max()) + 1 if where.numel() else length
