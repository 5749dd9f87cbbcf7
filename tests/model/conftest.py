"""Model test helpers, handed to tests as the `kit` fixture: fsar-micro with random weights, tiny episodes."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from pipeline.settings.datasets import ProtocolConfig
from pipeline.settings.model import ModelConfig

MICRO = dict(clip="fsar-micro", pretrained=None, vision_adapted_layers=2, text_adapted_layers=2, image_size=32)
ADAPTER_STD = 0.1  # std of the random values given to adapters so that every branch matters


def micro_config(**fields: Any) -> ModelConfig:
    return ModelConfig(**{**MICRO, **fields})


def build(model_fields: dict[str, Any] | None = None, seed: int = 0, **protocol: Any):
    """fsar-micro Task-Adapter++ with seeded random CLIP weights; T=4, S=2 unless given."""
    from pipeline.model import build_model

    torch.manual_seed(seed)
    proto = ProtocolConfig(**{"num_frames": 4, "num_sub_actions": 2, **protocol})
    return build_model(micro_config(**(model_fields or {})), proto).eval()


def randomize_adapters(model, seed: int = 1) -> None:
    """Give every trainable parameter seeded random values (zero-init adapters would hide bugs)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.requires_grad:
                param.copy_(torch.randn(param.shape, generator=gen) * ADAPTER_STD)


@dataclass
class Episode:
    support: torch.Tensor  # (N*K, T, 3, H, W)
    labels: torch.Tensor  # (N*K,)
    query: torch.Tensor  # (Q_total, T, 3, H, W)
    query_labels: torch.Tensor  # (Q_total,)
    tokens: torch.Tensor  # (N, S, ctx)


def episode(model, way: int = 3, shot: int = 2, query: int = 2, seed: int = 0) -> Episode:
    """Random clips and distinct prompts; supports and queries grouped by class."""
    gen = torch.Generator().manual_seed(seed)
    frames, subs, size = model.protocol.num_frames, model.protocol.num_sub_actions, model.image_size
    clips = torch.randn(way * (shot + query), frames, 3, size, size, generator=gen)
    words = ["run", "jump", "swim", "throw", "catch", "climb", "push", "pull"]
    prompts = [p for c in range(way) for p in model.prompts(words[c % len(words)] + f" {c}", [f"step {k} of {c}" for k in range(subs)])]
    tokens = model.tokenize(prompts).view(way, subs, -1)
    return Episode(
        support=clips[: way * shot],
        labels=torch.arange(way).repeat_interleave(shot),
        query=clips[way * shot :],
        query_labels=torch.arange(way).repeat_interleave(query),
        tokens=tokens,
    )



@pytest.fixture(scope="session")
def kit() -> SimpleNamespace:
    """build(model_fields, seed, **protocol), randomize_adapters(model, seed), episode(model, way, shot, query, seed)."""
    return SimpleNamespace(build=build, randomize_adapters=randomize_adapters, episode=episode, micro_config=micro_config)
