"""Dataset registry: name -> spec factory. No `if dataset == ...` chains elsewhere.

A spec knows its class partition (train/val/test class names), how to list its videos under a user's
video root, and human-readable class names.
"""

from __future__ import annotations

import os
import re
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import FsarError
from pipeline.settings.datasets import DatasetConfig

__all__ = [
    "SPLITS",
    "DatasetError",
    "DatasetSpec",
    "VideoEntry",
    "get_dataset",
    "humanize",
    "list_datasets",
    "register_dataset",
]

SPLITS = ("train", "val", "test")


class DatasetError(FsarError, ValueError):
    """Bad dataset input (unknown name, missing folder or file); the message names the thing and the fix."""


@dataclass(frozen=True)
class VideoEntry:
    """One video of a split."""

    video_id: str  # unique, stable id inside the dataset (a relative path or a source id)
    class_name: str  # raw class name as in the split (its display name comes from the spec)
    split: str  # train | val | test
    path: str  # absolute path of the video file (it may not exist: the frames stage records that)


class DatasetSpec(ABC):
    """What a dataset is: its class partition, its videos, its class display names."""

    name: str = ""
    #: True when the standard split files are needed to list videos
    needs_split_files: bool = False

    def __init__(self, cfg: DatasetConfig):
        self.cfg = cfg

    @abstractmethod
    def classes(self, split: str) -> list[str]:
        """Raw class names of a split, in the split's class order."""

    @abstractmethod
    def videos(self, split: str) -> list[VideoEntry]:
        """Every video of a split (needs the video root or list)."""

    def display_name(self, class_name: str) -> str:
        """Human-readable class name used in prompts."""
        return humanize(class_name)

    def order_pairs(self) -> dict[str, str]:
        """{class: its partner} for classes that differ only in temporal order (known for `synthetic` only)."""
        return {}

    def all_classes(self) -> list[tuple[str, str]]:
        """(split, class) for every class of every split."""
        return [(s, c) for s in SPLITS for c in self.classes(s)]

    def all_videos(self) -> list[VideoEntry]:
        return [v for s in SPLITS for v in self.videos(s)]

    # helpers shared by specs -------------------------------------------------
    def _video_root(self) -> Path:
        root = self.cfg.video_root
        if not root:
            raise DatasetError(
                f"dataset {self.name!r} needs its videos: pass --video-root DIR (make: VIDEO_ROOT=DIR), "
                f"the folder that holds the dataset's videos"
            )
        path = Path(root).expanduser()
        if not path.is_dir():
            raise DatasetError(f"video root {str(path)!r} of dataset {self.name!r} is not a folder; check VIDEO_ROOT")
        return path.resolve()


_REGISTRY: dict[str, Callable[[DatasetConfig], DatasetSpec]] = {}


def register_dataset(name: str) -> Callable[[Callable[[DatasetConfig], DatasetSpec]], Callable[[DatasetConfig], DatasetSpec]]:
    """Decorator: register a spec class (or factory) under `name`."""

    def deco(factory: Callable[[DatasetConfig], DatasetSpec]) -> Callable[[DatasetConfig], DatasetSpec]:
        if name in _REGISTRY:
            raise ValueError(f"dataset {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return deco


def list_datasets() -> list[str]:
    return sorted(_REGISTRY)


def get_dataset(cfg: DatasetConfig | str) -> DatasetSpec:
    """The spec of the configured dataset."""
    if isinstance(cfg, str):
        cfg = DatasetConfig(name=cfg)
    try:
        factory = _REGISTRY[cfg.name]
    except KeyError:
        raise DatasetError(f"unknown dataset {cfg.name!r}; choose one of {', '.join(list_datasets())}") from None
    return factory(cfg)


_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


def humanize(name: str) -> str:
    """`brush_hair` -> `brush hair`; `ApplyEyeMakeup` -> `apply eye makeup`; sentences stay as they are."""
    if " " in name.strip():
        return " ".join(name.split())
    words = _CAMEL.sub(" ", name.replace("_", " ").replace("-", " "))
    return " ".join(words.split()).lower()


def split_dir_for(cfg: DatasetConfig, subdir: str, public_home: str) -> Path:
    """The folder holding a benchmark's split files: dataset.split_dir, else $FSAR_SPLITS/<subdir>."""
    if cfg.split_dir:
        path = Path(cfg.split_dir).expanduser()
    elif os.environ.get("FSAR_SPLITS"):
        path = Path(os.environ["FSAR_SPLITS"]).expanduser() / subdir
    else:
        raise DatasetError(
            f"dataset {cfg.name!r} needs its standard split files (train.txt, val.txt, test.txt): set "
            f"dataset.split_dir=DIR (or FSAR_SPLITS to a folder holding {subdir}/); they are published at {public_home}"
        )
    if not path.is_dir():
        raise DatasetError(f"split folder {str(path)!r} for dataset {cfg.name!r} does not exist; check dataset.split_dir / FSAR_SPLITS")
    return path
