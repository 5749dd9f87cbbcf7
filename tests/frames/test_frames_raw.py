"""Raw storage (frames.storage_format=raw): the same samples as jpeg, its own version, CRC-checked pixel files."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from frames_helpers import make_config

from pipeline.artifacts import ArtifactError, ArtifactStore
from pipeline.frames import FrameStore, run
from pipeline.frames.shards import PIXELS_SUFFIX, pixels_name
from pipeline.frames.stage import plan_fields

SIZE = 40


@pytest.fixture(scope="module")
def pair(video_set, tmp_path_factory):
    """(jpeg ref, raw ref, raw artifact root) of the same videos and settings."""
    root, _ = video_set
    art = tmp_path_factory.mktemp("raw-artifacts")
    jpeg = run(make_config(root / "videos.csv", storage_size=SIZE, max_frames=16), {}, ArtifactStore(art / "jpeg"))
    raw = run(make_config(root / "videos.csv", storage_size=SIZE, max_frames=16, storage_format="raw"), {}, ArtifactStore(art / "raw"))
    return jpeg, raw, art / "raw"


def test_raw_samples_equal_jpeg_samples(pair):
    jpeg, raw, _ = pair
    a = FrameStore.open("custom", jpeg.version, root=jpeg.root)
    b = FrameStore.open("custom", raw.version, root=raw.root)
    assert a.index.drop(columns=["bytes", "shard"]).equals(b.index.drop(columns=["bytes", "shard"]))
    vids = list(b.usable_videos()["video_id"])
    assert len(vids) == 6
    for vid in vids:
        stored = b.stored_indices(vid)
        x = b.frames(vid, stored[[3, 0, 3, len(stored) - 1]])  # any order, repeats
        assert x.dtype == torch.uint8 and tuple(x.shape) == (4, SIZE, SIZE, 3)
        assert torch.equal(x, a.frames(vid, stored[[3, 0, 3, len(stored) - 1]]))  # the JPEG's pixels, bit for bit
        for mode in ("train", "eval"):
            assert torch.equal(b.clip(vid, 8, mode, 32, rng=5), a.clip(vid, 8, mode, 32, rng=5))
    ok = b.index[b.index["status"] == "ok"]
    assert (ok["bytes"] == ok["stored_indices"].map(len) * 3 * SIZE * SIZE).all()  # raw pixels, counted as stored
    clone = pickle.loads(pickle.dumps(b))  # DataLoader workers: no open pixel files travel
    assert torch.equal(clone.clip(vids[0], 8, "eval", 32), b.clip(vids[0], 8, "eval", 32))
    b.close()
    assert torch.equal(b.clip(vids[0], 8, "eval", 32), a.clip(vids[0], 8, "eval", 32))  # reopens after close


def test_raw_layout_version_and_checksums(pair, video_set):
    jpeg, raw, root = pair
    assert raw.version != jpeg.version
    folder = Path(raw.path)
    parts = sorted((folder / "shards").glob("*.parquet"))
    assert parts and all((folder / pixels_name(f"shards/{p.name}")).is_file() for p in parts)
    assert not list(Path(jpeg.path).glob(f"shards/*{PIXELS_SUFFIX}"))
    meta = pq.read_schema(parts[0]).metadata
    assert meta[b"fsar.storage"] == b"raw" and meta[b"fsar.frame_shape"] == f"3,{SIZE},{SIZE}".encode()
    assert "jpeg" not in pq.read_schema(parts[0]).names
    store = ArtifactStore(root)
    files = store.manifest(raw)["files"]
    assert {f"shards/{p.name}" for p in parts} | {pixels_name(f"shards/{p.name}") for p in parts} <= set(files)
    store.verify(raw)  # sha256 of every part and pixel file
    videos, _ = video_set
    fields = plan_fields(make_config(videos / "videos.csv", storage_size=SIZE, max_frames=16))
    assert set(fields["frames"]) == {"storage_size", "max_frames", "jpeg_quality", "videos_per_shard", "shard_max_mb", "storage_format", "video_timeout_s"}
    assert fields["frames"]["storage_format"] == "jpeg"
    raw_fields = plan_fields(make_config(videos / "videos.csv", storage_size=SIZE, max_frames=16, storage_format="raw"))
    assert raw_fields["frames"]["storage_format"] == "raw"


def test_damaged_pixel_files_are_clear_errors(pair, tmp_path):
    import shutil

    _, raw, root = pair
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    folder = copy / "frames" / "custom" / raw.version
    fs = FrameStore.open("custom", root=copy)
    vid = "videos/plain.mp4"
    row = fs.index.set_index("video_id").loc[vid]
    pixels = folder / pixels_name(row["shard"])
    data = bytearray(pixels.read_bytes())
    frame = 3 * SIZE * SIZE
    data[int(row["offsets"][0]) * frame + frame // 2] ^= 0xFF  # the video's first frame, same size
    pixels.write_bytes(bytes(data))
    first = int(fs.stored_indices(vid)[0])
    with pytest.raises(ArtifactError, match=rf"{PIXELS_SUFFIX}: frame {first} fails its CRC-32 check"):
        fs.frames(vid, [first])
    fs.frames(vid, fs.stored_indices(vid)[1:])  # the other frames still read
    pixels.write_bytes(bytes(data[:-frame]))  # cut short: refused on open, by the manifest's size
    with pytest.raises(ArtifactError, match=r"is broken \(file 'shards/.*\.rgb' has .* bytes, the manifest says"):
        FrameStore.open("custom", root=copy).frames(vid, [first])
    bare = FrameStore(str(folder), fs.index)  # no manifest at hand: the frame count still catches it
    with pytest.raises(ArtifactError, match=r"\.rgb of .*: it has .* bytes, \d+ frames of 3x40x40 need"):
        bare.frames(vid, [first])
    pixels.unlink()
    with pytest.raises(ArtifactError, match=r"is broken \(file 'shards/.*\.rgb' is missing"):
        FrameStore.open("custom", root=copy)
    with pytest.raises(ArtifactError, match=r"\.rgb of .*: it is missing"):
        FrameStore(str(folder), fs.index).frames(vid, [first])


def test_raw_artifact_is_byte_identical_in_another_root(pair, video_set, tmp_path):
    from frames_helpers import artifact_files

    _, raw, _ = pair
    root, _ = video_set
    again = run(make_config(root / "videos.csv", storage_size=SIZE, max_frames=16, storage_format="raw"), {}, ArtifactStore(tmp_path))
    assert again.version == raw.version
    assert artifact_files(again.path) == artifact_files(raw.path)  # parts, pixel files, index: same bytes
