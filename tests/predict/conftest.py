"""A tiny trained pipeline with a backbone *file* (so bundles name it by sha256), its bundle, and support/query folders."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
DESCRIPTIONS_TESTS = str(HERE.parent / "descriptions")  # fake_openai_server.FakeLLM
for _path in (str(HERE), DESCRIPTIONS_TESTS):
    if _path not in sys.path:
        sys.path.insert(0, _path)


@pytest.fixture(scope="session")
def backbone_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """fsar-micro with seeded random weights, saved as a checkpoint file (what model.pretrained=FILE loads)."""
    from pipeline.model import load_backbone

    torch.manual_seed(7)
    path = tmp_path_factory.mktemp("backbone") / "micro.pt"
    torch.save(load_backbone("fsar-micro", None, 32).clip.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def trained(synthetic_root: Path, tiny_overrides: list[str], backbone_file: Path, tmp_path_factory: pytest.TempPathFactory):
    """(config, store, refs) of descriptions -> frames -> embeddings -> train at the tiny size."""
    from pipeline import embeddings, frames
    from pipeline.artifacts import ArtifactStore
    from pipeline.config import load_config
    from pipeline.descriptions import run as describe
    from pipeline.train import stage as train

    root = tmp_path_factory.mktemp("predict-artifacts")
    cfg = load_config(
        "demo",
        overrides=[
            f"dataset.video_root={synthetic_root}", f"artifacts={root}", *tiny_overrides,
            f"model.pretrained={backbone_file}", "model.quick_gelu=false", "descriptions.cache=false", "evaluate.episodes=2",
        ],
    )  # fmt: skip
    store = ArtifactStore(root)
    refs = {"frames": frames.run(cfg, {}, store), "descriptions": describe(cfg, {}, store)}
    refs["embeddings"] = embeddings.run(cfg, {"descriptions": refs["descriptions"]}, store)
    refs["train"] = train.run(cfg, {k: refs[k] for k in ("frames", "embeddings")}, store)
    return cfg, store, refs


@pytest.fixture(scope="session")
def evaluated(trained):
    """The evaluate stage's artifact of the trained run (2 saved test episodes)."""
    from pipeline.registry import run_stage

    cfg, store, refs = trained
    return run_stage("evaluate", cfg, {k: refs[k] for k in ("frames", "embeddings", "train")}, store=store)


@pytest.fixture(scope="session")
def bundle_dir(trained, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pipeline.predict import export_bundle

    cfg, store, _ = trained
    return export_bundle(cfg, store, tmp_path_factory.mktemp("bundles") / "tiny")


@pytest.fixture(scope="session")
def test_videos(trained) -> dict[str, list[str]]:
    """{test class: [its usable video files]} from the frames index."""
    _, store, refs = trained
    index = store.load("frames", refs["frames"].dataset, refs["frames"].version)
    ok = index[(index["split"] == "test") & (index["status"] == "ok")]
    out: dict[str, list[str]] = {}
    for cls, path in zip(ok["class"], ok["source_path"]):
        out.setdefault(cls, []).append(path)
    return out
