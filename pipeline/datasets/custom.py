"""`custom`: a folder of class folders, or a CSV of path,label,split.

Folder datasets put classes into train/val/test by a seeded ratio (dataset.split_ratios, split_seed).
File names are listed with os.scandir, never globbed, so names with spaces, brackets or non-ASCII
characters are read as they are.
"""

from __future__ import annotations

import csv
import io
import os
import random
from functools import cached_property
from pathlib import Path

from pipeline.datasets.registry import SPLITS, DatasetError, DatasetSpec, VideoEntry, register_dataset
from pipeline.errors import read_text_file

VIDEO_EXTENSIONS = (".mp4", ".avi", ".webm", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg")


def read_video_list(path: Path, video_root: Path | None = None) -> list[VideoEntry]:
    """Read a CSV with columns path,label,split; relative paths are under video_root or the CSV's folder.

    Paths are normalised (`./a`, `a//b` -> `a/b`, absolute) and one file listed twice, under any spelling
    (an absolute path, a symlink), is an error naming both lines."""
    if not path.is_file():
        raise DatasetError(f"video list {str(path)!r} does not exist; give a CSV with columns path,label,split")
    base = video_root or path.parent
    out: list[VideoEntry] = []
    first: dict[str, tuple[int, str]] = {}  # resolved file -> (line, spelling) of its first listing
    text = read_text_file(path, "video list", DatasetError)  # a line that is not UTF-8 is named, not a traceback
    with io.StringIO(text, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"path", "label", "split"} - set(reader.fieldnames or [])
        if missing:
            raise DatasetError(f"video list {str(path)!r} lacks column(s) {sorted(missing)}; the header must be path,label,split")
        for lineno, row in enumerate(reader, start=2):
            split = (row["split"] or "").strip()
            if split not in SPLITS:
                raise DatasetError(f"video list {str(path)!r} line {lineno}: split {split!r} is not one of {', '.join(SPLITS)}")
            rel = (row["path"] or "").strip()
            label = (row["label"] or "").strip()
            if not rel or not label:
                raise DatasetError(f"video list {str(path)!r} line {lineno}: empty path or label")
            full = os.path.normpath(rel if os.path.isabs(rel) else os.path.join(os.path.abspath(base), rel))
            real = os.path.realpath(full)
            if real in first:
                line, spelling = first[real]
                raise DatasetError(
                    f"video list {str(path)!r} lists one file twice: line {line} as {spelling!r} and line {lineno} as "
                    f"{rel!r} (both are {real!r}); list each video once"
                )
            first[real] = (lineno, rel)
            out.append(VideoEntry(os.path.normpath(rel), label, split, full))
    if not out:
        raise DatasetError(f"video list {str(path)!r} holds no videos")
    classes_by_split: dict[str, set[str]] = {}
    for v in out:
        classes_by_split.setdefault(v.class_name, set()).add(v.split)
    mixed = sorted(c for c, s in classes_by_split.items() if len(s) > 1)
    if mixed:
        raise DatasetError(f"video list {str(path)!r}: class(es) {mixed[:5]} appear in several splits; few-shot splits must not share classes")
    return out


class ListedDataset(DatasetSpec):
    """A dataset whose videos are listed up front (a CSV or a scanned folder)."""

    @cached_property
    def _entries(self) -> list[VideoEntry]:
        raise NotImplementedError

    def classes(self, split: str) -> list[str]:
        seen: dict[str, None] = {}
        for v in self._entries:
            if v.split == split:
                seen.setdefault(v.class_name, None)
        return list(seen)

    def videos(self, split: str) -> list[VideoEntry]:
        return [v for v in self._entries if v.split == split]


@register_dataset("custom")
class CustomDataset(ListedDataset):
    name = "custom"

    @cached_property
    def _entries(self) -> list[VideoEntry]:
        if self.cfg.video_list:
            root = self._video_root() if self.cfg.video_root else None
            return read_video_list(Path(self.cfg.video_list).expanduser(), root)
        if not self.cfg.video_root:
            raise DatasetError("dataset 'custom' needs --video-root DIR (one folder per class) or --video-list FILE.csv (path,label,split)")
        return self._scan(self._video_root())

    def _scan(self, root: Path) -> list[VideoEntry]:
        class_dirs = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
        if not class_dirs:
            raise DatasetError(f"video root {str(root)!r} holds no class folders; put each class's videos in a folder named after the class")
        rng = random.Random(self.cfg.split_seed)
        order = class_dirs[:]
        rng.shuffle(order)
        n = len(order)
        n_train = round(n * self.cfg.split_ratios[0])
        n_val = round(n * self.cfg.split_ratios[1])
        split_of = {c: ("train" if i < n_train else "val" if i < n_train + n_val else "test") for i, c in enumerate(order)}
        out = []
        for c in class_dirs:
            files = sorted(
                e.name for e in os.scandir(root / c) if e.is_file() and e.name.lower().endswith(VIDEO_EXTENSIONS)
            )
            out.extend(VideoEntry(f"{c}/{f}", c, split_of[c], str(root / c / f)) for f in files)
        return out
