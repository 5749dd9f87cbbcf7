"""The faster training paths (issue 15) equal the straightforward ones: outputs and every trainable gradient."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pipeline.model.backbone import text_module
from pipeline.model.layers import attend, attend_along
from pipeline.model.text import _pooled_length


def _moved_attend(attn: nn.MultiheadAttention, x: torch.Tensor, dim: int, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The previous attend_along: move the axis, attend, move it back."""
    return attend(attn, x.movedim(dim, -2), mask).movedim(-2, dim)


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("dim", [-4, -3, -2, 1])
def test_attend_along_equals_moved_attend(dim: int) -> None:
    torch.manual_seed(0)
    attn = nn.MultiheadAttention(16, 2)
    x = torch.randn(5, 3, 4, 6, 16, requires_grad=True)  # (B, V, T, P+1, D)
    length = x.shape[dim]
    mask = torch.rand(length, length) > 0.4
    mask |= torch.eye(length, dtype=torch.bool)
    weight = torch.randn(x.shape)
    out = attend_along(attn, x, dim, mask)
    assert out.shape == x.shape and out.is_contiguous()
    (grad,) = torch.autograd.grad((out * weight).sum(), x)
    ref = _moved_attend(attn, x, dim, mask)
    (ref_grad,) = torch.autograd.grad((ref * weight).sum(), x)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(grad, ref_grad, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("context", ["faithful", "inductive"])
@pytest.mark.parametrize("embed_at", ["input", "first_adapted"])
def test_class_token_suffix_equals_full_suffix_with_gradients(kit, context: str, embed_at: str) -> None:
    """The training forward runs the last block at the class token only; features and gradients equal the full block's."""
    model = kit.build({"task_context": context, "temporal_embedding_at": embed_at, "task_adapter_init": "released"}).train()
    kit.randomize_adapters(model)
    model.double()  # float64: what is compared is the math, not fp32 summation order
    ep = kit.episode(model, way=3, shot=2, query=2)
    videos = torch.cat([ep.support, ep.query]).double()
    mask = torch.rand(videos.shape[0], videos.shape[0], generator=torch.Generator().manual_seed(3)) > 0.3
    mask |= torch.eye(videos.shape[0], dtype=torch.bool)
    weight = torch.randn(videos.shape[0], model.protocol.num_frames, model.embed_dim, dtype=torch.float64)

    def run(fast: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        states = model.vision.prefix(model.clip.visual, videos)  # (V, T, P+1, D), with the graph to the temporal embedding
        suffix = model.vision.episode_suffix if fast else model.vision.suffix  # model.vision_suffix runs episode_suffix
        z = suffix(model.clip.visual, states, mask)
        (z * weight).sum().backward()
        return z.detach(), _grads(model)

    fast, fast_grads = run(True)
    full, full_grads = run(False)
    torch.testing.assert_close(fast, full, atol=1e-12, rtol=1e-10)
    assert set(fast_grads) == set(full_grads) and "vision.temporal_embedding" in fast_grads
    for name, g in full_grads.items():
        torch.testing.assert_close(fast_grads[name], g, atol=1e-12, rtol=1e-10, msg=lambda m, name=name: f"{name}: {m}")


def _full_length_text(model, tokens: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
    """AdaptedText.encode without dropping the positions after the pooled token."""
    text, adapted = text_module(model.clip), model.text
    x = prefix
    if adapted.subaction_embedding is not None:
        x = x + adapted.subaction_embedding[None, :, None, :]
    for block, adapter in zip(text.transformer.resblocks[adapted.num_frozen :], adapted.blocks, strict=True):
        x = adapter(block, x)
    return adapted._pool(text, x.flatten(0, 1), tokens.flatten(0, 1)).unflatten(0, tokens.shape[:2])


@pytest.mark.parametrize("index_embedding", [False, True])
def test_text_stops_at_the_pooled_token_with_equal_gradients(kit, index_embedding: bool) -> None:
    model = kit.build({"subaction_index_embedding": index_embedding}).train()
    kit.randomize_adapters(model)
    model.double()  # float64: what is compared is the math, not fp32 summation order
    ep = kit.episode(model, way=3)
    keep = _pooled_length(text_module(model.clip), ep.tokens)
    assert keep == int(ep.tokens.argmax(-1).max()) + 1 < ep.tokens.shape[-1]  # the prompts are short: positions are dropped
    with torch.no_grad():
        prefix = model.text_prefix(ep.tokens.flatten(0, 1)).unflatten(0, ep.tokens.shape[:2])  # (N, S, ctx, D_t)
    weight = torch.randn(3, model.protocol.num_sub_actions, model.embed_dim, dtype=torch.float64)

    def run(fast: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        text = text_module(model.clip)
        feats = model.text.encode(text, ep.tokens, prefix) if fast else _full_length_text(model, ep.tokens, prefix)
        (feats * weight).sum().backward()
        return feats.detach(), _grads(model)

    fast, fast_grads = run(True)
    full, full_grads = run(False)
    torch.testing.assert_close(fast, full, atol=1e-6, rtol=1e-5)
    assert set(fast_grads) == set(full_grads) and fast_grads
    for name, g in full_grads.items():
        torch.testing.assert_close(fast_grads[name], g, atol=1e-6, rtol=1e-5, msg=lambda m, name=name: f"{name}: {m}")


def test_pooled_length_by_pool_type() -> None:
    tokens = torch.tensor([[[5, 9, 0, 0], [5, 6, 9, 0]]])  # (1, 2, 4): highest id = EOT at 1 and 2
    argmax = type("T", (), {"pool_type": "argmax", "eos_id": None})()
    last = type("T", (), {"pool_type": "last", "eos_id": None})()
    eos = type("T", (), {"pool_type": "eos", "eos_id": 6})()  # EOS at 1 in the second prompt only
    assert _pooled_length(argmax, tokens) == 3
    assert _pooled_length(last, tokens) == 4
    assert _pooled_length(eos, tokens) == 2
