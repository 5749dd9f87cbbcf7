"""User videos -> model input, with the frames stage's decoders and the reader's sampling and transform.

    prep = Preprocessing.from_bundle(bundle)
    clip = read_clip("/my/clip.mp4", prep)        # float (T, 3, crop, crop); raises VideoFailure when unusable
    support = support_videos("/my/support")       # {class folder name: [clip paths]}
    queries = query_videos(["a.mp4", "more/"])   # paths, folders expanded (sorted)
    query_problem("more/")                        # why a query path cannot be a clip (a folder), else None

Every query path gets a row: one that cannot be read (missing, not a video, a folder with no videos in it,
a folder named like a video) gets its error, the others are answered. Entries of the support folder that
are not used (a file that is not a video, a folder inside a class folder) are listed in `skipped`, never
dropped without a word; hidden files (`.DS_Store`) are ignored.

A clip goes through exactly what a training/evaluation video goes through: the frames stage's decoding
(front to back with PyAV, `isolation.IsolatedDecoder`: in a child process under the run's
`frames.video_timeout_s`) with its settings (storage size, frames kept, JPEG quality), then
`reader.sample_indices` (eval: segment centres) and `reader.clip_from_jpegs` (centre crop, mean/std).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.contract import StageError

__all__ = ["VIDEO_EXTENSIONS", "Preprocessing", "check_support", "query_problem", "query_videos", "read_clip", "support_videos"]

VIDEO_EXTENSIONS = (".mp4", ".avi", ".webm", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp", ".ogv")


@dataclass(frozen=True)
class Preprocessing:
    """What turns a video file into model input (from the bundle; the trained run's frames settings)."""

    num_frames: int  # T
    storage_size: int  # frames are resized to this square, as the frames stage stores them
    max_frames: int | None  # frames kept per video before sampling
    jpeg_quality: int  # frames are JPEG round-tripped, as stored
    decoder: str  # what the frames stage decoded with (recorded; decoding is always PyAV, front to back)
    crop_size: int  # centre crop side
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    video_timeout_s: float | None = 300.0  # wall-clock budget per clip (frames.video_timeout_s of the run)

    def decode_settings(self) -> Any:
        # start-up: fsar predict loads only what it uses
        from pipeline.frames.decode import DecodeSettings

        return DecodeSettings(
            size=self.storage_size, max_frames=self.max_frames, quality=self.jpeg_quality, min_frames=self.num_frames,
            timeout_s=self.video_timeout_s,
        )  # fmt: skip

    @classmethod
    def from_meta(cls, pre: dict[str, Any]) -> "Preprocessing":
        return cls(
            num_frames=int(pre["num_frames"]), storage_size=int(pre["storage_size"]), max_frames=pre["max_frames"],
            jpeg_quality=int(pre["jpeg_quality"]), decoder=str(pre["decoder"]), crop_size=int(pre["crop_size"]),
            mean=tuple(pre["mean"]), std=tuple(pre["std"]), video_timeout_s=pre.get("video_timeout_s", 300.0),
        )  # fmt: skip


def read_clip(path: str | os.PathLike[str], prep: Preprocessing, decoder: Any = None) -> torch.Tensor:
    """Decode one video file into float (T, 3, crop, crop); raises `decode.VideoFailure` when it cannot be used.

    `decoder`: an open `isolation.IsolatedDecoder` of `prep.decode_settings()` to reuse its process; without one,
    a decoding process is started for this clip."""
    # start-up: fsar predict loads only what it uses
    from pipeline.frames.isolation import IsolatedDecoder
    from pipeline.frames.reader import clip_from_jpegs, sample_indices

    if decoder is None:
        with IsolatedDecoder(prep.decode_settings()) as own:
            video = own.decode(str(path))
    else:
        video = decoder.decode(str(path))
    stored = np.asarray(video.stored_indices, dtype=np.int64)
    wanted = sample_indices(stored, prep.num_frames, "eval")  # (T,) source frame numbers
    positions = np.searchsorted(stored, wanted)
    return clip_from_jpegs([video.jpegs[p] for p in positions], prep.crop_size, "eval", prep.mean, prep.std)  # (T, 3, crop, crop)


def _is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTENSIONS and not path.name.startswith(".")


def _videos_in(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_file() and _is_video(p)), key=lambda p: p.name)


def _unused(folder: Path) -> list[tuple[str, str]]:
    """(name, why) of the visible entries of a class folder that are not clips."""
    out = []
    for p in sorted(folder.iterdir(), key=lambda p: p.name):
        if p.name.startswith(".") or (p.is_file() and _is_video(p)):
            continue
        why = "a folder, not a video file" if p.is_dir() else f"not a video file ({p.suffix or 'no'} extension)"
        out.append((p.name, why))
    return out


def support_videos(root: str | os.PathLike[str], skipped: list[str] | None = None) -> dict[str, list[str]]:
    """{class: [clip paths]} from a folder holding one folder per class (the name is the class, any characters).

    Entries that are not used (a file beside the class folders, a non-video file or a folder inside one) are
    appended to `skipped` as one line each ("class 'x': skipped 'notes.txt' (not a video file (.txt extension))")."""
    folder = Path(root).expanduser()
    if not folder.is_dir():
        raise StageError(f"--support {str(folder)!r} is not a folder; give a folder with one sub-folder of clips per class")
    classes = sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)
    if not classes:
        raise StageError(f"support folder {str(folder)!r} holds no class folders; put each class's clips in a folder named after the class")
    notes = skipped if skipped is not None else []
    notes.extend(f"skipped {p.name!r} beside the class folders (a file, not a class folder)"
                 for p in sorted(folder.iterdir(), key=lambda p: p.name) if not p.is_dir() and not p.name.startswith("."))
    out = {}
    for cls in classes:
        clips = _videos_in(cls)
        notes.extend(f"class {cls.name!r}: skipped {name!r} ({why})" for name, why in _unused(cls))
        if not clips:
            raise StageError(
                f"support class {cls.name!r} ({str(cls)!r}) has no clips; add at least one video ({', '.join(VIDEO_EXTENSIONS[:4])}, ...) or remove the folder"
            )
        out[cls.name] = [str(p) for p in clips]
    return out


def check_support(support: dict[str, Sequence[str]]) -> dict[str, list[str]]:
    """A {class: [paths]} mapping with at least 2 classes, each with at least one clip."""
    if len(support) < 2:
        raise StageError(f"few-shot classification needs at least 2 support classes, got {len(support)} ({', '.join(map(repr, support)) or 'none'})")
    empty = [c for c, paths in support.items() if not list(paths)]
    if empty:
        raise StageError(f"support class {empty[0]!r} has no clips; give it at least one video")
    return {str(c): [str(p) for p in paths] for c, paths in support.items()}


def query_videos(paths: Sequence[str | os.PathLike[str]]) -> list[str]:
    """Query paths as given; a folder becomes the entries named like videos in it (sorted by name), and a folder
    with none stays one entry (its row says so). Files are kept whatever their name."""
    out: list[str] = []
    for raw in paths:
        p = Path(raw).expanduser()
        if p.is_dir():
            found = sorted((e for e in p.iterdir() if _is_video(e)), key=lambda e: e.name)  # a folder named x.mp4 too
            if found:
                out.extend(str(Path(raw) / f.name) for f in found)
            else:
                out.append(str(raw))  # one row, whose error says the folder holds no videos
        else:
            out.append(str(raw))
    if not out:
        raise StageError("no queries: give one or more video files or folders with --query")
    return out


def query_problem(path: str | os.PathLike[str]) -> str | None:
    """Why a query path cannot be a clip before decoding it (a folder), else None (decoding says the rest)."""
    p = Path(path).expanduser()
    if not p.is_dir():
        return None
    if not _videos_in(p):
        return f"a folder holding no video files ({', '.join(VIDEO_EXTENSIONS[:4])}, ...)"
    return "a folder (of videos): give its videos, or the folder itself, as --query"
