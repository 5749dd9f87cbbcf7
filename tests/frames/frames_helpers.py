"""Videos with known content, a CSV-listed dataset of good and bad videos, configs and readers for the frames tests."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.datasets.synthetic import write_video

FRAMES = 20  # frames of every good test video
T = 8  # protocol.num_frames in the tests (the default)


def pattern(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """[n, h, w, 3] frames whose flat background colour differs clearly from frame to frame, plus a moving square."""
    out = np.empty((n, h, w, 3), np.uint8)
    s = max(4, h // 4)
    for t in range(n):
        k = t + 7 * seed
        out[t] = ((37 * k) % 190 + 30, (23 * k + 90) % 190 + 30, (53 * k + 40) % 190 + 30)
        x = (3 * t) % (w - s)
        out[t, h // 3 : h // 3 + s, x : x + s] = (245, 245, 245)
    return out


def resized(frames: np.ndarray, size: int) -> np.ndarray:
    """Ground truth at storage size (the stage resizes with PIL bilinear)."""
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(f).resize((size, size), Image.Resampling.BILINEAR)) for f in frames])


# name -> (class, split, kind, extra); kinds: good (n frames at size), missing, empty, corrupt, truncated, folder
GOOD = {
    "plain.mp4": ("alpha", "train", 64, 0),
    "with space.mp4": ("alpha", "train", 64, 1),
    "brackets [1].mp4": ("beta", "val", 64, 2),
    "brackets1.mp4": ("beta", "val", 64, 3),  # what a glob of "brackets [1].mp4" would match instead
    "ünïcödé 视频.mp4": ("gamma", "test", 64, 4),
    "narrow48.mp4": ("gamma", "test", 48, 5),  # a width decord 0.6.0 mis-decodes: read with PyAV
}
BAD = {
    "short.mp4": ("alpha", "train", "too_few_frames"),
    "missing.mp4": ("beta", "val", "missing_file"),
    "empty.mp4": ("beta", "val", "empty_file"),
    "corrupt.mp4": ("gamma", "test", "unreadable"),
    "truncated.mp4": ("gamma", "test", "unreadable"),
    "folder.mp4": ("alpha", "train", "not_a_file"),
}


def write_dataset(root: Path) -> dict[str, np.ndarray]:
    """Write every GOOD and BAD case under root/videos and the list root/videos.csv; returns the true frames."""
    vdir = root / "videos"
    vdir.mkdir(parents=True, exist_ok=True)
    truth = {}
    for name, (_, _, size, seed) in GOOD.items():
        truth[name] = pattern(FRAMES, size, size, seed)
        write_video(truth[name], vdir / name)
    write_video(pattern(5, 64, 64, 9), vdir / "short.mp4")
    (vdir / "empty.mp4").write_bytes(b"")
    (vdir / "corrupt.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 20_000, dtype=np.uint8).tobytes())
    write_video(pattern(FRAMES, 64, 64, 8), vdir / "whole.mp4")
    data = (vdir / "whole.mp4").read_bytes()
    (vdir / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (vdir / "whole.mp4").unlink()
    (vdir / "folder.mp4").mkdir(exist_ok=True)
    write_list(root / "videos.csv", list(GOOD) + list(BAD))
    return truth


def write_list(path: Path, names: list[str]) -> Path:
    meta = {**{k: v[:2] for k, v in GOOD.items()}, **{k: v[:2] for k, v in BAD.items()}}
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "split"])
        for n in names:
            w.writerow([f"videos/{n}", *meta[n]])
    return path


def make_config(video_list: Path, artifacts: Path | str | None = None, **frames: Any):
    from pipeline.config import load_config

    overrides = {
        "dataset.name": "custom",
        "dataset.video_list": str(video_list),
        "frames.storage_size": 64,
        "frames.max_frames": None,
        "frames.videos_per_shard": 3,
        "frames.workers": 1,
        "frames.max_failed_fraction": 1.0,
    }
    if artifacts is not None:
        overrides["artifacts"] = str(artifacts)
    overrides.update({f"frames.{k}": v for k, v in frames.items()})
    return load_config(None, overrides=overrides)


class Recorder:
    """A map_units that runs units in this process and remembers which ones it was given."""

    def __init__(self) -> None:
        self.units: list[int] = []

    def __call__(self, fn, units):  # noqa: ANN001
        for u in units:
            self.units.append(u.unit_id)
            yield fn(u)


def artifact_files(path: str | os.PathLike[str]) -> dict[str, bytes]:
    """Every data file of a published artifact (not the manifest), by relative path."""
    root = Path(path)
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and p.name != "manifest.json"}

