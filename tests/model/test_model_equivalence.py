"""With every adapter zero-initialised the towers are exactly open_clip's encode_image / encode_text."""

from __future__ import annotations

import pytest
import torch

from pipeline.settings.datasets import ProtocolConfig
from pipeline.settings.model import ModelConfig

TOL = dict(atol=1e-5, rtol=1e-5)
ZERO = dict(task_adapter_init="zero")


def _clip_frames(model, clips: torch.Tensor) -> torch.Tensor:
    """open_clip's own per-frame features: (B, T, 3, H, W) -> (B, T, E)."""
    with torch.no_grad():
        return model.clip.encode_image(clips.flatten(0, 1)).unflatten(0, clips.shape[:2])


def _check_vision(model, clips: torch.Tensor, num_support: int) -> None:
    with torch.no_grad():
        z_s, z_q = model.encode_videos(clips[:num_support], clips[num_support:])
    torch.testing.assert_close(torch.cat([z_s, z_q]), _clip_frames(model, clips), **TOL)


def _check_text(model, tokens: torch.Tensor) -> None:
    with torch.no_grad():
        ours = model.encode_text(tokens)  # (N, S, E)
        theirs = model.clip.encode_text(tokens.flatten(0, 1)).unflatten(0, tokens.shape[:2])
    torch.testing.assert_close(ours, theirs, **TOL)


@pytest.mark.parametrize("context", ["faithful", "inductive"])
@pytest.mark.parametrize("embed_at", ["input", "first_adapted"])
def test_micro_vision_equals_encode_image(kit, context: str, embed_at: str) -> None:
    model = kit.build({**ZERO, "task_context": context, "temporal_embedding_at": embed_at})
    clips = torch.randn(5, 4, 3, 32, 32)
    _check_vision(model, clips, num_support=3)


def test_micro_text_equals_encode_text(kit) -> None:
    model = kit.build({**ZERO, "subaction_index_embedding": True}, num_sub_actions=3)
    tokens = model.tokenize(["a video of sawing", "a person lifts a saw", "", "x y z", "jumping", "land on feet"]).view(2, 3, -1)
    _check_text(model, tokens)


def test_tiny_towers_equal_open_clip() -> None:
    """The demo's fsar-tiny (64 px, 4 layers, M = M_t = 2) at T=8, S=3."""
    torch.manual_seed(0)
    from pipeline.model import build_model

    model = build_model(
        ModelConfig(clip="fsar-tiny", pretrained=None, vision_adapted_layers=2, text_adapted_layers=2, image_size=64, **ZERO),
        ProtocolConfig(num_frames=8, num_sub_actions=3),
    ).eval()
    _check_vision(model, torch.randn(2, 8, 3, 64, 64), num_support=1)
    _check_text(model, model.tokenize([f"a video of action about push: step {k}" for k in range(6)]).view(2, 3, -1))


def test_default_task_adapter_is_not_zero(kit) -> None:
    """The released init of the task adapter changes features: the equivalence needs task_adapter_init=zero."""
    model = kit.build()
    clips = torch.randn(3, 4, 3, 32, 32)
    with torch.no_grad():
        z_s, z_q = model.encode_videos(clips[:2], clips[2:])
    assert not torch.allclose(torch.cat([z_s, z_q]), _clip_frames(model, clips), atol=1e-4)


def test_vit_b16_random_weights_equal_open_clip() -> None:
    """ViT-B-16 at its real size (random weights): one video of T=2 frames, two prompts (about 2 s)."""
    torch.manual_seed(0)
    from pipeline.model import build_model

    model = build_model(
        ModelConfig(clip="ViT-B-16", pretrained=None, **ZERO), ProtocolConfig(num_frames=2, num_sub_actions=1)
    ).eval()
    _check_vision(model, torch.randn(1, 2, 3, 224, 224), num_support=1)
    _check_text(model, model.tokenize(["a video of action about archery: draw the bow", "release"]).view(2, 1, -1))
