"""evaluate.choose_by_support: per episode and class, the candidate and order the supports fit best (never the queries)."""

from __future__ import annotations

import pandas as pd
from audit_helpers import scripts_of

from pipeline.fewshot.episodes import episodes_from_frame
from pipeline.fewshot.scoring import EpisodeScorer
from pipeline.registry import run_stage


def test_choose_by_support_scores_what_the_supports_fit(chosen_by_videos, oracle, synthetic_root, monkeypatch):
    cfg, store, refs = chosen_by_videos  # the rule kept every script reversed; candidate 1 is the true one
    scripts = scripts_of(synthetic_root)
    inputs = {k: refs[k] for k in ("frames", "embeddings", "train")}
    plain = run_stage("evaluate", cfg, inputs, store=store)
    assert "choose_by_support" not in store.manifest(plain)["config"]["evaluate"]  # off: versions as before

    looked_at: list[list[str]] = []
    frozen = EpisodeScorer.frozen_features  # the oracle's
    monkeypatch.setattr(EpisodeScorer, "frozen_features", lambda scorer, ids: looked_at.append(list(ids)) or frozen(scorer, ids))
    on = cfg.override("evaluate.choose_by_support=true")
    ref = run_stage("evaluate", on, inputs, store=store)
    assert ref.version != plain.version
    df = store.load("evaluate", "synthetic", ref.version)
    assert set(df["method"]) == {"task_adapter_pp", "by_support"}
    same = df[df["method"] == "task_adapter_pp"].reset_index(drop=True)
    pd.testing.assert_frame_equal(same, store.load("evaluate", "synthetic", plain.version))  # the paper's rows do not change
    episodes = episodes_from_frame(store.load("evaluate", "synthetic", ref.version, table="episode_list.parquet"))
    assert looked_at == [list(ep.support) for ep in episodes]  # the supports of each episode, never a query
    choices = store.load("evaluate", "synthetic", ref.version, table="support_choices.parquet")
    assert len(choices) == len(episodes) * cfg.protocol.way
    for cls, cand, order in zip(choices["class"], choices["candidate"], choices["order"]):
        sentences = scripts[cls][::-1] if cand == 0 else scripts[cls]
        assert [sentences[i] for i in order] == scripts[cls]  # the true order, whichever candidate carries it
    assert "by_support/file" in store.manifest(ref)["summary"]
