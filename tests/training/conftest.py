"""A tiny, real pipeline for training/evaluation tests: synthetic mp4s -> frames -> descriptions -> embeddings."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml

from pipeline.artifacts import ArtifactStore
from pipeline.config import load_config
from pipeline.datasets import get_dataset
from pipeline.stage import build_once



def script_descriptions(cfg, store, corpus_path):
    """A descriptions artifact from the synthetic scripts (the descriptions stage's own tests cover its backends)."""
    corpus = yaml.safe_load(corpus_path.read_text())
    spec = get_dataset(cfg.dataset)
    rows = [
        {"split": s, "class": c, "k": k, "text": t}
        for s, c in spec.all_classes()
        for k, t in enumerate(corpus[c]["sub_act_en_li"][: cfg.protocol.num_sub_actions])
    ]
    return build_once(
        store, "descriptions", cfg.dataset.name, config={"corpus": str(corpus_path)}, inputs={},
        build=lambda st: st.write_parquet("descriptions.parquet", pd.DataFrame(rows)), main="descriptions.parquet",
    )


@pytest.fixture(scope="session")
def tiny(synthetic_root, tiny_overrides, tmp_path_factory):
    """(config, store, {frames, descriptions, embeddings} refs) at the smallest honest size."""
    from pipeline import embeddings, frames

    root = tmp_path_factory.mktemp("training-artifacts")
    cfg = load_config("demo", overrides=[f"dataset.video_root={synthetic_root}", f"artifacts={root}", *tiny_overrides, "train.checkpoint_every=1", "evaluate.episodes=4"])
    store = ArtifactStore(root)
    fr = frames.run(cfg, {}, store)
    desc = script_descriptions(cfg, store, synthetic_root / "scripts.yaml")
    emb = embeddings.run(cfg, {"descriptions": desc}, store)
    return cfg, store, {"frames": fr, "descriptions": desc, "embeddings": emb}
