"""Frames stage: decode every video into versioned Parquet shards of JPEG frames, and read them back.

    from pipeline.frames import FrameStore, run, sample_indices
    ref = run(config, {}, store)                    # `fsar frames --dataset D --video-root DIR`
    fs = FrameStore.open("hmdb51")
    clip = fs.clip(video_id, 8, "train", rng=0)     # float (8, 3, 224, 224)

Artifact `frames/<dataset>/<version>/`: `index.parquet` (one row per video: video_id, class, split,
source_path, status ok|failed, reason, error, decoder, num_frames, fps, stored_indices, shard,
offsets, bytes) and `shards/<unit>-<part>.parquet` (video_id, frame_index, jpeg, crc32); with
`frames.storage_format=raw` the parts have no jpeg column and a pixel file `shards/<unit>-<part>.rgb`
beside each (the same JPEGs' decoded pixels: identical samples, no decoding when loading). See
`stage` for versioning and resuming, `decode` for decoding, `shards` for the file layout, `reader`
for sampling and transforms.

Storage cost: a video keeps min(num_frames, max_frames) frames of storage_size^2 pixels as JPEG at
jpeg_quality. At the defaults (257^2, quality 90) a frame of natural video takes about 15-30 KB
(synthetic flat-colour frames far less), so 32 frames per video is about 0.5-1 MB and HMDB51's 6,766
split videos about 3-6 GB; keeping every frame (max_frames=None) multiplies that by the mean frame
count (about 90 for HMDB51, 250-300 for 10 s Kinetics clips at 25-30 fps, so roughly 50-90 GB for
Kinetics-100's 10,000 videos). Raw storage takes 3 * storage_size^2 bytes a frame whatever the
content (198 KB at 257^2: 6.3 MB a 32-frame video, about 43 GB for HMDB51, 63 GB for Kinetics-100),
about 7x jpeg at quality 90, for samples that load 3-5x faster than jpeg's (`benchmarks/frames.py`).
`index.parquet`'s `bytes` column and the manifest's `summary` give the exact figure of a built artifact.
"""

from __future__ import annotations

from typing import Any


__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "FrameStore",
    "FrameStoreError",
    "INDEX_SCHEMA",
    "SHARD_SCHEMA",
    "ShardUnit",
    "crop_box",
    "decode_unit",
    "run",
    "sample_indices",
    "to_clip",
]

# Imported on first use, so that decoding workers (which import this package) do not load torch.
_LAZY = {
    "CLIP_MEAN": "pipeline.frames.reader",
    "CLIP_STD": "pipeline.frames.reader",
    "FrameStore": "pipeline.frames.reader",
    "FrameStoreError": "pipeline.frames.reader",
    "crop_box": "pipeline.frames.reader",
    "sample_indices": "pipeline.frames.reader",
    "to_clip": "pipeline.frames.reader",
    "INDEX_SCHEMA": "pipeline.frames.shards",
    "SHARD_SCHEMA": "pipeline.frames.shards",
    "ShardUnit": "pipeline.frames.shards",
    "decode_unit": "pipeline.frames.shards",
    "run": "pipeline.frames.stage",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pipeline.frames' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
