"""The five standard few-shot benchmarks.

Class partitions ship with the package (`classes/<name>.json`, class names only, derived from the
standard split files). Video lists are read from the standard split files (dataset.split_dir or
$FSAR_SPLITS), never copied here. SSv2-Full class names come from SSv2's own label files.
"""

from __future__ import annotations

import json
from functools import cached_property
from importlib import resources
from pathlib import Path

from pipeline.datasets.registry import (
    SPLITS,
    DatasetError,
    DatasetSpec,
    VideoEntry,
    humanize,
    register_dataset,
    split_dir_for,
)
from pipeline.errors import read_text_file

SPLIT_HOME = "github.com/alibaba-mmai-research/CLIP-FSAR (configs/projects/CLIPFSAR/<dataset>/{train,val,test}_few_shot.txt)"


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise DatasetError(f"split file {str(path)!r} is missing; the split folder must hold train.txt, val.txt and test.txt")
    text = read_text_file(path, "split file", DatasetError)
    return [line.strip() for line in text.splitlines() if line.strip()]


def _class_index(key: str, split: str, path: Path) -> int:
    if not key.startswith(split) or not key[len(split) :].isdigit():
        raise DatasetError(f"split file {str(path)!r}: line key {key!r} is not of the form {split}<index>")
    return int(key[len(split) :])


class SplitFileBenchmark(DatasetSpec):
    """A benchmark whose split lines are `<split><c>/<path or id>`."""

    subdir: str = ""
    needs_split_files = True

    @cached_property
    def _partition(self) -> dict[str, list[str]]:
        data = resources.files("pipeline.datasets").joinpath("classes", f"{self.name}.json").read_text(encoding="utf-8")
        return json.loads(data)

    def classes(self, split: str) -> list[str]:
        _check_split(split)
        return list(self._partition[split])

    def split_lines(self, split: str) -> list[tuple[int, str]]:
        """(class index inside the split, rest of the line) for every line of the split file."""
        _check_split(split)
        path = split_dir_for(self.cfg, self.subdir, SPLIT_HOME.replace("<dataset>", self.subdir)) / f"{split}.txt"
        out = []
        for line in _read_lines(path):
            key, _, rest = line.partition("/")
            out.append((_class_index(key, split, path), rest.strip("/")))
        return out

    def relative_path(self, rest: str) -> str:
        """Path of a video under the video root, from the part of a split line after the class key."""
        parts = [p for p in rest.split("/") if p]
        return "/".join(parts[-2:])  # <class dir>/<file>; the release's leading folder (videos/, train_256/) is dropped

    def video_id(self, rest: str) -> str:
        """Stable id of a video: its path under the video root."""
        return self.relative_path(rest)

    def videos(self, split: str) -> list[VideoEntry]:
        root = self._video_root()
        names = self.classes(split)
        out = []
        for idx, rest in self.split_lines(split):
            rel = self.relative_path(rest)
            out.append(VideoEntry(self.video_id(rest), names[idx], split, str(root / rel)))
        return out


class _SSv2(SplitFileBenchmark):
    def video_id(self, rest: str) -> str:
        return rest  # the SSv2 video id

    def relative_path(self, rest: str) -> str:
        return f"{rest}{self.cfg.video_ext or '.webm'}"

    def display_name(self, class_name: str) -> str:
        return " ".join(class_name.replace("[", "").replace("]", "").split())


@register_dataset("hmdb51")
class HMDB51(SplitFileBenchmark):
    name = "hmdb51"
    subdir = "hmdb51"


@register_dataset("ucf101")
class UCF101(SplitFileBenchmark):
    name = "ucf101"
    subdir = "ucf101"


@register_dataset("kinetics100")
class Kinetics100(SplitFileBenchmark):
    name = "kinetics100"
    subdir = "kinetics100"


@register_dataset("ssv2_small")
class SSv2Small(_SSv2):
    name = "ssv2_small"
    subdir = "ssv2_small"


SSV2_LABEL_FILES = ("something-something-v2-train.json", "something-something-v2-validation.json")


@register_dataset("ssv2_full")
class SSv2Full(_SSv2):
    """SSv2-Full (OTAM split). Class names: each class's videos looked up in SSv2's own label files."""

    name = "ssv2_full"
    subdir = "ssv2_full"

    @cached_property
    def _partition(self) -> dict[str, list[str]]:
        label_dir = self.cfg.label_dir
        if not label_dir:
            raise DatasetError(
                "dataset 'ssv2_full' takes its class names from SSv2's own label files: set dataset.label_dir=DIR "
                f"(the folder with {' and '.join(SSV2_LABEL_FILES)}, from the Something-Something v2 download)"
            )
        templates: dict[str, str] = {}
        for name in SSV2_LABEL_FILES:
            path = Path(label_dir).expanduser() / name
            if not path.is_file():
                raise DatasetError(f"SSv2 label file {str(path)!r} is missing; dataset.label_dir must hold {', '.join(SSV2_LABEL_FILES)}")
            for item in json.loads(read_text_file(path, "SSv2 label file", DatasetError)):
                templates[str(item["id"])] = item["template"]
        partition: dict[str, list[str]] = {}
        for split in SPLITS:
            found: dict[int, str] = {}
            for idx, vid in self.split_lines(split):
                if vid not in templates:
                    raise DatasetError(f"SSv2 video {vid!r} of split {split} is in none of the label files under {label_dir}")
                name = templates[vid]
                if found.setdefault(idx, name) != name:
                    raise DatasetError(f"class {split}{idx} of ssv2_full mixes templates {found[idx]!r} and {name!r}")
            partition[split] = [found[i] for i in sorted(found)]
        return partition


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")


__all__ = ["HMDB51", "UCF101", "Kinetics100", "SSv2Small", "SSv2Full", "humanize"]
