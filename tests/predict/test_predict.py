"""`fsar export` / `fsar predict` and FewShotClassifier on a tiny trained pipeline (fsar-micro, synthetic mp4s)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from predict_helpers import link_support

from pipeline.predict import FewShotClassifier
from pipeline.predict.bundle import BUNDLE_FILE, WEIGHTS_FILE

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def support_dir(tmp_path_factory, test_videos) -> Path:
    return link_support(tmp_path_factory.mktemp("support"), test_videos, shots=1)


@pytest.fixture(scope="module")
def queries(test_videos) -> list[str]:
    return [p for paths in test_videos.values() for p in paths[1:]]  # never a support clip


@pytest.fixture(scope="module")
def clf(bundle_dir, backbone_file, support_dir) -> FewShotClassifier:
    return FewShotClassifier.load(bundle_dir, backbone=backbone_file, device="cpu").fit(support_dir)


def test_bundle_holds_trainable_weights_and_identity_not_clip(bundle_dir, trained, backbone_file):
    from safetensors.torch import load_file

    from pipeline.artifacts import sha256_file

    cfg, _, refs = trained
    meta = json.loads((bundle_dir / BUNDLE_FILE).read_text())
    weights = load_file(str(bundle_dir / WEIGHTS_FILE))
    ckpt = torch.load(Path(refs["train"].path) / "best.pt", weights_only=False)
    assert sorted(weights) == sorted(ckpt["trainable"])  # only the adapters, never the frozen CLIP
    assert all(torch.equal(weights[k], ckpt["trainable"][k]) for k in weights)
    assert meta["format_version"] == 1
    assert meta["backbone"] == {
        "clip": "fsar-micro", "image_size": 32, "weights": "file", "file": "micro.pt", "sha256": sha256_file(backbone_file),
        "artifact_file": None, "quick_gelu": False, "path": str(backbone_file.resolve()), "bundled": "backbone/micro.pt",
    }  # fmt: skip
    assert (bundle_dir / "backbone" / "micro.pt").read_bytes() == backbone_file.read_bytes()  # small: copied into the bundle
    assert meta["model"]["pretrained"] is None  # the backbone section names the file
    assert meta["preprocessing"]["num_frames"] == cfg.protocol.num_frames == 4
    assert meta["preprocessing"]["storage_size"] == 40 and meta["preprocessing"]["crop_size"] == 32
    assert meta["lineage"] == {k: str(refs[k]) for k in ("train", "frames", "embeddings", "descriptions")}
    text = (bundle_dir / BUNDLE_FILE).read_text() + (bundle_dir / "descriptions.json").read_text()
    assert str(trained[1].root) not in text and text.count(str(backbone_file.parent)) == 1  # only where the backbone was


def test_export_is_deterministic(trained, tmp_path, bundle_dir):
    from pipeline.predict import export_bundle

    cfg, store, _ = trained
    again = export_bundle(cfg, store, tmp_path / "again")
    for name in (BUNDLE_FILE, WEIGHTS_FILE, "descriptions.json"):
        assert (again / name).read_bytes() == (bundle_dir / name).read_bytes(), name


def test_predict_table(clf, queries, test_videos):
    df = clf.predict(queries)
    classes = sorted(test_videos)
    assert clf.classes == classes and list(df["query"]) == queries
    assert {"query", "prediction", "visual_only", "semantic_only", "error"} <= set(df.columns)
    assert [c for c in df.columns if c.startswith("score:")] == [f"score:{c}" for c in classes]
    assert df["prediction"].isin(classes).all() and df["error"].isna().all()
    full = df[[f"score:{c}" for c in classes]].to_numpy()
    vis, sem = df[[f"vis:{c}" for c in classes]].to_numpy(), df[[f"sem:{c}" for c in classes]].to_numpy()
    np.testing.assert_allclose(full, vis * sem, rtol=1e-6)
    assert (np.array(classes)[full.argmax(1)] == df["prediction"]).all()
    assert (np.array(classes)[vis.argmax(1)] == df["visual_only"]).all()
    assert all(clf.texts[c].source == "bundle" for c in classes)  # known classes need no LLM


def test_inductive_scores_do_not_depend_on_other_queries(bundle_dir, backbone_file, support_dir, queries):
    many = FewShotClassifier.load(bundle_dir, backbone=backbone_file, device="cpu", batch_size=4).fit(support_dir).predict(queries)
    cols = [c for c in many.columns if c.startswith(("score:", "vis:", "sem:"))]
    alone = FewShotClassifier.load(bundle_dir, backbone=backbone_file, device="cpu").fit(support_dir)
    for i in (0, len(queries) - 1):
        one = alone.predict([queries[i]])
        np.testing.assert_allclose(one[cols].to_numpy()[0], many[cols].to_numpy()[i], rtol=1e-5, atol=1e-6)
    reordered = alone.predict(queries[::-1])
    np.testing.assert_allclose(reordered[cols].to_numpy()[::-1], many[cols].to_numpy(), rtol=1e-5, atol=1e-6)


def test_a_model_trained_with_the_released_scores_is_refused(bundle_dir, backbone_file):
    from pipeline.contract import StageError
    from pipeline.predict.bundle import load_bundle

    bundle = load_bundle(bundle_dir, backbone=backbone_file)
    bundle.meta["model"]["scores"] = "released"  # as `fsar export` writes a model trained with model.scores=released
    with pytest.raises(StageError, match="model.scores=released"):
        FewShotClassifier(bundle, device="cpu")
