"""Config of the frames stage (videos -> Parquet shards of JPEG frames)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from pipeline.settings.section import Section

__all__ = ["FramesConfig"]


class FramesConfig(Section):
    storage_size: int = Field(default=257, ge=8)  # frames are resized to this square (aspect not kept, as the paper)
    max_frames: int | None = Field(default=32, ge=1)  # frames kept per video, spread evenly; None = every frame
    jpeg_quality: int = Field(default=90, ge=1, le=100)  # JPEG quality of stored frames
    # jpeg: shards hold each frame as JPEG bytes (small; loading decodes T JPEGs); raw: they hold the pixels of that
    # same JPEG, decoded once while building (samples identical to jpeg; loading skips decoding: 3-5x faster;
    # 3 * storage_size^2 bytes a frame: about 7x the disk of jpeg at 257^2, 198 KB a frame, 6.3 MB a video)
    storage_format: Literal["jpeg", "raw"] = "jpeg"
    shard_max_mb: int = Field(default=256, ge=1)  # upper bound of one shard's size
    videos_per_shard: int = Field(default=64, ge=1)  # work unit: videos decoded into one shard
    workers: int | None = Field(default=None, ge=1)  # decoding processes; None = all cores
    # pyav, the only decoder: every video is decoded front to back (decord's seeking returned wrong frames on
    # MPEG-4 Part 2 with B-frames, the codec of HMDB51 and UCF101; see docs/frames.md)
    decoder: Literal["pyav"] = "pyav"
    video_timeout_s: float | None = Field(default=300.0, gt=0)  # wall-clock budget per video; a hung decoder is killed (`timeout`)
    max_failed_fraction: float = Field(default=0.05, ge=0.0, le=1.0)  # fail the stage above this share of bad videos

    @field_validator("decoder", mode="before")
    @classmethod
    def _no_decord(cls, value: object) -> object:
        if value == "decord":
            raise ValueError(
                "decord is no longer used: its seeking returns wrong frames on MPEG-4 Part 2 with B-frames (HMDB51, UCF101); "
                "frames are decoded front to back with PyAV: drop the setting or use pyav"
            )
        return value
