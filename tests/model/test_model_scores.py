"""Episode scoring: [query, class] orientation, task_context semantics, the cached prefix paths."""

from __future__ import annotations

import pytest
import torch

ATOL = dict(atol=1e-5, rtol=1e-5)


def _scores(model, support, labels, query, tokens, **kw):
    with torch.no_grad():
        return model(support, labels, query, tokens, **kw)


@pytest.mark.parametrize("context", ["faithful", "inductive"])
def test_orientation_and_class_permutation(kit, context: str) -> None:
    model = kit.build({"task_context": context})
    kit.randomize_adapters(model)
    ep = kit.episode(model, way=3, shot=2, query=2)
    base = _scores(model, ep.support, ep.labels, ep.query, ep.tokens)
    for field in ("logits", "vis", "sem"):
        assert getattr(base, field).shape == (6, 3)
    torch.testing.assert_close(base.logits, model.cfg.logit_scale * base.vis * base.sem)
    perm = torch.tensor([2, 0, 1])  # old class c becomes class perm[c]
    tokens = torch.empty_like(ep.tokens)
    tokens[perm] = ep.tokens
    moved = _scores(model, ep.support, perm[ep.labels], ep.query, tokens)
    torch.testing.assert_close(moved.logits[:, perm], base.logits, **ATOL)


def test_support_order_does_not_matter(kit) -> None:
    model = kit.build()
    kit.randomize_adapters(model)
    ep = kit.episode(model, way=3, shot=2, query=1)
    order = torch.tensor([5, 0, 3, 1, 4, 2])
    base = _scores(model, ep.support, ep.labels, ep.query, ep.tokens)
    shuffled = _scores(model, ep.support[order], ep.labels[order], ep.query, ep.tokens)
    torch.testing.assert_close(shuffled.logits, base.logits, **ATOL)


def test_inductive_query_ignores_other_queries(kit) -> None:
    model = kit.build({"task_context": "inductive"})
    kit.randomize_adapters(model)
    ep = kit.episode(model, way=3, shot=1, query=2)
    extra = torch.randn(2, *ep.query.shape[1:])
    base = _scores(model, ep.support, ep.labels, ep.query, ep.tokens).logits  # (6, 3)
    for picked in ([0], [4, 1], [5, 3, 0, 2]):  # removed and reordered
        sub = _scores(model, ep.support, ep.labels, ep.query[picked], ep.tokens).logits
        torch.testing.assert_close(sub, base[picked], **ATOL)
    added = _scores(model, ep.support, ep.labels, torch.cat([extra[:1], ep.query, extra[1:]]), ep.tokens).logits
    torch.testing.assert_close(added[1:-1], base, **ATOL)


def test_faithful_query_sees_other_queries(kit) -> None:
    model = kit.build({"task_context": "faithful"})
    kit.randomize_adapters(model)
    ep = kit.episode(model, way=3, shot=1, query=2)
    base = _scores(model, ep.support, ep.labels, ep.query, ep.tokens).logits
    alone = _scores(model, ep.support, ep.labels, ep.query[:2], ep.tokens).logits
    assert not torch.allclose(alone, base[:2], atol=1e-4)


@pytest.mark.parametrize("embed_at", ["input", "first_adapted"])
def test_prefix_path_equals_full_path(kit, embed_at: str) -> None:
    model = kit.build({"temporal_embedding_at": embed_at, "subaction_index_embedding": True})
    kit.randomize_adapters(model)
    ep = kit.episode(model, way=3, shot=2, query=1)
    full = _scores(model, ep.support, ep.labels, ep.query, ep.tokens)
    with torch.no_grad():
        s_states, q_states = model.vision_prefix(ep.support), model.vision_prefix(ep.query)  # (B, T, P+1, D)
        text = model.text_prefix(ep.tokens.flatten(0, 1)).unflatten(0, ep.tokens.shape[:2])  # (N, S, ctx, D_t)
    assert s_states.shape == (6, 4, 17, 64) and text.shape == (*ep.tokens.shape, 64)
    cached = _scores(
        model, s_states, ep.labels, q_states, ep.tokens, text_prefix=text, support_is_prefix=True, query_is_prefix=True
    )
    torch.testing.assert_close(cached.logits, full.logits, atol=1e-6, rtol=1e-6)
    mixed = _scores(model, ep.support, ep.labels, q_states, ep.tokens, query_is_prefix=True)
    torch.testing.assert_close(mixed.logits, full.logits, atol=1e-6, rtol=1e-6)


def test_frozen_frame_features_are_open_clip(kit) -> None:
    model = kit.build()
    clips = torch.randn(2, 4, 3, 32, 32)
    with torch.no_grad():
        feats = model.frozen_frame_features(clips)
        ref = model.clip.encode_image(clips[1, 2:3])
    assert feats.shape == (2, 4, 64)
    torch.testing.assert_close(feats[1, 2:3], ref)


def test_loss_is_cross_entropy_of_logits(kit) -> None:
    model = kit.build()
    ep = kit.episode(model, way=2, shot=1, query=1)
    scores = model(ep.support, ep.labels, ep.query, ep.tokens)
    expected = torch.nn.functional.cross_entropy(scores.logits, ep.query_labels)
    torch.testing.assert_close(model.loss(scores, ep.query_labels), expected)


def test_bad_inputs_fail_clearly(kit) -> None:
    model = kit.build()
    ep = kit.episode(model, way=3, shot=1, query=1)
    with pytest.raises(ValueError, match="frames"):
        model(ep.support[:, :3], ep.labels, ep.query[:, :3], ep.tokens)
    with pytest.raises(ValueError, match="no support video"):
        model(ep.support, torch.tensor([0, 0, 2]), ep.query, ep.tokens)
    with pytest.raises(ValueError, match="0..2"):
        model(ep.support, torch.tensor([0, 1, 3]), ep.query, ep.tokens)
    with pytest.raises(ValueError, match="S=2"):
        model(ep.support, ep.labels, ep.query, ep.tokens[:, :1])


def test_released_scores_are_the_released_product_and_depend_on_the_query_order(kit) -> None:
    released = kit.build({"scores": "released"})
    kit.randomize_adapters(released)
    ours = kit.build()
    ours.load_state_dict(released.state_dict())
    ep = kit.episode(released, way=3, shot=1, query=1)  # query i belongs to class i, as the released sampler lays them out
    r = _scores(released, ep.support, ep.labels, ep.query, ep.tokens)
    f = _scores(ours, ep.support, ep.labels, ep.query, ep.tokens)
    torch.testing.assert_close(r.logits, released.cfg.logit_scale * r.vis * r.sem.T)  # row i: vis of query i x sem of class i
    torch.testing.assert_close((r.vis, r.sem), (f.vis, f.sem))  # the factors stay [query, class]
    torch.testing.assert_close(r.logits.diagonal(), f.logits.diagonal())  # the true class's score is the same in both
    perm = torch.tensor([2, 0, 1])
    moved_r = _scores(released, ep.support, ep.labels, ep.query[perm], ep.tokens)
    moved_f = _scores(ours, ep.support, ep.labels, ep.query[perm], ep.tokens)
    torch.testing.assert_close(moved_f.logits, f.logits[perm], **ATOL)  # fsar: the rows move with their queries
    assert not torch.allclose(moved_r.logits, r.logits[perm], **ATOL)  # released: the semantic factor points elsewhere
    batched = released.forward_batch(ep.support[None], ep.labels[None], ep.query[None], ep.tokens[None])
    torch.testing.assert_close(batched.logits[0], r.logits, **ATOL)
    with pytest.raises(ValueError, match="model.scores=released needs one query per class"):
        _scores(released, ep.support, ep.labels, ep.query[:2], ep.tokens)
