from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline import artifacts
from pipeline.artifacts import ArtifactStore
from pipeline.contract import StageError
from pipeline.fewshot.episodes import EpisodeSampler
from pipeline.fewshot.episodes import videos_by_class
from pipeline.registry import run_stage
from pipeline.train import stage as train
from pipeline.train.trainer import STATE, Trainer


def test_two_step_smoke(tiny, tmp_path):
    cfg, _, refs = tiny
    store = ArtifactStore(tmp_path / "out")
    ref = train.run(cfg, refs, store)
    metrics = artifacts.load("train", "synthetic", root=store.root)
    assert list(metrics["step"]) == [1, 2] and {"loss", "accuracy", "epoch", "lr"} <= set(metrics.columns)
    assert np.isfinite(metrics["loss"]).all() and metrics["accuracy"].between(0, 1).all()
    folder = store.local_path(ref)
    assert {"best.pt", "last.pt", "config.json", "validation.parquet"} <= {p.name for p in folder.iterdir()}
    assert not (folder / STATE).exists()
    ckpt = torch.load(folder / "best.pt", weights_only=False)
    assert ckpt["identity"]["model"]["clip"] == "fsar-micro" and ckpt["config"]["protocol"]["num_frames"] == 4
    assert train.run(cfg, refs, store).skipped


def test_resume_after_a_kill_continues_from_the_checkpoint(tiny, tmp_path, monkeypatch):
    cfg, _, refs = tiny
    cfg = cfg.override("train.episodes_per_epoch=4", "train.checkpoint_every=1")
    clean = ArtifactStore(tmp_path / "clean")
    train.run(cfg, refs, clean)
    expected = clean.load("train", "synthetic")

    killed = ArtifactStore(tmp_path / "killed")
    real_step = Trainer.train_step

    def dying_step(self, batches):
        if self.state["step"] == 2:
            raise KeyboardInterrupt("simulated kill")
        return real_step(self, batches)

    monkeypatch.setattr(Trainer, "train_step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        train.run(cfg, refs, killed)
    assert killed.catalog().empty  # nothing half-written is visible
    monkeypatch.setattr(Trainer, "train_step", real_step)
    calls = []
    monkeypatch.setattr(Trainer, "train_step", lambda self, batches: calls.append(self.state["step"]) or real_step(self, batches))
    train.run(cfg.override("train.resume=true"), refs, killed)
    assert calls == [2, 3]  # only the steps after the checkpoint ran
    got = killed.load("train", "synthetic")
    pd.testing.assert_frame_equal(got, expected)
    # equal version, equal bytes: every data file of the resumed run (checkpoints, config.json included)
    resumed, straight = killed.resolve("train", "synthetic"), clean.resolve("train", "synthetic")
    assert resumed.version == straight.version
    assert killed.manifest(resumed)["files"] == clean.manifest(straight)["files"]


def _ddp_worker(rank: int, world: int, port: int, cfg_json: str, refs: dict, out: str) -> None:
    import torch.distributed as dist

    from pipeline.artifacts import ArtifactRef
    from pipeline.config import Config

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world))
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    cfg = Config.model_validate_json(cfg_json)
    trainer = Trainer(cfg, {k: ArtifactRef.from_dict(v) for k, v in refs.items()}, Path(out))
    trainer.step(0)
    if rank == 0:
        torch.save(trainer.model.trainable_state_dict(), Path(out) / "ddp.pt")
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_equal_one_process_over_the_same_episodes(tiny, tmp_path):
    cfg, _, refs = tiny
    cfg = cfg.override("train.optimizer=sgd", "train.lr=0.5")  # a large step makes any difference visible
    ref_dicts = {k: v.to_dict() for k, v in refs.items()}
    torch.multiprocessing.spawn(_ddp_worker, args=(2, _free_port(), cfg.model_dump_json(), ref_dicts, str(tmp_path)), nprocs=2, join=True)
    ddp = torch.load(tmp_path / "ddp.pt")

    single = Trainer(cfg.override("train.episodes_per_step=2"), refs, tmp_path)
    before = {k: v.clone() for k, v in single.model.trainable_state_dict().items()}
    single.step(0)
    after = single.model.trainable_state_dict()
    moved = sum(float((after[k] - before[k]).abs().sum()) for k in after)
    assert moved > 0
    for k in after:
        torch.testing.assert_close(ddp[k], after[k], rtol=1e-4, atol=1e-6)


def test_short_training_lowers_the_training_loss(tiny, tmp_path):
    cfg, _, refs = tiny
    cfg = cfg.override("train.optimizer=adam", "train.lr=0.003", "train.episodes_per_epoch=40")
    trainer = Trainer(cfg, refs, tmp_path)
    fixed = [trainer.sampler.episode(i) for i in range(6)]

    def mean_loss() -> float:
        trainer.model.eval()
        losses = []
        with torch.no_grad():
            for ep in fixed:
                b = trainer.loader.batch(ep, "eval", None)
                s = trainer.model(b.support, b.support_labels, b.query, b.text_tokens, text_prefix=b.text_prefix)
                losses.append(float(trainer.model.loss(s, b.query_labels)))
        return float(np.mean(losses))

    start = mean_loss()
    for step in range(40):
        trainer.step(step % 6)  # the six fixed episodes, over and over
    assert mean_loss() < 0.8 * start


def test_failed_and_short_videos_are_excluded_and_counted():
    index = pd.DataFrame(
        {
            "video_id": ["a", "b", "c", "d"],
            "class": ["x", "x", "y", "y"],
            "split": ["train"] * 4,
            "status": ["ok", "failed", "ok", "ok"],
            "stored_indices": [[0, 1, 2, 3], [], [0, 1], [0, 1, 2, 3, 4]],
        }
    )
    vids, excluded = videos_by_class(index, "train", 4)
    assert vids == {"x": ["a"], "y": ["d"]}
    assert excluded == {"failed": 1, "fewer than 4 stored frames": 1}


def test_splits_never_mix_classes(tiny):
    cfg, store, refs = tiny
    from pipeline.datasets import get_dataset
    from pipeline.frames import FrameStore

    index = FrameStore.open("synthetic", refs["frames"].version, root=store.root).index
    spec = get_dataset(cfg.dataset)
    for split in ("train", "val", "test"):
        vids, _ = videos_by_class(index, split, cfg.protocol.num_frames)
        for ep in EpisodeSampler(vids, 5, 1, 1, seed=3, split=split).take(20):
            assert set(ep.classes) <= set(spec.classes(split))
            assert all(index.set_index("video_id").loc[v, "split"] == split for v in ep.support + ep.query)


def test_checkpoint_from_another_backbone_is_refused(tiny, tmp_path):
    cfg, store, refs = tiny

    ref = train.run(cfg, refs, ArtifactStore(tmp_path / "t"))
    ckpt = str(Path(ref.path) / "best.pt")
    other = cfg.override("model.vision_adapted_layers=2", f"evaluate.checkpoint={ckpt}")
    with pytest.raises(StageError, match="model.vision_adapted_layers: checkpoint 1 vs config 2"):
        run_stage("evaluate", other, refs, store=ArtifactStore(tmp_path / "e"))
    with pytest.raises(StageError, match="does not exist"):
        run_stage("evaluate", cfg.override(f"evaluate.checkpoint={tmp_path / 'nope.pt'}"), refs, store=ArtifactStore(tmp_path / "e"))


def test_missing_descriptions_for_a_class_is_an_error(tiny, tmp_path):
    cfg, store, refs = tiny
    from pipeline import embeddings
    from pipeline.contract import build_once

    desc = store.load("descriptions", "synthetic", refs["descriptions"].version)
    partial = desc[desc["class"] != desc["class"].iloc[0]]
    other = ArtifactStore(tmp_path / "p")
    ref = build_once(other, "descriptions", "synthetic", config={"partial": 1}, inputs={},
                     build=lambda st: st.write_parquet("descriptions.parquet", partial), main="descriptions.parquet")
    with pytest.raises(StageError, match=f"lacks 1 class\\(es\\).*{desc['class'].iloc[0]}"):
        embeddings.run(cfg, {"descriptions": ref}, other)


def test_a_checkpoint_picked_on_test_says_so(tiny, tmp_path, caplog):
    from pipeline.evaluate.report import lineage_markdown

    cfg, _, refs = tiny
    store = ArtifactStore(tmp_path / "out")
    with caplog.at_level("WARNING", logger="fsar"):
        ref = train.run(cfg.override("train.val_split=test"), refs, store)
    assert "picked on the test split" in caplog.text and "defect 2" in caplog.text
    ckpt = torch.load(store.local_path(ref) / "best.pt", weights_only=False)
    assert ckpt["val_split"] == "test" and ckpt["config"]["train"]["val_split"] == "test"
    assert ref.version != train.run(cfg, refs, store).version
    cells = lineage_markdown({"x": {"checkpoint": {"file": "best.pt", "val_accuracy": 0.5, "val_split": "test"}}})
    assert "test accuracy 50.0% (picked on test: optimistic)" in cells
