"""Batched evaluation episodes: the same rows, predictions and scores as one episode at a time, cached or not."""

from __future__ import annotations

import pytest
import torch

from pipeline.config import ConfigError
from pipeline.datasets import get_dataset
from pipeline.fewshot.episodes import EpisodeSampler
from pipeline.evaluate.stage import METHODS
from pipeline.fewshot import scoring
from pipeline.fewshot.episodes import videos_by_class
from pipeline.fewshot.prepare import prepare


def _randomize(model, seed: int = 3) -> None:
    """Seeded random adapters (zero-init ones would make every episode look alike)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.1)


@pytest.fixture(scope="module", params=["faithful", "inductive"])
def setup(request, tiny):
    cfg, _, refs = tiny
    cfg = cfg.override(f"model.task_context={request.param}")
    torch.manual_seed(0)
    model, loader, frames = prepare(cfg, refs, torch.device("cpu"))
    _randomize(model)
    model.eval()
    vids, _ = videos_by_class(frames.index, "test", cfg.protocol.num_frames)
    episodes = EpisodeSampler(vids, 3, 1, 2, seed=5).take(5)  # N=3, K=1, Q=2 per class: 6 queries
    return model, loader, episodes, get_dataset(cfg.dataset).order_pairs()


@pytest.mark.parametrize("cache", [True, False])
def test_batched_scores_equal_one_episode_at_a_time(setup, cache: bool) -> None:
    model, loader, episodes, _ = setup
    scorer = scoring.EpisodeScorer(model, loader, cache=cache, episodes_per_batch=3)
    single = [scorer.scores(ep) for ep in episodes]
    batched = [s for batch in scoring.episode_batches(episodes, 3) for s in scorer.scores_batch(batch).unbind()]
    assert len(batched) == len(episodes)
    for one, many in zip(single, batched, strict=True):
        assert torch.equal(one.prediction, many.prediction)
        for field in ("logits", "vis", "sem"):
            torch.testing.assert_close(getattr(many, field), getattr(one, field), atol=1e-5, rtol=1e-5)
    protos = scorer.prototype_scores_batch(episodes[:3])  # (3, 6, 3)
    for b, ep in enumerate(episodes[:3]):
        torch.testing.assert_close(protos[b], scorer.prototype_scores(ep), atol=1e-6, rtol=1e-6)


def test_score_episodes_rows_do_not_depend_on_the_batch_size(setup) -> None:
    model, loader, episodes, pairs = setup
    assert pairs  # synthetic classes come in order pairs
    one = scoring.score_episodes(scoring.EpisodeScorer(model, loader, cache=True, episodes_per_batch=1), episodes, True, pairs)
    batched = scoring.EpisodeScorer(model, loader, cache=True, episodes_per_batch=2)
    many = scoring.score_episodes(batched, episodes, True, pairs)
    assert len(batched._video) == len({v for ep in episodes for v in ep.support + ep.query})  # once per video
    assert len(one) == len(episodes) * len(METHODS)
    assert one == many  # same episodes, methods, predictions and accuracies, in the same order
    # and the per-episode path the evaluation used before batching gives the same predictions
    scorer = scoring.EpisodeScorer(model, loader, cache=False)
    full = [r["predictions"] for r in one if r["method"] == "task_adapter_pp"]
    assert full == [scorer.scores(ep).prediction.tolist() for ep in episodes]


def test_episode_batches_keep_order_and_layout() -> None:
    vids = {f"c{i}": [f"c{i}/v{j}" for j in range(4)] for i in range(4)}
    a = EpisodeSampler(vids, 3, 1, 1, seed=0).take(5)
    b = EpisodeSampler(vids, 3, 2, 1, seed=0).take(2)  # another K: never batched with the others
    batches = scoring.episode_batches([*a, *b, a[0]], 2)
    assert [len(x) for x in batches] == [2, 2, 1, 2, 1]
    assert [ep for x in batches for ep in x] == [*a, *b, a[0]]
    with pytest.raises(ValueError, match="share N, K and Q"):
        scoring._check_layout([a[0], b[0]])


def test_episodes_per_batch_setting(tiny) -> None:
    cfg = tiny[0]
    assert cfg.evaluate.episodes_per_batch == "auto"
    assert scoring.episodes_per_batch_for("auto", torch.device("cpu")) == 1
    assert scoring.episodes_per_batch_for("auto", torch.device("cuda")) == 64
    assert scoring.episodes_per_batch_for(cfg.override("evaluate.episodes_per_batch=3").evaluate.episodes_per_batch, torch.device("cpu")) == 3
    for bad in ("0", "many", "true"):
        with pytest.raises(ConfigError, match="episodes_per_batch"):
            cfg.override(f"evaluate.episodes_per_batch={bad}")
