"""Exact trainable-parameter counts, declared-only requires_grad, gradients, checkpoints of trainable state."""

from __future__ import annotations

import pytest
import torch

from pipeline.config import load_config
from pipeline.model import model_info

VISION_ADAPTER_B16 = 295_872  # 768 -> 192 -> 768
TEXT_ADAPTER_B16 = 131_712  # 512 -> 128 -> 512


@pytest.mark.parametrize(
    "preset, trainable",
    [
        ("ssv2_small", 7_370_496),
        ("ssv2_full", 7_371_520),
        ("hmdb51", 3_426_816),
        ("ucf101", 3_426_816),
        ("kinetics100", 3_426_816),
    ],
)
def test_vit_b16_trainable_counts(preset: str, trainable: int) -> None:
    cfg = load_config(preset, overrides={"model.clip": "ViT-B-16", "model.pretrained": None})
    info = model_info(cfg)  # meta device: no memory, no weights
    assert info["trainable"] == trainable
    parts = info["parts"]
    m, m_t = cfg.model.vision_adapted_layers, cfg.model.text_adapted_layers
    assert parts["vision_adapters"]["trainable"] == 4 * m * VISION_ADAPTER_B16
    assert parts["text_adapters"]["trainable"] == m_t * TEXT_ADAPTER_B16
    assert parts["temporal_embedding"]["trainable"] == cfg.protocol.num_frames * 768
    assert parts["other"]["trainable"] == (2 * 512 if cfg.model.ca_layernorm else 0)
    assert parts["clip_vision"]["trainable"] == parts["clip_text"]["trainable"] == 0
    assert sum(p["frozen"] for p in parts.values()) == info["frozen"] > 0


def _adapter_size(width: int, ratio: float = 0.25) -> int:
    hidden = round(width * ratio)
    return 2 * width * hidden + hidden + width


def test_adapters_exist_only_where_used(kit) -> None:
    model = kit.build({"vision_adapted_layers": 2, "text_adapted_layers": 1})
    assert len(model.vision.blocks) == 2 and len(model.text.blocks) == 1
    assert model.ca_norm is None and model.text.subaction_embedding is None
    counts = model.parameter_counts()
    assert counts["trainable"] + counts["frozen"] == sum(p.numel() for p in model.parameters())  # every parameter in a part
    parts = counts["parts"]
    assert parts["vision_adapters"]["trainable"] == 2 * 4 * _adapter_size(64)
    assert parts["text_adapters"]["trainable"] == 1 * _adapter_size(64)
    assert parts["other"]["trainable"] == 0
    extended = kit.build({"ca_layernorm": True, "subaction_index_embedding": True}, num_sub_actions=3)
    parts = extended.parameter_counts()["parts"]
    assert parts["other"]["trainable"] == 2 * 64  # LayerNorm(E=64) of CA
    assert parts["text_adapters"]["trainable"] == 2 * _adapter_size(64) + 3 * 64  # + (S, D_t) index embedding


def test_only_declared_parameters_require_grad(kit) -> None:
    model = kit.build({"ca_layernorm": True, "subaction_index_embedding": True})
    declared = set(model.trainable_parameter_names())
    requiring = {n for n, p in model.named_parameters() if p.requires_grad}
    assert requiring == declared
    assert not any(n.startswith("clip.") for n in declared)
    assert all(not p.requires_grad for p in model.clip.parameters())
    assert {n.split(".")[0] for n in declared} == {"vision", "text", "ca_norm"}


def test_backward_reaches_every_trainable_and_no_frozen_parameter(kit) -> None:
    model = kit.build({"ca_layernorm": True, "subaction_index_embedding": True}).train()
    kit.randomize_adapters(model)
    ep = kit.episode(model, way=3, shot=1, query=1)
    model.loss(model(ep.support, ep.labels, ep.query, ep.tokens), ep.query_labels).backward()
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert param.grad is not None and param.grad.abs().sum() > 0, name
        else:
            assert param.grad is None, name


def test_trainable_state_dict_round_trip(kit) -> None:
    trained = kit.build(seed=0)
    kit.randomize_adapters(trained, seed=3)
    state = trained.trainable_state_dict()
    assert set(state) == set(trained.trainable_parameter_names())
    fresh = kit.build(seed=0)  # same CLIP weights, fresh adapters
    fresh.load_trainable_state_dict(state)
    ep = kit.episode(trained)
    with torch.no_grad():
        a = trained(ep.support, ep.labels, ep.query, ep.tokens).logits
        b = fresh(ep.support, ep.labels, ep.query, ep.tokens).logits
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    with pytest.raises(ValueError, match="missing"):
        fresh.load_trainable_state_dict({k: v for k, v in state.items() if "temporal" not in k})
