"""The stage contract: skipped when built, versioned by what changes the output, resumable after kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
from frames_helpers import Recorder, artifact_files, make_config, write_list

from pipeline.artifacts import ArtifactStore
from pipeline.frames import ShardUnit, decode_unit, run
from pipeline.frames import isolation
from pipeline.frames.decode import DecodeSettings
from pipeline.frames.stage import _stat, list_videos, version_config


def _version(cfg):
    videos = list_videos(cfg)
    return json.dumps(version_config(cfg, videos, [_stat(v.path) for v in videos]), sort_keys=True)


def test_second_run_is_skipped(video_set, store):
    root, _ = video_set
    cfg = make_config(write_list(root / "skip.csv", ["plain.mp4", "short.mp4"]))
    first = run(cfg, {}, store)
    rec = Recorder()
    again = run(cfg.override("frames.workers=2", "frames.max_failed_fraction=0.9"), {}, store, map_units=rec)
    assert again == first and again.skipped and rec.units == []


def test_version_follows_output_fields_and_video_files(video_set, tmp_path):
    root, _ = video_set
    lst = write_list(root / "version.csv", ["plain.mp4"])
    base = make_config(lst)
    assert _version(base) == _version(base.override("frames.workers=3", "frames.max_failed_fraction=0.5"))
    for change in ("frames.storage_size=32", "frames.max_frames=9", "frames.jpeg_quality=80", "frames.videos_per_shard=4",
                   "frames.shard_max_mb=2", "frames.video_timeout_s=60", "protocol.num_frames=4"):
        assert _version(base.override(change)) != _version(base), change
    before = _version(base)
    video = root / "videos" / "plain.mp4"
    st = video.stat()
    os.utime(video, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # a video file changed
    try:
        assert _version(base) != before
    finally:
        os.utime(video, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_shards_are_bounded_and_row_groups_hold_one_video(video_set, tmp_path):
    import pyarrow.parquet as pq

    root, _ = video_set
    videos = list_videos(make_config(write_list(root / "bound.csv", ["plain.mp4", "with space.mp4", "brackets [1].mp4"])))
    settings = DecodeSettings(size=64, max_frames=None, min_frames=8)
    roomy = decode_unit(ShardUnit(0, tuple(videos), str(tmp_path / "roomy"), settings, shard_max_bytes=1 << 20))
    assert list(roomy["files"]) == ["shards/00000-00.parquet"]
    assert [r["offsets"] for r in roomy["rows"]] == [[0, 20], [20, 40], [40, 60]]
    md = pq.ParquetFile(tmp_path / "roomy" / "shards/00000-00.parquet").metadata
    assert [md.row_group(i).num_rows for i in range(md.num_row_groups)] == [20, 20, 20]  # one video per row group
    # the next video would pass the bound: it starts a new part (bound 1 byte: one video per part)
    tight = ShardUnit(0, tuple(videos), str(tmp_path / "tight"), settings, shard_max_bytes=1)
    out = decode_unit(tight)
    assert sorted(out["files"]) == ["shards/00000-00.parquet", "shards/00000-01.parquet", "shards/00000-02.parquet"]
    assert [r["offsets"] for r in out["rows"]] == [[0, 20]] * 3
    assert decode_unit(tight)["decoded"] is False  # its marker says it is done


KILLER = textwrap.dedent(
    """
    import json, os, signal, sys
    from pipeline.artifacts import ArtifactStore
    from pipeline.config import load_config
    from pipeline.frames import ShardUnit, decode_unit, run

    overrides, root, kill_after = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3])

    def map_then_die(fn, units):
        for i, unit in enumerate(units):
            if i == kill_after:
                os.kill(os.getpid(), signal.SIGKILL)  # no clean-up of any kind, like kill -9
            yield fn(unit)

    run(load_config(None, overrides=overrides), {}, ArtifactStore(root), map_units=map_then_die)
    """
)


def test_killed_run_resumes_and_equals_an_uninterrupted_one(video_set, tmp_path):
    root, _ = video_set
    cfg = make_config(root / "videos.csv", videos_per_shard=2)  # 12 videos -> 6 units
    overrides = {f"frames.{k}": v for k, v in cfg.dump()["frames"].items()}
    overrides |= {"dataset.name": "custom", "dataset.video_list": cfg.dataset.video_list}
    killed_root = tmp_path / "killed"
    script = tmp_path / "killer.py"
    script.write_text(KILLER, encoding="utf-8")
    proc = subprocess.run([sys.executable, str(script), json.dumps(overrides), str(killed_root), "2"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    store = ArtifactStore(killed_root)
    assert store.manifests("frames") == []  # nothing published
    staging = next((killed_root / ".staging" / "frames" / "custom").iterdir())
    finished = sorted(int(p.name[6:11]) for p in staging.glob(".unit-*.json"))
    assert len(finished) == 2  # the two units done before the kill
    unfinished = sorted(set(range(6)) - set(finished))
    # what a kill in the middle of a unit would have left: a partial part and a temporary file
    (staging / "shards" / f"{unfinished[0]:05d}-00.parquet").write_bytes(b"half a shard")
    (staging / "shards" / f".{unfinished[0]:05d}-01.parquet.999-dead.tmp").write_bytes(b"junk")

    rec = Recorder()
    resumed = run(cfg, {}, store, map_units=rec)
    assert sorted(rec.units) == unfinished  # only the unfinished units were decoded
    fresh = run(cfg.override("frames.workers=2"), {}, ArtifactStore(tmp_path / "fresh"))  # default process pool
    assert resumed.version == fresh.version
    assert artifact_files(resumed.path) == artifact_files(fresh.path)  # same index, same shard bytes
    assert resumed.manifest()["files"] == fresh.manifest()["files"]
    assert not any(p.name.startswith(".") for p in Path(resumed.path).rglob("*"))  # markers and temporaries are gone
    assert not staging.exists()


def test_a_video_that_kills_its_decoder_is_recorded(video_set, store, monkeypatch):
    import multiprocessing

    import pipeline.frames.decode as decode
    import pipeline.frames.stage as stage

    root, _ = video_set
    real = decode.decode_video

    def die_on_brackets(path, settings):  # noqa: ANN001 - a decoder segfault or the OOM killer on one bad file
        if "[1]" in path:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(path, settings)

    monkeypatch.setattr(isolation, "decode_video", die_on_brackets)  # forked decoding processes inherit it (forced: other tests may leave threads)
    monkeypatch.setattr(isolation, "_can_fork", lambda: True)
    monkeypatch.setattr(stage, "mp_context", lambda: multiprocessing.get_context("fork"))  # pool workers too
    names = ["plain.mp4", "with space.mp4", "brackets [1].mp4", "brackets1.mp4"]
    ref = run(make_config(write_list(root / "crash.csv", names), videos_per_shard=2, workers=2), {}, store)
    index = pd.read_parquet(Path(ref.path) / "index.parquet").set_index("video_id")
    assert index.loc["videos/brackets [1].mp4", "reason"] == "decoder_crash"
    assert "signal 9 (SIGKILL)" in index.loc["videos/brackets [1].mp4", "error"]
    assert (index.drop("videos/brackets [1].mp4")["status"] == "ok").all()  # its unit's other video too
    assert ref.manifest()["summary"]["failed_by_reason"] == {"decoder_crash": 1}
