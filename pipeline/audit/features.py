"""Frozen-tower features for the audit (and evaluate's `choose_by_support`): each frame and each sentence once.

    frames = frame_features(model, loader, video_ids, batch, workers)   # (V, T, E): open_clip encode_image per frame
    text = text_features(model, prompts, batch)                         # (P, E): open_clip encode_text per prompt

Frames come through the few-shot core's loader with evaluation sampling (`protocol.num_frames` centre frames), as
training and evaluation see them; prompts are the embeddings stage's (`model.prompt_template`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from pipeline.fewshot.loader import EpisodeLoader

__all__ = ["frame_features", "text_features"]


@torch.inference_mode()
def frame_features(model: torch.nn.Module, loader: EpisodeLoader, video_ids: Sequence[str], batch: int, workers: int) -> Tensor:
    """(V, T, E) frozen per-frame features of the videos, in order, on the CPU (fp32); `batch` videos per pass."""
    parts = []
    with loader.clip_batches(list(video_ids), batch, workers) as chunks:
        for _, clips in chunks:
            parts.append(model.frozen_frame_features(clips).float().cpu())  # (b, T, E)
    if not parts:
        t, e = model.protocol.num_frames, model.embed_dim
        return torch.zeros((0, t, e))
    return torch.cat(parts)


@torch.inference_mode()
def text_features(model: torch.nn.Module, prompts: Sequence[str], batch: int) -> Tensor:
    """(P, E) frozen features of the prompts, in order, on the CPU (fp32); `batch` prompts per pass."""
    parts = [model.frozen_text_features(model.tokenize(prompts[i : i + batch])).float().cpu() for i in range(0, len(prompts), batch)]
    return torch.cat(parts) if parts else torch.zeros((0, model.embed_dim))
