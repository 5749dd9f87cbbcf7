"""Fixtures of the audit tests: an oracle for the frozen towers, the reversed-scripts corpus; helpers importable."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

# The suite imports test files with --import-mode=importlib; make the helper module next to this file importable.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from audit_helpers import Oracle, scripts_of, two_candidates  # noqa: E402


def patch_towers(mp: pytest.MonkeyPatch, o: Oracle) -> Oracle:
    """The audit stage's and evaluate's frozen features replaced by the oracle's."""
    from pipeline.audit import stage as audit_stage
    from pipeline.evaluate import by_support
    from pipeline.fewshot.scoring import EpisodeScorer

    mp.setattr(audit_stage, "frame_features", o.frame_features)
    mp.setattr(audit_stage, "text_features", o.text_features)
    mp.setattr(by_support, "text_features", o.text_features)
    mp.setattr(EpisodeScorer, "frozen_features", lambda scorer, ids: o.frame_features(None, scorer.loader, ids, 0, 0))
    return o


@pytest.fixture()
def oracle(monkeypatch, synthetic_root):
    """The frozen towers replaced by an `Oracle` of the synthetic scripts, for one test."""
    return patch_towers(monkeypatch, Oracle(scripts_of(synthetic_root)))


@pytest.fixture(scope="session")
def chosen_by_videos(tiny, synthetic_root, tmp_path_factory):
    """A run whose rule kept every script reversed (candidate 1 is the true one), audited by the oracle with
    descriptions.choose=videos, then embedded and trained: (config, store, {descriptions, frames, audit, embeddings, train})."""
    from pipeline.artifacts import ArtifactStore
    from pipeline.registry import run_stage

    cfg, _, refs = tiny
    store = ArtifactStore(tmp_path_factory.mktemp("chosen-by-videos"))
    cfg = cfg.override(f"artifacts={store.root}", "audit.min_videos=2", "descriptions.choose=videos", "evaluate.baselines=false")
    with pytest.MonkeyPatch.context() as mp:
        patch_towers(mp, Oracle(scripts_of(synthetic_root)))
        out = {"descriptions": two_candidates(cfg, store, scripts_of(synthetic_root)), "frames": refs["frames"]}
        out["audit"] = run_stage("audit", cfg, {k: out[k] for k in ("descriptions", "frames")}, store=store)
        out["embeddings"] = run_stage("embeddings", cfg, {k: out[k] for k in ("descriptions", "audit")}, store=store)
        out["train"] = run_stage("train", cfg, {k: out[k] for k in ("frames", "embeddings")}, store=store)
    return cfg, store, out


@pytest.fixture()
def reversed_corpus(synthetic_root, tmp_path) -> Path:
    """The synthetic scripts with every class's sentences in reversed order (a file-backend corpus)."""
    corpus = yaml.safe_load((synthetic_root / "scripts.yaml").read_text())
    for entry in corpus.values():
        entry["sub_act_en_li"] = entry["sub_act_en_li"][::-1]
    path = tmp_path / "reversed.yaml"
    path.write_text(yaml.safe_dump(corpus, sort_keys=False))
    return path
