"""What train, validation, evaluation and the prefix start from: the model and its data for a config and its inputs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from pipeline.artifacts import ArtifactRef
from pipeline.config import Config
from pipeline.contract import StageError
from pipeline.embeddings import TextCache
from pipeline.fewshot.loader import EpisodeLoader
from pipeline.frames import FrameStore
from pipeline.model import build_model
from pipeline.settings.model import model_fields

__all__ = ["check_text_cache", "prepare"]


def prepare(cfg: Config, inputs: Mapping[str, ArtifactRef], device: torch.device):
    """(model, loader, frame store) for a config and its frames/embeddings inputs: what train and evaluate start from."""
    frames = FrameStore.open(inputs["frames"].dataset, inputs["frames"].version, root=inputs["frames"].root)
    text = TextCache(inputs["embeddings"])
    check_text_cache(cfg, text)
    model = build_model(cfg.model, cfg.protocol, device=device)
    loader = EpisodeLoader(frames, text, cfg, model.image_mean, model.image_std, device, text_keep=model.text_keep)
    return model, loader, frames


def check_text_cache(cfg: Config, text: Any) -> None:
    """The embeddings artifact was made for this config's text model, else a one-line error."""
    got = text.config.get("model", {})
    want = model_fields(cfg.model, ["clip", "pretrained", "init_seed", "text_adapted_layers"])
    diffs = [f"{k}: cache {got.get(k)!r} vs config {v!r}" for k, v in want.items() if got.get(k) != v]
    if diffs:
        raise StageError(f"the embeddings artifact was made for another text model ({'; '.join(diffs)}); re-run `fsar embeddings` with this config")
