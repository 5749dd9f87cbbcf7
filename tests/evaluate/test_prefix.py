"""The vision-prefix artifact: built once, reused, and giving the same results as no artifact."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pipeline.artifacts import ArtifactStore
from pipeline.cli import build_config
from pipeline.registry import STAGES, plan, run_stage

pytestmark = pytest.mark.slow
VARIANT = "model.temporal_embedding_at=first_adapted"


def _cfg(root, synthetic_root, tiny_overrides, *extra: str):
    return build_config("synthetic", "demo", [*tiny_overrides, "evaluate.episodes=6", *extra], str(root), str(synthetic_root))


def _scores(store: ArtifactStore, ref) -> pd.DataFrame:
    df = store.load("evaluate", "synthetic", ref.version)
    return df.sort_values(["episode", "method"]).reset_index(drop=True)


def _through(cfg, last: str) -> dict:
    refs = {}
    for spec in STAGES.values():
        if spec.name in ("backbone",) or not spec.enabled(cfg):
            continue
        refs[spec.name] = run_stage(spec.name, cfg)
        if spec.name == last:
            break
    return refs


def test_variant_prefix_is_shared_by_checkpoints_and_equals_no_artifact(tmp_path, synthetic_root, tiny_overrides):
    root = tmp_path / "art"
    store = ArtifactStore(root)
    a = _cfg(root, synthetic_root, tiny_overrides, VARIANT)
    refs_a = _through(a, "evaluate")
    assert not refs_a["prefix"].skipped and set(store.manifest(refs_a["prefix"])["inputs"]) == {"frames"}
    # another checkpoint (another training seed) and another evaluation seed: the same prefix artifact, not rebuilt
    b = _cfg(root, synthetic_root, tiny_overrides, VARIANT, "train.seed=7", "evaluate.seed=5")
    refs_b = _through(b, "evaluate")
    assert refs_b["train"].version != refs_a["train"].version
    assert refs_b["prefix"].version == refs_a["prefix"].version and refs_b["prefix"].skipped
    assert store.manifest(refs_b["evaluate"])["inputs"]["prefix"]["version"] == refs_a["prefix"].version
    assert len(store.catalog().query("stage == 'prefix'")) == 1
    # the same evaluation without the artifact (in-memory prefix): identical rows
    off = _cfg(root, synthetic_root, tiny_overrides, VARIANT, "train.seed=7", "evaluate.seed=5", "evaluate.prefix=false")
    assert "prefix" not in [p.stage for p in plan(off)]
    ref_off = run_stage("evaluate", off)
    pd.testing.assert_frame_equal(_scores(store, refs_b["evaluate"]), _scores(store, ref_off))


def test_faithful_prefix_follows_the_checkpoint_and_float16_keeps_predictions(tmp_path, synthetic_root, tiny_overrides):
    root = tmp_path / "art"
    store = ArtifactStore(root)
    cfg = _cfg(root, synthetic_root, tiny_overrides, "evaluate.untrained=true")
    assert cfg.model.temporal_embedding_at == "input"  # the faithful method is the default
    refs = _through(cfg, "evaluate")
    assert store.manifest(refs["prefix"])["inputs"]["train"]["version"] == refs["train"].version
    other = _cfg(root, synthetic_root, tiny_overrides, "evaluate.untrained=true", "train.seed=7")
    assert {p.stage: p for p in plan(other)}["prefix"].version != refs["prefix"].version  # a new checkpoint, a new prefix
    ref_off = run_stage("evaluate", _cfg(root, synthetic_root, tiny_overrides, "evaluate.untrained=true", "evaluate.prefix=false"))
    pd.testing.assert_frame_equal(_scores(store, refs["evaluate"]), _scores(store, ref_off))
    half = _cfg(root, synthetic_root, tiny_overrides, "evaluate.untrained=true", "evaluate.prefix_dtype=float16")
    ref_half = run_stage("evaluate", half, {**{k: refs[k] for k in ("frames", "embeddings", "train")}, "prefix": run_stage("prefix", half)})
    full, hf = _scores(store, refs["evaluate"]), _scores(store, ref_half)
    assert (full["predictions"].map(list) == hf["predictions"].map(list)).all()
    states = np.load(store.local_path(store.ref("prefix", "synthetic", {p.stage: p for p in plan(half)}["prefix"].version)) / "states.npy")
    assert states.dtype == np.float16


def test_prefix_of_another_checkpoint_is_refused(tmp_path, synthetic_root, tiny_overrides):
    from pipeline.errors import FsarError

    root = tmp_path / "art"
    cfg = _cfg(root, synthetic_root, tiny_overrides)
    refs = _through(cfg, "prefix")
    other = _cfg(root, synthetic_root, tiny_overrides, "train.seed=7")
    train_b = run_stage("train", other)
    with pytest.raises(FsarError, match="temporal embedding of train/"):
        run_stage("evaluate", other, {"frames": refs["frames"], "embeddings": refs["embeddings"], "train": train_b, "prefix": refs["prefix"]})


def test_config_dump_records_the_variant(tmp_path, synthetic_root, tiny_overrides):
    cfg = _cfg(tmp_path / "art", synthetic_root, tiny_overrides, VARIANT)
    ref = _through(cfg, "train")["train"]
    stored = json.loads((ArtifactStore(tmp_path / "art").local_path(ref) / "config.json").read_text())
    assert stored["model"]["temporal_embedding_at"] == "first_adapted"
