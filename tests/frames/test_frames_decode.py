"""Decoding through the stage: exact frame counts and indices, pixels within JPEG tolerance, bad input recorded."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from frames_helpers import BAD, FRAMES, GOOD, Recorder, make_config, resized, write_list
from PIL import Image

from pipeline import artifacts
from pipeline.contract import StageError
from pipeline.frames import SHARD_SCHEMA, run
from pipeline.frames.decode import DecodeSettings, VideoFailure, decode_video, spread_indices
from pipeline.frames.isolation import IsolatedDecoder


def _jpegs(path, shard, start, stop):
    t = pq.read_table(path / shard).slice(start, stop - start)
    return t.column("frame_index").to_pylist(), [np.asarray(Image.open(io.BytesIO(b))) for b in t.column("jpeg").to_pylist()]


def _assert_frames_match(stored, truth, indices):
    """Each stored frame is within JPEG/H.264 tolerance of its true frame and closer to it than to any other."""
    for k, img in zip(indices, stored):
        err = np.abs(img.astype(int)[None] - truth.astype(int)).mean(axis=(1, 2, 3))  # distance to every true frame
        assert err[k] < 6.0, (k, err[k])
        assert int(np.argmin(err)) == k


def test_good_videos_are_stored_exactly(video_set, store):
    root, truth = video_set
    # storage 48: a width decord 0.6.0 could not output (fsar used decord before format 3); PyAV has no such gap
    cfg = make_config(write_list(root / "good.csv", list(GOOD)), storage_size=48)
    ref = run(cfg, {}, store)
    index = artifacts.load("frames", "custom", root=store.root).set_index("video_id")
    path = store.local_path(ref)
    assert len(index) == len(GOOD) and (index["status"] == "ok").all()
    for name, (cls, split, size, _) in GOOD.items():
        row = index.loc[f"videos/{name}"]
        assert (row["class"], row["split"]) == (cls, split)
        assert row["source_path"] == str(root / "videos" / name)
        assert row["num_frames"] == FRAMES and row["fps"] == pytest.approx(12.0)
        assert list(row["stored_indices"]) == list(range(FRAMES))
        assert row["decoder"] == "pyav" and pd.isna(row["warnings"])
        frame_index, imgs = _jpegs(path, row["shard"], *row["offsets"])
        assert frame_index == list(range(FRAMES)) and imgs[0].shape == (48, 48, 3)
        _assert_frames_match(imgs, resized(truth[name], 48), range(FRAMES))
    # a shard is the explicit schema; the glob look-alike "brackets1.mp4" kept its own frames (checked above)
    assert pq.read_schema(path / index["shard"].iloc[0]).remove_metadata() == SHARD_SCHEMA
    manifest = ref.manifest()
    assert manifest["summary"]["by_decoder"] == {"pyav": 6} and manifest["summary"]["failed"] == 0
    assert manifest["config"]["videos"]["count"] == len(GOOD)


def test_max_frames_spread_evenly_and_resized(video_set, store):
    root, truth = video_set
    cfg = make_config(write_list(root / "two.csv", ["plain.mp4", "narrow48.mp4"]), storage_size=32, max_frames=8)
    ref = run(cfg, {}, store)
    index = artifacts.load("frames", "custom", root=store.root).set_index("video_id")
    want = spread_indices(FRAMES, 8)
    assert want == [1, 3, 6, 8, 11, 13, 16, 18]
    for name in ("plain.mp4", "narrow48.mp4"):
        row = index.loc[f"videos/{name}"]
        assert list(row["stored_indices"]) == want and row["num_frames"] == FRAMES
        assert row["decoder"] == "pyav"
        frame_index, imgs = _jpegs(store.local_path(ref), row["shard"], *row["offsets"])
        assert frame_index == want and imgs[0].shape == (32, 32, 3)
        _assert_frames_match(imgs, resized(truth[name], 32), want)


def test_bad_input_is_recorded_with_its_reason(video_set, store, capsys, fsar_lines):
    root, _ = video_set
    cfg = make_config(root / "videos.csv")
    ref = run(cfg, {}, store)
    index = artifacts.load("frames", "custom", root=store.root).set_index("video_id")
    for name, (_, _, reason) in BAD.items():
        row = index.loc[f"videos/{name}"]
        assert row["status"] == "failed" and row["reason"] == reason, (name, row["reason"], row["error"])
        assert row["error"] and len(row["stored_indices"]) == 0 and pd.isna(row["shard"])
    assert index.loc["videos/short.mp4", "num_frames"] == 5 and "fewer than T=8" in index.loc["videos/short.mp4", "error"]
    assert index.loc["videos/corrupt.mp4", "error"].startswith("PyAV cannot open it: ")
    assert (index.loc[[f"videos/{n}" for n in GOOD], "status"] == "ok").all()
    summary = ref.manifest()["summary"]
    assert summary["failed_by_reason"] == {"empty_file": 1, "missing_file": 1, "not_a_file": 1, "too_few_frames": 1, "unreadable": 2}
    assert summary["videos"] == len(GOOD) + len(BAD) and summary["ok"] == len(GOOD)
    assert "6 failed (empty_file: 1, missing_file: 1, not_a_file: 1, too_few_frames: 1, unreadable: 2)" in capsys.readouterr().out


def test_too_many_failures_fail_the_stage_and_keep_the_work(video_set, store):
    root, _ = video_set
    strict = make_config(root / "videos.csv", max_failed_fraction=0.2)
    with pytest.raises(StageError, match=r"6 of 12 videos \(50.0%\) could not be used, more than frames.max_failed_fraction=0.2"):
        run(strict, {}, store)
    assert store.manifests("frames") == []  # nothing published
    # a looser threshold does not change the version's content: the decoded shards are reused
    rec = Recorder()
    ref = run(make_config(root / "videos.csv"), {}, store, map_units=rec)
    assert rec.units == [] and ref.manifest()["summary"]["failed"] == 6


def test_every_video_missing_points_at_the_video_root(tmp_path, store):
    lst = tmp_path / "videos.csv"
    lst.write_text("path,label,split\nnowhere/a.mp4,a,train\nnowhere/b.mp4,b,test\n", encoding="utf-8")
    with pytest.raises(StageError, match="none of the 2 videos .* the video root .* is probably wrong"):
        run(make_config(lst), {}, store)


def test_decode_video_direct(video_set):
    root, truth = video_set
    with pytest.raises(VideoFailure) as err:
        decode_video(str(root / "videos" / "short.mp4"), DecodeSettings(size=16, min_frames=8))
    assert err.value.reason == "too_few_frames" and err.value.num_frames == 5
    settings = DecodeSettings(size=32, max_frames=4)
    a = decode_video(str(root / "videos" / "plain.mp4"), settings)
    assert a.decoder == "pyav" and a.num_frames == FRAMES and a.stored_indices == [2, 7, 12, 17] and a.passes == 1
    imgs = [np.asarray(Image.open(io.BytesIO(j))) for j in a.jpegs]
    _assert_frames_match(imgs, resized(truth["plain.mp4"], 32), a.stored_indices)
    with IsolatedDecoder(settings) as decoder:  # the same bytes through the decoding process
        b = decoder.decode(str(root / "videos" / "plain.mp4"))
        with pytest.raises(VideoFailure) as err:
            decoder.decode(str(root / "videos" / "corrupt.mp4"))
        assert err.value.reason == "unreadable"
        assert decoder.decode(str(root / "videos" / "plain.mp4")).jpegs == a.jpegs  # the process goes on after a failure
    assert (b.stored_indices, b.jpegs, b.num_frames) == (a.stored_indices, a.jpegs, a.num_frames)
