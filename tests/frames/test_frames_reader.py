"""FrameStore: row-exact reads, clear errors, TSN sampling and the train/eval clip transforms."""

from __future__ import annotations

import pickle
import time

import numpy as np
import pytest
import torch
from frames_helpers import FRAMES, make_config, resized

from pipeline.frames import CLIP_MEAN, CLIP_STD, FrameStore, FrameStoreError, crop_box, run, sample_indices


@pytest.fixture(scope="module")
def built(video_set, tmp_path_factory):
    root, truth = video_set
    art = tmp_path_factory.mktemp("reader-artifacts")
    from pipeline.artifacts import ArtifactStore

    run(make_config(root / "videos.csv", storage_size=40, max_frames=16), {}, ArtifactStore(art))
    return art, truth


def test_frames_returns_the_stored_frames(built):
    art, truth = built
    fs = FrameStore.open("custom", root=art)
    assert len(fs) == 12 and set(fs.index.columns) >= {"video_id", "class", "split", "source_path", "num_frames", "fps",
                                                         "stored_indices", "shard", "offsets", "status", "error"}
    vid = "videos/brackets [1].mp4"
    stored = fs.stored_indices(vid)
    assert len(stored) == 16 and stored[0] == 0 and stored[-1] == FRAMES - 1
    want = [int(stored[9]), int(stored[2]), int(stored[2])]  # any order, repeats allowed
    x = fs.frames(vid, want)
    assert x.dtype == torch.uint8 and tuple(x.shape) == (3, 40, 40, 3)
    ref = resized(truth["brackets [1].mp4"], 40)[want].astype(int)
    assert np.abs(x.numpy().astype(int) - ref).mean() < 6
    assert torch.equal(x[1], x[2])
    t0 = time.perf_counter()
    for _ in range(20):
        fs.frames(vid, stored[::2][:8])
    assert (time.perf_counter() - t0) / 20 < 0.05  # milliseconds, not a decode


def test_errors_name_the_problem(built):
    art, _ = built
    fs = FrameStore.open("custom", root=art)
    with pytest.raises(FrameStoreError, match="not stored"):
        fs.frames("videos/plain.mp4", [FRAMES + 5])
    missing = sorted(set(range(FRAMES)) - set(fs.stored_indices("videos/plain.mp4").tolist()))[0]
    with pytest.raises(FrameStoreError, match=rf"frame\(s\) \[{missing}\] .* not stored"):
        fs.frames("videos/plain.mp4", [0, missing])
    with pytest.raises(FrameStoreError, match="decoding failed \\(too_few_frames"):
        fs.frames("videos/short.mp4", [0])
    with pytest.raises(FrameStoreError, match="not in this frames artifact"):
        fs.clip("videos/nope.mp4", 8)
    with pytest.raises(ValueError, match="larger than the stored frames"):
        fs.clip("videos/plain.mp4", 8, "eval", size=64)


def test_usable_videos_and_pickling(built):
    art, _ = built
    fs = FrameStore.open("custom", root=art)
    assert sorted(fs.usable_videos("val")["video_id"]) == ["videos/brackets [1].mp4", "videos/brackets1.mp4"]
    assert len(fs.usable_videos()) == 6
    fs.frames("videos/plain.mp4", [0])
    clone = pickle.loads(pickle.dumps(fs))  # e.g. to DataLoader workers: no open files travel
    assert torch.equal(clone.frames("videos/plain.mp4", [0]), fs.frames("videos/plain.mp4", [0]))


def test_sample_indices_tsn():
    stored = np.arange(0, 64, 2)  # 32 stored frames
    ev = sample_indices(stored, 8, "eval")
    assert ev.tolist() == [4, 12, 20, 28, 36, 44, 52, 60]  # centre of each 4-frame segment, as released
    assert sample_indices(stored, 8, "eval").tolist() == ev.tolist()
    draws = np.stack([sample_indices(stored, 8, "train", rng) for rng in range(200)])
    seg = draws // 8  # which segment of 4 stored frames each draw fell into
    assert (seg == np.arange(8)).all()  # one frame in each segment
    assert len(np.unique(draws[:, 0])) == 4  # every frame of a segment gets drawn
    assert np.array_equal(sample_indices(stored, 8, "train", 3), sample_indices(stored, 8, "train", np.random.default_rng(3)))
    assert sample_indices([5, 6, 7], 8, "eval").tolist() == [5, 5, 5, 6, 6, 7, 7, 7]  # fewer than T: frames repeat
    with pytest.raises(ValueError, match="mode"):
        sample_indices(stored, 8, "test")


def test_clip_train_and_eval(built):
    art, _ = built
    fs = FrameStore.open("custom", root=art)
    vid = "videos/plain.mp4"
    ev = fs.clip(vid, 8, "eval", size=32)
    assert ev.dtype == torch.float32 and tuple(ev.shape) == (8, 3, 32, 32)
    assert torch.equal(ev, fs.clip(vid, 8, "eval", size=32))  # deterministic
    idx = sample_indices(fs.stored_indices(vid), 8, "eval")
    raw = fs.frames(vid, idx)[:, 4:36, 4:36].permute(0, 3, 1, 2).float() / 255  # centre crop of 40 -> 32
    expect = (raw - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    assert torch.allclose(ev, expect, atol=1e-6)
    tr = [fs.clip(vid, 8, "train", size=32, rng=seed) for seed in range(6)]
    assert all(tuple(t.shape) == (8, 3, 32, 32) for t in tr)
    assert torch.equal(tr[0], fs.clip(vid, 8, "train", size=32, rng=0))  # seeded
    assert any(not torch.equal(tr[0], t) for t in tr[1:])  # random frames and crops
    unit = fs.clip(vid, 4, "eval", size=40, mean=(0, 0, 0), std=(1, 1, 1))
    assert 0.0 <= unit.min() and unit.max() <= 1.0
    assert crop_box(257, 257, 224, "eval") == (16, 16)  # torchvision CenterCrop's rounding
    tops = {crop_box(257, 257, 224, "train", s)[0] for s in range(50)}
    assert len(tops) > 10 and min(tops) >= 0 and max(tops) <= 33
