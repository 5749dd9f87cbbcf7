"""The audit stage on the tiny synthetic world: its artifact, the test-video warning, choose=videos downstream.

The separation test swaps the frozen towers for an oracle that sees each video's true sub-actions in order (the
session's random fsar-micro sees nothing; the demo's pre-trained tiny CLIP takes minutes to build): it checks the
stage and the measure, the demo's figures with the real backbone are in docs/audit.md.
"""

from __future__ import annotations

import json
import logging
import re

import pandas as pd
import pytest
from audit_helpers import scripts_of

from pipeline import artifacts
from pipeline.artifacts import ArtifactStore
from pipeline.contract import StageError
from pipeline.registry import STAGES, plan, run_stage


def test_the_audit_separates_true_scripts_from_reversed_ones(tiny, oracle, reversed_corpus, tmp_path):
    cfg, _, refs = tiny
    store = ArtifactStore(tmp_path / "art")
    cfg = cfg.override(f"artifacts={store.root}", "audit.min_videos=2")
    found = {}
    for name, corpus in (("true", cfg.descriptions.corpus), ("reversed", reversed_corpus)):
        c = cfg.override(f"descriptions.corpus={corpus}")
        desc = run_stage("descriptions", c, {}, store=store)  # the file backend reads the corpus
        ref = run_stage("audit", c, {"descriptions": desc, "frames": refs["frames"]}, store=store)
        found[name] = store.load("audit", "synthetic", ref.version)
    true, rev = found["true"], found["reversed"]
    assert set(true["split"]) == {"train", "val"} and true.groupby("class").size().eq(1).all() and true["chosen"].all()
    assert true["order_agreement"].mean() > 0.9 and not true["order_contradicted"].any()
    assert rev["order_agreement"].mean() < 0.1 and rev["order_contradicted"].mean() > 0.5
    assert (true["margin_mean"] > 0).all() and (rev["margin_mean"] < 0).all()
    assert true["relevance"].between(0, 1).all() and true["videos"].eq(3).all()


def test_the_audit_artifact_with_the_frozen_towers(tiny, tmp_path, caplog, fsar_lines):
    """The real frozen fsar-micro: the table's shape and columns, the report, and test videos only when asked, in words."""
    cfg, _, refs = tiny
    store = ArtifactStore(tmp_path / "art")
    cfg = cfg.override(f"artifacts={store.root}", "audit.min_videos=4")  # 3 videos per class: every class too_few_videos
    inputs = {"descriptions": refs["descriptions"], "frames": refs["frames"]}
    ref = run_stage("audit", cfg, inputs, store=store)
    df = artifacts.load("audit", "synthetic", root=store.root)
    assert {"class", "split", "candidate", "chosen", "order_agreement", "order_contradicted", "fits_other_class", "too_few_videos",
            "relevance", "margin_mean", "margin_ci95", "best_order", "videos"} <= set(df.columns)
    assert set(df["split"]) == {"train", "val"} and df["too_few_videos"].all() and not df["test_videos"].any()
    assert df["order_agreement"].between(0, 1).all() and len(df) == 18
    manifest = store.manifest(ref)
    assert manifest["summary"]["test_videos_audited"] is False and set(manifest["summary"]["splits"]) == {"train", "val"}
    folder = store.local_path(ref)
    assert (folder / "agreement.png").is_file() and "TEST VIDEOS" not in (folder / "report.md").read_text()
    assert len(pd.read_parquet(folder / "videos.parquet")) == 18 * 3

    caplog.set_level(logging.INFO, logger="fsar")
    with_test = cfg.override("audit.splits=[test, train]")
    assert with_test.audit.splits == ("train", "test")
    ref = run_stage("audit", with_test, inputs, store=store)
    df = store.load("audit", "synthetic", ref.version)
    assert set(df["split"]) == {"train", "test"} and df.loc[df["split"] == "test", "test_videos"].all()
    assert store.manifest(ref)["summary"]["test_videos_audited"] is True
    assert "TEST VIDEOS WERE LOOKED AT" in (store.local_path(ref) / "report.md").read_text()
    assert any(r.getMessage().startswith("audit test (TEST VIDEOS WERE LOOKED AT") for r in caplog.records)


def test_choose_videos_gives_embeddings_the_order_the_videos_support(chosen_by_videos, tiny, synthetic_root, tmp_path):
    videos, store, refs = chosen_by_videos
    scripts = scripts_of(synthetic_root)
    rule = videos.override("descriptions.choose=rule")
    assert STAGES["embeddings"].upstream_of(rule) == ("descriptions",) and STAGES["embeddings"].upstream_of(videos) == ("descriptions", "audit")
    # the descriptions version does not depend on the choice (the audit reads descriptions); the audit's and embeddings' do
    pins = {"descriptions": refs["descriptions"].version}
    versions = {name: {p.stage: p.version for p in plan(c, store, pins)} for name, c in (("rule", rule), ("videos", videos))}
    assert versions["videos"]["audit"] == refs["audit"].version and versions["videos"]["embeddings"] == refs["embeddings"].version
    assert versions["rule"]["audit"] != versions["videos"]["audit"] and versions["rule"]["embeddings"] != versions["videos"]["embeddings"]
    assert plan(rule, store, stages=["descriptions"])[0].version == plan(videos, store, stages=["descriptions"])[0].version

    table = store.load("audit", "synthetic", refs["audit"].version)
    assert len(table) == 2 * 18 and table.groupby("class")["chosen"].sum().eq(1).all()
    assert table.loc[table["kept"], "order_contradicted"].all() and (table.loc[~table["kept"], "order_agreement"] > 0.9).all()
    chosen = table[table["chosen"]]
    assert (chosen["chosen_by"] == "videos").all()
    for cls, sentences, order in zip(chosen["class"], chosen["sentences"], chosen["chosen_order"]):
        assert [sentences[i] for i in order] == scripts[cls]  # the true order, whichever candidate carries it
    assert set(store.manifest(refs["embeddings"])["inputs"]) == {"descriptions", "audit"}
    other = tiny[2]["descriptions"]  # an audit of other descriptions (a pin, say) is refused in one line, before any work
    with pytest.raises(StageError, match=f"was made from descriptions {refs['descriptions'].version}, not descriptions/synthetic/{other.version}"):
        run_stage("embeddings", videos, {"descriptions": other, "audit": refs["audit"]}, store=store)
    prompts = store.load("embeddings", "synthetic", refs["embeddings"].version)
    for (split, cls), part in prompts.groupby(["split", "class"]):
        said = [p.split(": ", 1)[1] for p in part.sort_values("k")["prompt"]]
        assert said == (scripts[cls] if split in ("train", "val") else scripts[cls][::-1])  # test classes keep the rule's choice
    # a bundle of the run carries the sentences the model was trained with, and names the audit in its lineage
    from pipeline.predict import export_bundle

    bundle = export_bundle(videos, store, tmp_path / "bundle", train=refs["train"])
    meta, known = (json.loads((bundle / name).read_text()) for name in ("bundle.json", "descriptions.json"))
    assert meta["lineage"]["audit"] == str(refs["audit"])
    assert all(known[c]["sentences"] == (s if known[c]["split"] != "test" else s[::-1]) for c, s in scripts.items())


def test_audit_settings_are_checked():
    from pipeline.config import ConfigError, load_config

    assert load_config(None).audit.splits == ("train", "val")  # test videos only when asked for
    assert load_config(None, overrides=["audit.splits=[val, train]"]).audit.splits == ("train", "val")  # one order, one version
    for bad, message in (("audit.splits=[]", "at least one split"), ("audit.splits=[train, train]", "listed twice"),
                         ("audit.splits=[dev]", "audit.splits"), ("descriptions.choose=best", "descriptions.choose")):
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_config(None, overrides=[bad])
