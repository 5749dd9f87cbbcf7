"""What `fsar model-info` prints: parameter counts per part and the resolved model config."""

from __future__ import annotations

from typing import Any

import torch

from pipeline.config import Config, section_dict
from pipeline.model.backbone import text_module
from pipeline.model.model import TaskAdapterPP, build_model

__all__ = ["model_info"]


def model_info(cfg: Config, device: str | torch.device | None = None) -> dict[str, Any]:
    """Build the model of `cfg` and count its parameters. Random weights build on the meta device (no memory)."""
    if device is None:
        device = "meta" if cfg.model.pretrained is None else "cpu"
    model = build_model(cfg.model, cfg.protocol, device=device)
    counts = model.parameter_counts()
    return {
        "trainable": counts["trainable"],
        "frozen": counts["frozen"],
        "parts": counts["parts"],
        "preset": cfg.preset,
        "backbone": _backbone_facts(model),
        "stage_windows": [[t + 1 for t in w] for w in model.stage_windows],  # 1-based transitions per sub-action
        "model": section_dict(cfg.model),
        "protocol": section_dict(cfg.protocol),
    }


def _backbone_facts(model: TaskAdapterPP) -> dict[str, Any]:
    visual, text = model.clip.visual, text_module(model.clip)
    return {
        "clip": model.cfg.clip,
        "weights": model.weights,
        "quick_gelu": model.quick_gelu,
        "vision_layers": len(visual.transformer.resblocks),
        "vision_width": visual.transformer.width,
        "text_layers": len(text.transformer.resblocks),
        "text_width": text.transformer.width,
        "embed_dim": model.embed_dim,
        "image_size": model.image_size,
        "image_mean": list(model.image_mean),
        "image_std": list(model.image_std),
    }
