"""Vision tower with task-specific adaptation (docs/method.md, "Vision encoder").

The frozen open_clip `VisionTransformer` is passed in at call time; this module holds only what
trains: the temporal embedding and the four adapters of each of the last M blocks.

    prefix: frames -> patch tokens -> (+ temporal embedding) -> ln_pre -> frozen blocks 1..L-M
    suffix: adapted blocks L-M+1..L -> class token -> ln_post -> proj

Hidden states are (V, T, P+1, D) for one task set, or (B, V, T, P+1, D) for B task sets of the same
layout (batched evaluation): every axis is counted from the end, so the leading B axis is a batch axis
that attention never crosses (two episodes never mix).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from pipeline.model.layers import Adapter, attend, attend_along, attend_first, frozen_block

__all__ = ["AdaptedVision", "VisionBlockAdapters", "patch_tokens"]

FRAME_AXIS, TOKEN_AXIS, VIDEO_AXIS = -3, -2, -4  # axes of the ([B,] V, T, P+1, D) hidden states, from the end


class VisionBlockAdapters(nn.Module):
    """The temporal, spatial, task and MLP adapters of one adapted block (the block stays CLIP's)."""

    def __init__(self, width: int, ratio: float, task_zero_init: bool) -> None:
        super().__init__()
        self.temporal = Adapter(width, ratio)  # zero-init, no inner skip
        self.spatial = Adapter(width, ratio, skip=True)  # zero-init, A(y) = y + bottleneck(y)
        self.task = Adapter(width, ratio, zero_init=task_zero_init)  # released: PyTorch default init
        self.mlp = Adapter(width, ratio)  # zero-init, parallel to the frozen MLP

    def forward(self, block: nn.Module, x: Tensor, task_mask: Tensor) -> Tensor:
        """x: ([B,] V, T, P+1, D) states of the V videos of (B) task sets; task_mask: (V, V) bool, True = may attend."""
        x = x + self.temporal(attend_along(block.attn, block.ln_1(x), FRAME_AXIS))  # over the T frames of a video
        x = x + self.spatial(attend(block.attn, block.ln_1(x)))  # over the P+1 tokens of a frame
        x = x + self.task(attend_along(block.attn, block.ln_1(x), VIDEO_AXIS, task_mask))  # over the task's videos
        h = block.ln_2(x)
        return x + block.mlp(h) + self.mlp(h)  # (V, T, P+1, D)

    # ---- the same block in parts, for batched evaluation (same math; `forward` stays the reference) ------------

    def video_part(self, block: nn.Module, x: Tensor) -> Tensor:
        """The temporal and spatial steps of `forward`: they depend on each video alone. (..., T, P+1, D)."""
        x = x + self.temporal(attend_along(block.attn, block.ln_1(x), FRAME_AXIS))
        return x + self.spatial(attend(block.attn, block.ln_1(x)))

    def episode_part(self, block: nn.Module, x: Tensor, task_mask: Tensor) -> Tensor:
        """The task and MLP steps of `forward`, after `video_part`: ([B,] V, T, P+1, D)."""
        x = x + self.task(attend_along(block.attn, block.ln_1(x), VIDEO_AXIS, task_mask))
        h = block.ln_2(x)
        return x + block.mlp(h) + self.mlp(h)

    def class_token_output(self, block: nn.Module, x: Tensor, task_mask: Tensor, video_done: bool = False) -> Tensor:
        """`forward(block, x, task_mask)[..., 0, :]`, computing only what the class token needs (the last block).

        The temporal step runs at every token (the spatial keys need them); the spatial query, the task step and
        the MLP run at the class token alone. x: ([B,] V, T, P+1, D), after `video_part` when `video_done`.
        Returns ([B,] V, T, D).
        """
        if video_done:
            c = x[..., 0, :]  # ([B,] V, T, D)
        else:
            x = x + self.temporal(attend_along(block.attn, block.ln_1(x), FRAME_AXIS))
            c = x[..., 0, :] + self.spatial(attend_first(block.attn, block.ln_1(x)))  # ([B,] V, T, D)
        c = c + self.task(attend_along(block.attn, block.ln_1(c), VIDEO_AXIS + 1, task_mask))  # video axis of (.., V, T, D)
        h = block.ln_2(c)
        return c + block.mlp(h) + self.mlp(h)  # ([B,] V, T, D)


class AdaptedVision(nn.Module):
    """Temporal embedding + adapters of the last `adapted_layers` blocks of a frozen open_clip ViT."""

    def __init__(
        self,
        num_layers: int,
        width: int,
        num_frames: int,
        adapted_layers: int,
        ratio: float,
        task_zero_init: bool,
        embed_at: Literal["input", "first_adapted"],
    ) -> None:
        super().__init__()
        if adapted_layers > num_layers:
            raise ValueError(f"vision_adapted_layers={adapted_layers} exceeds the {num_layers} blocks of the vision tower")
        self.num_frames = num_frames
        self.num_frozen = num_layers - adapted_layers
        self.embed_at = embed_at
        self.temporal_embedding = nn.Parameter(torch.zeros(num_frames, width))  # (T, D), zero-init
        self.blocks = nn.ModuleList(VisionBlockAdapters(width, ratio, task_zero_init) for _ in range(adapted_layers))

    def prefix(self, visual: nn.Module, clips: Tensor) -> Tensor:
        """(B, T, 3, H, W) clips -> (B, T, P+1, D) states after the frozen blocks 1..L-M."""
        self._check_frames(clips.shape[1], "clips")
        batch, frames = clips.shape[:2]
        x = patch_tokens(visual, clips.flatten(0, 1))  # (B*T, P+1, D)
        x = x.unflatten(0, (batch, frames))  # (B, T, P+1, D)
        if self.embed_at == "input":
            x = x + self.temporal_embedding[:, None, :]  # (T, 1, D) broadcast over tokens
        x = visual.ln_pre(x).flatten(0, 1)  # (B*T, P+1, D)
        for block in visual.transformer.resblocks[: self.num_frozen]:
            x = frozen_block(block, x)
        return x.unflatten(0, (batch, frames))  # (B, T, P+1, D)

    def suffix(self, visual: nn.Module, states: Tensor, task_mask: Tensor) -> Tensor:
        """([B,] V, T, P+1, D) prefix states of (B) task sets -> ([B,] V, T, E) frame features; task_mask: (V, V) bool."""
        self._check_frames(states.shape[-3], "prefix states")
        x = states
        if self.embed_at == "first_adapted":
            x = x + self.temporal_embedding[:, None, :]  # (T, 1, D)
        for block, adapters in zip(visual.transformer.resblocks[self.num_frozen :], self.blocks, strict=True):
            x = adapters(block, x, task_mask)  # ([B,] V, T, P+1, D)
        cls = visual.ln_post(x[..., 0, :])  # ([B,] V, T, D) class token of every frame
        return cls @ visual.proj  # ([B,] V, T, E)

    def video_states(self, visual: nn.Module, states: Tensor) -> Tensor:
        """(..., T, P+1, D) prefix states -> the states after the per-video steps of the first adapted block.

        With every parameter fixed (evaluation) these depend on each video alone, so they can be computed
        once per video, like the prefix; `episode_suffix(..., video_done=True)` continues from them.
        """
        self._check_frames(states.shape[-3], "prefix states")
        x = states
        if self.embed_at == "first_adapted":
            x = x + self.temporal_embedding[:, None, :]  # (T, 1, D)
        return self.blocks[0].video_part(visual.transformer.resblocks[self.num_frozen], x)

    def episode_suffix(self, visual: nn.Module, states: Tensor, task_mask: Tensor, video_done: bool = False) -> Tensor:
        """`suffix` for evaluation: the same frame features, with the last block computed at the class token only.

        states: ([B,] V, T, P+1, D) prefix states, or `video_states` output when `video_done`. -> ([B,] V, T, E).
        """
        self._check_frames(states.shape[-3], "prefix states")
        x = states
        if self.embed_at == "first_adapted" and not video_done:
            x = x + self.temporal_embedding[:, None, :]  # (T, 1, D)
        pairs = list(zip(visual.transformer.resblocks[self.num_frozen :], self.blocks, strict=True))
        for i, (block, adapters) in enumerate(pairs[:-1]):
            x = adapters.episode_part(block, x, task_mask) if video_done and i == 0 else adapters(block, x, task_mask)
        block, adapters = pairs[-1]
        cls = adapters.class_token_output(block, x, task_mask, video_done=video_done and len(pairs) == 1)  # ([B,] V, T, D)
        return visual.ln_post(cls) @ visual.proj  # ([B,] V, T, E)

    def _check_frames(self, frames: int, what: str) -> None:
        if frames != self.num_frames:
            raise ValueError(f"{what} have {frames} frames but the model was built for T={self.num_frames} (protocol.num_frames)")


def patch_tokens(visual: nn.Module, frames: Tensor) -> Tensor:
    """open_clip's input stage without ln_pre: (F, 3, H, W) -> (F, P+1, D) with class token and positions."""
    x = visual.conv1(frames)  # (F, D, g, g)
    x = x.flatten(2).transpose(1, 2)  # (F, P, D)
    cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)  # (F, 1, D)
    x = torch.cat([cls, x], dim=1)  # (F, P+1, D)
    pos = visual.positional_embedding.to(x.dtype)  # (P+1, D)
    if pos.shape[0] != x.shape[1]:
        raise ValueError(f"frames give {x.shape[1]} tokens but the model has {pos.shape[0]} positions: wrong image size")
    return x + pos
