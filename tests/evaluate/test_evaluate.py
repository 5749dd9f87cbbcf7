from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline import artifacts
from pipeline.artifacts import ArtifactStore
from pipeline.contract import StageError
from pipeline.fewshot.episodes import episodes_from_frame
from pipeline.evaluate import stage as evaluate
from pipeline.evaluate.combine import combine
from pipeline.fewshot import scoring
from pipeline.fewshot.prepare import prepare
from pipeline.registry import run_stage
from pipeline.train import stage as train


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory):
    cfg, _, refs = tiny
    store = ArtifactStore(tmp_path_factory.mktemp("eval-art"))
    tr = train.run(cfg, refs, store)
    return cfg, store, {**refs, "train": tr}


def test_cached_and_uncached_evaluation_are_identical(trained):
    cfg, store, refs = trained
    model, loader, frames = prepare(cfg, refs, torch.device("cpu"))
    model.load_trainable_state_dict(torch.load(Path(refs["train"].path) / "best.pt", weights_only=False)["trainable"])
    model.eval()
    from pipeline.fewshot.episodes import EpisodeSampler, videos_by_class

    vids, _ = videos_by_class(frames.index, "test", cfg.protocol.num_frames)
    episodes = EpisodeSampler(vids, 5, 1, 1, seed=9).take(4)
    cached = scoring.EpisodeScorer(model, loader, cache=True)
    plain = scoring.EpisodeScorer(model, loader, cache=False)
    for ep in episodes:
        a, b = cached.scores(ep), plain.scores(ep)
        assert torch.equal(a.logits.argmax(-1), b.logits.argmax(-1))
        torch.testing.assert_close(a.logits, b.logits, rtol=1e-5, atol=1e-5)
    assert len(cached._prefix) == len({v for ep in episodes for v in ep.support + ep.query})


def test_evaluate_artifact(trained):
    cfg, store, refs = trained
    ref = run_stage("evaluate", cfg, refs, store=store)
    df = artifacts.load("evaluate", "synthetic", root=store.root)
    assert {"episode", "method", "accuracy", "descriptions", "predictions", "labels", "classes"} <= set(df.columns)
    assert set(df["method"]) == set(evaluate.METHODS)
    assert df.groupby("method")["episode"].nunique().eq(cfg.evaluate.episodes).all()
    folder = store.local_path(ref)
    summary = json.loads((folder / "summary.json").read_text())
    full = next(r for r in summary["results"] if r["method"] == "task_adapter_pp")
    accs = df[df["method"] == "task_adapter_pp"]["accuracy"].to_numpy()
    assert full["mean"] == pytest.approx(accs.mean()) and full["ci95"] == pytest.approx(1.96 * accs.std() / np.sqrt(len(accs)))
    assert {"report.md", "accuracy.png", "confusion.png", "episode_list.parquet", "confusion.parquet"} <= {p.name for p in folder.iterdir()}
    assert "Task-Adapter++" in (folder / "report.md").read_text()
    # synthetic classes come in order pairs: each method reports how often the true class beats its partner
    assert {"pair_right", "pair_asked"} <= set(df.columns) and (df["pair_right"] <= df["pair_asked"]).all()
    for r in summary["results"]:
        if df[df["method"] == r["method"]]["pair_asked"].sum():
            assert 0 <= r["order_pairs"]["accuracy"] <= 1


def test_pair_outcomes_count_only_present_partners():
    from pipeline.fewshot.episodes import Episode

    ep = Episode(0, 0, ("up", "down", "grow"), ("u", "d", "g"), ("u2", "d2", "g2"), 1, 1)
    scores = np.array([[0.9, 0.1, 0.0], [0.8, 0.2, 0.0], [0.0, 0.0, 1.0]])  # query "down" prefers "up": wrong
    pairs = {"up": "down", "down": "up", "grow": "shrink", "shrink": "grow"}
    assert scoring.pair_outcomes(scores, ep, pairs) == (1, 2)


def test_same_seed_same_episodes_and_other_shots(trained):
    cfg, store, refs = trained
    a = run_stage("evaluate", cfg, refs, store=store)
    b = run_stage("evaluate", cfg.override("evaluate.shot=2"), refs, store=store)
    assert a.version != b.version
    ea = episodes_from_frame(store.load("evaluate", "synthetic", a.version, table="episode_list.parquet"))
    eb = episodes_from_frame(store.load("evaluate", "synthetic", b.version, table="episode_list.parquet"))
    assert all(e.shot == 1 for e in ea) and all(e.shot == 2 and len(e.support) == 10 for e in eb)
    again = run_stage("evaluate", cfg.override("evaluate.cache=false"), refs, store=store)
    in_memory = run_stage("evaluate", cfg.override("evaluate.prefix=false"), refs, store=store)
    assert again.version == in_memory.version  # the cache is not part of the version, the prefix artifact input is
    assert "prefix" in store.manifest(a)["inputs"] and "prefix" not in store.manifest(again)["inputs"]
    for other in (again, in_memory):  # same rows with or without the cache and the prefix artifact
        pd.testing.assert_frame_equal(store.load("evaluate", "synthetic", other.version), store.load("evaluate", "synthetic", a.version))
    with_init = run_stage("evaluate", cfg.override("evaluate.untrained=true"), refs, store=store)
    df = store.load("evaluate", "synthetic", with_init.version)
    assert set(df["method"]) == {*evaluate.METHODS, "untrained"}
    assert df.groupby("method")["episode"].apply(list).map(tuple).nunique() == 1  # same episodes for every method


def test_prefix_in_memory_equals_the_prefix_artifact_and_auto_picks_by_device(trained, monkeypatch):
    from pipeline import prefix

    cfg, store, refs = trained
    artifact = run_stage("evaluate", cfg.override("evaluate.prefix=artifact"), refs, store=store)
    memory = run_stage("evaluate", cfg.override("evaluate.prefix=memory"), refs, store=store)
    assert "prefix" in store.manifest(artifact)["inputs"] and "prefix" not in store.manifest(memory)["inputs"]
    rows = [store.load("evaluate", "synthetic", r.version) for r in (artifact, memory)]
    assert rows[0]["predictions"].map(len).sum() > 0
    pd.testing.assert_frame_equal(*rows)  # the same predictions, accuracies and order-pair outcomes
    assert prefix.mode(cfg) == "artifact" and cfg.evaluate.prefix == "auto"  # auto on CPU: the artifact
    assert prefix.mode(cfg.override("evaluate.prefix=true")) == "artifact" and prefix.mode(cfg.override("evaluate.prefix=false")) == "memory"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU is visible:
    assert prefix.mode(cfg.override("evaluate.device=auto")) == "memory"  # the faithful prefix depends on the checkpoint
    assert not prefix.enabled(cfg.override("evaluate.device=auto"))
    assert prefix.mode(cfg.override("evaluate.device=cuda")) == "memory"
    assert prefix.mode(cfg.override("evaluate.device=auto", "model.temporal_embedding_at=first_adapted")) == "artifact"  # shared
    assert prefix.mode(cfg.override("evaluate.device=cpu")) == "artifact"


def test_combine_stacks_evaluations_of_the_same_episodes(trained):
    cfg, store, refs = trained
    a = run_stage("evaluate", cfg.override("evaluate.descriptions_label=script"), refs, store=store)
    b = run_stage("evaluate", cfg.override("evaluate.descriptions_label=llm"), refs, store=store)
    both = combine(store, {"script": a, "llm": b}, "both")
    df = artifacts.load("evaluate", "synthetic", root=store.root)  # the latest: the combined one
    assert store.resolve("evaluate", "synthetic").version == both.version
    assert set(df["descriptions"]) == {"script", "llm"} and len(df) == 2 * len(store.load("evaluate", "synthetic", a.version))
    other = run_stage("evaluate", cfg.override("evaluate.seed=77"), refs, store=store)
    with pytest.raises(StageError, match="different episodes"):
        combine(store, {"script": a, "other": other}, "mixed")


def _predicted_class_by_query(row: pd.Series, ep) -> dict[str, tuple[str, str]]:
    """{query video: (true class, predicted class)} of one evaluate row scored on `ep`'s query order."""
    return {v: (ep.classes[t], ep.classes[p]) for v, t, p in zip(ep.query, row["labels"], row["predictions"], strict=True)}


def test_fsar_scores_predict_the_same_in_either_query_order(trained):
    cfg, store, refs = trained
    by_class = run_stage("evaluate", cfg, refs, store=store)
    shuffled = run_stage("evaluate", cfg.override("evaluate.query_order=shuffled"), refs, store=store)
    assert shuffled.version != by_class.version
    saved = [episodes_from_frame(store.load("evaluate", "synthetic", r.version, table="episode_list.parquet")) for r in (by_class, shuffled)]
    assert saved[0] == saved[1]  # the same saved episodes, as sampled
    rows = [store.load("evaluate", "synthetic", r.version).set_index(["episode", "method"]) for r in (by_class, shuffled)]
    assert sorted(rows[0].index) == sorted(rows[1].index)
    for ep in saved[0]:
        moved = ep.with_query_order("shuffled")
        for method in evaluate.METHODS:
            a, b = rows[0].loc[(ep.index, method)], rows[1].loc[(ep.index, method)]
            assert _predicted_class_by_query(a, ep) == _predicted_class_by_query(b, moved), (ep.index, method)
    assert any(ep.with_query_order("shuffled").query != ep.query for ep in saved[0])


def test_released_scores_are_reported_in_both_query_orders(trained):
    cfg, store, refs = trained
    checkpoint = store.verified_path(refs["train"], "best.pt")  # fsar-trained weights, scored the released way
    released = cfg.override("model.scores=released", f"evaluate.checkpoint={checkpoint}", "evaluate.baselines=false")
    ref = run_stage("evaluate", released, {k: refs[k] for k in ("frames", "embeddings")}, store=store)
    df = store.load("evaluate", "synthetic", ref.version)
    assert set(df["method"]) == {"task_adapter_pp", "task_adapter_pp_queries_shuffled"}
    summary = json.loads((store.local_path(ref) / "summary.json").read_text())
    assert summary["scores"] == "released" and "query_order" not in summary  # by_class: fsar's default order
    report = (store.local_path(ref) / "report.md").read_text()
    assert "Task-Adapter++, queries shuffled" in report and "model.scores=released" in report
    ours = run_stage("evaluate", cfg.override(f"evaluate.checkpoint={checkpoint}", "evaluate.baselines=false"),
                     {k: refs[k] for k in ("frames", "embeddings")}, store=store)
    summary = json.loads((store.local_path(ours) / "summary.json").read_text())
    assert "scores" not in summary and "query_order" not in summary  # fsar's defaults leave the summary as it was
