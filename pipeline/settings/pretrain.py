"""Config of the demo backbone stage: contrastive pre-training of a tiny open_clip model on captioned synthetic frames.

The defaults are the demo's recipe (about 3 CPU minutes on 2 cores). The image side, the stored
frame size and JPEG quality are not fields here: the stage reads them from `model.image_size`,
`dataset.synthetic_size` and `frames.storage_size` / `frames.jpeg_quality`, so pre-training sees
frames exactly as the model stage will.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from pipeline.settings.section import DeviceName, Section

__all__ = ["BackboneConfig"]


class BackboneConfig(Section):
    clip: str = "fsar-tiny"  # open_clip model name (a registered tiny config), random init
    pos_init: Literal["sincos", "random"] = "sincos"  # start of the ViT's learnable positional embedding: 2D sin-cos (MAE) or open_clip's random
    steps: int = Field(default=250, ge=1)  # optimiser steps (a step budget: results never depend on machine speed)
    batch_size: int = Field(default=128, ge=2)  # frames per step (in-batch negatives)
    lr: float = Field(default=5e-4, gt=0.0)  # AdamW peak learning rate
    weight_decay: float = Field(default=0.1, ge=0.0)  # AdamW weight decay of matrices (not of gains, biases, embeddings)
    warmup_steps: int = Field(default=25, ge=0)  # linear warm-up, then cosine decay to zero
    seed: int = 0  # model init, scene stream and batch sampling
    scenes: int = Field(default=100_000, ge=1)  # distinct training scenes; batches cycle through them
    free_scene_share: float = Field(default=0.5, ge=0.0, le=1.0)  # share of scenes with a random layout instead of a class trajectory
    caption_weights: tuple[float, float, float] = (0.4, 0.4, 0.2)  # full caption / script phrase / phrase in model.prompt_template
    device: DeviceName = "auto"  # cpu, cuda, cuda:N; auto = cuda when visible, else cpu (the demo: cpu)
    eval_frames: int = Field(default=1080, ge=2)  # held-out trajectory frames (their own seeds) for zero-shot retrieval
    eval_candidates: int = Field(default=36, ge=2)  # captions per retrieval group (chance = 1 / this)

    @model_validator(mode="after")
    def _check(self) -> "BackboneConfig":
        if any(w < 0 for w in self.caption_weights) or sum(self.caption_weights) <= 0:
            raise ValueError(f"caption_weights must be three non-negative numbers, not all 0, got {list(self.caption_weights)}")
        if self.eval_candidates > self.eval_frames:
            raise ValueError(f"eval_candidates ({self.eval_candidates}) must not exceed eval_frames ({self.eval_frames})")
        return self
