"""Batched episodes (`forward_batch`): the same scores as one episode at a time, and episodes never mix."""

from __future__ import annotations

import pytest
import torch

ATOL = dict(atol=1e-5, rtol=1e-5)


def _episodes(kit, model, count: int, way: int, shot: int, query: int):
    """`count` different episodes of one layout; episode b's support order is shuffled (labels differ per episode)."""
    eps = []
    for b in range(count):
        ep = kit.episode(model, way=way, shot=shot, query=query, seed=10 + b)
        order = torch.randperm(ep.labels.shape[0], generator=torch.Generator().manual_seed(b))
        eps.append((ep.support[order], ep.labels[order], ep.query, ep.tokens))
    return eps


def _stack(eps):
    return [torch.stack(parts) for parts in zip(*eps, strict=True)]  # support, labels, query, tokens with a leading B


def _assert_same(single, batched) -> None:
    parts = batched.unbind()
    assert len(parts) == len(single)
    for one, many in zip(single, parts, strict=True):
        assert torch.equal(one.prediction, many.prediction)
        for field in ("logits", "vis", "sem"):
            torch.testing.assert_close(getattr(many, field), getattr(one, field), **ATOL)


@pytest.mark.parametrize("context", ["faithful", "inductive"])
def test_batched_equals_one_episode_at_a_time(kit, context: str) -> None:
    model = kit.build({"task_context": context})
    kit.randomize_adapters(model)
    eps = _episodes(kit, model, count=3, way=3, shot=5, query=2)  # N=3 != Q_total=6, K=5
    support, labels, query, tokens = _stack(eps)
    with torch.no_grad():
        single = [model(s, lab, q, t) for s, lab, q, t in eps]
        from_clips = model.forward_batch(support, labels, query, tokens)
        assert from_clips.logits.shape == (3, 6, 3)
        # the evaluation cache's inputs: prefix states and per-class text features
        prefix = model.vision_prefix(support.flatten(0, 1)).unflatten(0, support.shape[:2])  # (B, N*K, T, P+1, D)
        q_prefix = model.vision_prefix(query.flatten(0, 1)).unflatten(0, query.shape[:2])  # (B, Q, T, P+1, D)
        text = torch.stack([model.encode_text(t) for t in tokens])  # (B, N, S, E)
        cached = model.forward_batch(prefix, labels, q_prefix, None, support_is_prefix=True, query_is_prefix=True, text_features=text)
        video = model.forward_batch(  # the batched evaluation cache: per-video steps of the first adapted block done
            model.vision_video_states(prefix), labels, model.vision_video_states(q_prefix), None, support_is_prefix=True,
            query_is_prefix=True, text_features=text, video_states=True,
        )
    _assert_same(single, from_clips)
    _assert_same(single, cached)
    _assert_same(single, video)


@pytest.mark.parametrize("adapted", [1, 2])
def test_batched_variants_and_one_query(kit, adapted: int) -> None:
    """CA LayerNorm, the temporal embedding at the first adapted layer, M=1 (first adapted block = last), Q=1, N=4."""
    fields = {"task_context": "inductive", "ca_layernorm": True, "temporal_embedding_at": "first_adapted", "vision_adapted_layers": adapted}
    model = kit.build(fields)
    kit.randomize_adapters(model)
    eps = _episodes(kit, model, count=2, way=4, shot=1, query=1)
    support, labels, query, tokens = _stack(eps)
    with torch.no_grad():
        single = [model(s, lab, q, t) for s, lab, q, t in eps]
        batched = model.forward_batch(support, labels, query, tokens)
        states = [model.vision_video_states(model.vision_prefix(x.flatten(0, 1))).unflatten(0, x.shape[:2]) for x in (support, query)]
        video = model.forward_batch(states[0], labels, states[1], tokens, support_is_prefix=True, query_is_prefix=True, video_states=True)
    _assert_same(single, batched)
    _assert_same(single, video)


@pytest.mark.parametrize("context", ["faithful", "inductive"])
def test_episodes_of_a_batch_never_mix(kit, context: str) -> None:
    model = kit.build({"task_context": context})
    kit.randomize_adapters(model)
    support, labels, query, tokens = _stack(_episodes(kit, model, count=2, way=3, shot=2, query=2))
    with torch.no_grad():
        base = model.forward_batch(support, labels, query, tokens)
        other = support.clone(), query.clone()
        other[0][1] = torch.randn(other[0][1].shape, generator=torch.Generator().manual_seed(5))  # episode 1 changes
        other[1][1] = torch.randn(other[1][1].shape, generator=torch.Generator().manual_seed(6))
        changed = model.forward_batch(other[0], labels, other[1], tokens)
    torch.testing.assert_close(changed.logits[0], base.logits[0], **ATOL)
    assert not torch.allclose(changed.logits[1], base.logits[1], **ATOL)


def test_batched_input_errors(kit) -> None:
    model = kit.build()
    support, labels, query, tokens = _stack(_episodes(kit, model, count=2, way=3, shot=1, query=1))
    with torch.no_grad(), pytest.raises(ValueError, match="support_labels must lie in 0..2"):
        model.forward_batch(support, labels + 1, query, tokens)
    with torch.no_grad(), pytest.raises(ValueError, match="episodes"):
        model.forward_batch(support, labels, query[:1], tokens)
    with torch.no_grad(), pytest.raises(ValueError, match="text_tokens"):
        model.forward_batch(support, labels, query, None)
    with torch.no_grad(), pytest.raises(ValueError, match="video_states=True needs"):
        model.forward_batch(support, labels, query, tokens, video_states=True)


def test_class_token_output_is_the_block_output_at_the_class_token(kit) -> None:
    model = kit.build()
    kit.randomize_adapters(model)
    ep = kit.episode(model, way=2, shot=2, query=1)
    from pipeline.model.alignment import task_mask

    visual, adapters = model.clip.visual, model.vision.blocks[-1]
    block = visual.transformer.resblocks[-1]
    with torch.no_grad():
        x = model.vision_prefix(torch.cat([ep.support, ep.query]))  # (V, T, P+1, D)
        mask = task_mask(4, 2, "faithful")
        full = adapters(block, x, mask)[..., 0, :]  # (V, T, D)
        torch.testing.assert_close(adapters.class_token_output(block, x, mask), full, **ATOL)
        done = adapters.class_token_output(block, adapters.video_part(block, x), mask, video_done=True)
        torch.testing.assert_close(done, full, **ATOL)
