"""Config of the dataset in use."""

from __future__ import annotations

from pydantic import Field, ValidationInfo, field_validator

from pipeline.settings.section import Section

__all__ = ["DatasetConfig", "ProtocolConfig"]


class DatasetConfig(Section):
    name: str = "synthetic"  # registry name: hmdb51, ucf101, kinetics100, ssv2_small, ssv2_full, custom, synthetic
    video_root: str | None = None  # folder holding the videos (benchmarks: the class folders / video files)
    video_list: str | None = None  # custom only: CSV with columns path,label,split
    split_dir: str | None = None  # folder with the standard split files (train.txt, val.txt, test.txt)
    label_dir: str | None = None  # SSv2-Full only: folder with SSv2's labels/train/validation JSON files
    video_ext: str | None = None  # file extension of SSv2 videos (default .webm); benchmarks with paths ignore it
    split_ratios: tuple[float, float, float] = (0.6, 0.2, 0.2)  # custom folder datasets: train/val/test class ratio
    split_seed: int = 0  # custom folder datasets: seed of the class partition
    synthetic_seed: int = 0  # synthetic: generator seed
    synthetic_videos_per_class: int = Field(default=8, ge=1)  # synthetic: videos per class
    synthetic_size: int = Field(default=64, ge=16)  # synthetic: frame side in pixels
    synthetic_frames: int = Field(default=24, ge=2)  # synthetic: frames per video

    @field_validator("split_ratios")
    @classmethod
    def _ratios(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(r < 0 for r in v) or abs(sum(v) - 1.0) > 1e-6:
            raise ValueError(f"split_ratios must be three non-negative numbers summing to 1, got {list(v)}")
        return v


class ProtocolConfig(Section):
    num_frames: int = Field(default=8, ge=2)  # T: frames sampled per video
    num_sub_actions: int = Field(default=3, ge=1)  # S: ordered sub-action descriptions per class
    way: int = Field(default=5, ge=2)  # N: classes per episode
    shot: int = Field(default=1, ge=1)  # K: support videos per class (training)
    query: int = Field(default=1, ge=1)  # Q: query videos per class

    @field_validator("num_sub_actions")
    @classmethod
    def _frames_per_stage(cls, v: int, info: ValidationInfo) -> int:
        t = info.data.get("num_frames")
        if t is not None and t < v + 1:  # S stage windows over the T-1 frame transitions
            raise ValueError(
                f"T=protocol.num_frames={t} is too few for S={v} sub-actions: T must be at least S+1={v + 1} (one frame "
                f"transition per stage); raise protocol.num_frames or lower protocol.num_sub_actions"
            )
        return v
