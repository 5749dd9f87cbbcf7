"""FewShotClassifier scores the evaluate stage's saved episodes exactly as the evaluate stage does."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.predict import FewShotClassifier

pytestmark = pytest.mark.slow


def _episode_paths(store, refs, ep):
    index = store.load("frames", refs["frames"].dataset, refs["frames"].version)
    path = dict(zip(index["video_id"], index["source_path"]))
    support = {c: [] for c in ep.classes}
    for vid, label in zip(ep.support, ep.support_labels):
        support[ep.classes[label]].append(path[vid])
    return support, [path[v] for v in ep.query]


def _stage_scores(cfg, store, refs, ep):
    """The evaluate stage's own scorer (cached prefix, per-class text) on one episode."""
    from pipeline.fewshot.checkpoints import load_checkpoint
    from pipeline.fewshot.prepare import prepare
    from pipeline.fewshot.scoring import EpisodeScorer

    model, loader, _ = prepare(cfg, {k: refs[k] for k in ("frames", "embeddings")}, torch.device("cpu"))
    model.load_trainable_state_dict(load_checkpoint(f"{refs['train'].path}/best.pt")["trainable"])
    return EpisodeScorer(model.eval(), loader, cache=True).scores(ep)


@pytest.mark.parametrize("context", ["faithful", "inductive"])
def test_scores_equal_the_evaluate_stage(trained, evaluated, bundle_dir, backbone_file, context):
    from pipeline.fewshot.episodes import episodes_from_frame

    cfg, store, refs = trained
    cfg = cfg.override(f"model.task_context={context}")
    episodes = episodes_from_frame(store.load("evaluate", evaluated.dataset, evaluated.version, table="episode_list.parquet"))
    ep = episodes[0]
    support, queries = _episode_paths(store, refs, ep)
    df = FewShotClassifier.load(bundle_dir, backbone=backbone_file, device="cpu", task_context=context).fit(support).predict(queries)
    want = _stage_scores(cfg, store, refs, ep)
    for name, expected in (("vis", want.vis), ("sem", want.sem)):
        got = df[[f"{name}:{c}" for c in ep.classes]].to_numpy()
        np.testing.assert_allclose(got, expected.numpy(), rtol=1e-4, atol=1e-5)
    if context == cfg.model.task_context and context == "faithful":  # the stage's artifact was made in this mode
        rows = store.load("evaluate", evaluated.dataset, evaluated.version)
        row = rows[(rows["episode"] == ep.index) & (rows["method"] == "task_adapter_pp")].iloc[0]
        assert [ep.classes[p] for p in row["predictions"]] == df["prediction"].tolist()
