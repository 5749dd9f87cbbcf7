"""Seeded few-shot episodes: N classes without replacement, then K+Q videos per class without replacement.

Episode i of a sampler depends only on (seed, i) and the sorted class/video lists, through numpy's
PCG64 generator, so it is identical across runs and machines, and DDP ranks can take disjoint
episode indices without talking to each other.

A sampled episode lists its queries class by class, as the released sampler does; `Episode.with_query_order`
gives the same episode with its queries shuffled (seeded by the episode), which `evaluate.query_order` uses.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import pandas as pd

from pipeline.contract import StageError
from pipeline.frames import FrameStore

__all__ = [
    "QUERY_ORDERS", "Episode", "EpisodeError", "EpisodeSampler", "check_splits", "episodes_from_frame", "episodes_to_frame", "usable_classes",
    "videos_by_class",
]

log = logging.getLogger("fsar")

QUERY_ORDERS = ("by_class", "shuffled")  # `evaluate.query_order`
_SHUFFLE_STREAM = 1  # the query shuffle draws from numpy's generator seeded [seed, index, 1], apart from the sampler's [seed, index]


class EpisodeError(StageError, ValueError):
    """A split cannot hold the protocol's episodes (N classes of K+Q videos); the message names the fields to change."""


@dataclass(frozen=True)
class Episode:
    """One N-way K-shot episode. Labels are positions in `classes`."""

    index: int
    seed: int
    classes: tuple[str, ...]  # N class names; label c = classes[c]
    support: tuple[str, ...]  # N*K video ids, class-major (K of class 0, then K of class 1, ...)
    query: tuple[str, ...]  # N*Q video ids, class-major unless `query_classes` says otherwise
    shot: int
    queries_per_class: int
    query_classes: tuple[int, ...] | None = None  # label of each query once reordered (`with_query_order`); None: class-major

    @property
    def way(self) -> int:
        return len(self.classes)

    @property
    def support_labels(self) -> list[int]:
        return [c for c in range(self.way) for _ in range(self.shot)]

    @property
    def query_labels(self) -> list[int]:
        if self.query_classes is not None:
            return list(self.query_classes)
        return [c for c in range(self.way) for _ in range(self.queries_per_class)]

    def with_query_order(self, order: Literal["by_class", "shuffled"]) -> "Episode":
        """This (class-major) episode with its queries in class order, or shuffled by a permutation that depends on
        (seed, index) alone: the same videos and labels, only their positions (the rows of a score matrix) move."""
        if order not in QUERY_ORDERS:
            raise ValueError(f"unknown query order {order!r}; choose one of {', '.join(QUERY_ORDERS)}")
        if self.query_classes is not None:
            raise ValueError(f"episode {self.index} is already reordered; reorder the episode as sampled")
        if order == "by_class":
            return self
        perm = np.random.default_rng([self.seed, self.index, _SHUFFLE_STREAM]).permutation(len(self.query))
        labels = self.query_labels
        return replace(self, query=tuple(self.query[i] for i in perm), query_classes=tuple(labels[i] for i in perm))


def videos_by_class(index: pd.DataFrame, split: str, min_frames: int) -> tuple[dict[str, list[str]], dict[str, int]]:
    """Usable videos of a split of a frames index by class, and the count of excluded ones by reason."""
    part = index[index["split"] == split]
    failed = part["status"] != "ok"
    short = ~failed & (part["stored_indices"].map(len) < min_frames)
    ok = part[~failed & ~short]
    out: dict[str, list[str]] = {}
    for cls, vid in zip(ok["class"], ok["video_id"]):
        out.setdefault(cls, []).append(vid)
    excluded = {"failed": int(failed.sum()), f"fewer than {min_frames} stored frames": int(short.sum())}
    return out, {k: v for k, v in excluded.items() if v}


def usable_classes(videos_by_class: Mapping[str, Sequence[str]], way: int, shot: int, query: int, split: str = "") -> dict[str, list[str]]:
    """Classes with at least K+Q videos (others excluded with a warning); `EpisodeError` if fewer than N remain."""
    need = shot + query
    keep = {c: sorted(v) for c, v in videos_by_class.items() if len(v) >= need}
    dropped = sorted(set(videos_by_class) - set(keep))
    where = f" of split {split!r}" if split else ""
    if dropped:
        msg = f"{len(dropped)} class(es){where} have fewer than K+Q={need} usable videos and are excluded: {dropped[:10]}"
        warnings.warn(msg, stacklevel=2)
        log.warning(msg)
    if len(keep) < way:
        most = max((len(v) for v in videos_by_class.values()), default=0)
        raise EpisodeError(
            f"only {len(keep)} class(es){where} have at least K+Q={shot}+{query}={need} usable videos, fewer than "
            f"N={way} (protocol.way; the split has {len(videos_by_class)} class(es), at most {most} video(s) per class); "
            f"lower protocol.way, protocol.shot (evaluate: --shots), protocol.query, or add videos "
            f"(custom folder datasets: give this split more classes with dataset.split_ratios)"
        )
    return keep


def check_splits(frames_ref: object, protocol: object, shots: Mapping[str, int]) -> None:
    """Refuse, before a model is built or a staging folder made, a protocol that a split of the frames
    artifact cannot hold: `shots` is {split: K} (evaluation: K at test); raises `EpisodeError`."""
    ref: Any = frames_ref
    index = FrameStore.open(ref.dataset, ref.version, root=ref.root).index
    p: Any = protocol
    for split, shot in shots.items():
        vids, _ = videos_by_class(index, split, p.num_frames)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the sampler warns about excluded classes once, later
            usable_classes(vids, p.way, shot, p.query, split)


class EpisodeSampler:
    """Deterministic episodes over {class: [video ids]}."""

    def __init__(self, videos_by_class: Mapping[str, Sequence[str]], way: int, shot: int, query: int, seed: int, split: str = ""):
        self.videos = usable_classes(videos_by_class, way, shot, query, split)
        self.class_names = sorted(self.videos)
        self.way, self.shot, self.query, self.seed = way, shot, query, seed

    def episode(self, index: int) -> Episode:
        rng = np.random.default_rng([self.seed, index])
        picked = rng.choice(len(self.class_names), size=self.way, replace=False)
        classes = tuple(self.class_names[i] for i in picked)
        support, query = [], []
        for c in classes:
            vids = self.videos[c]
            order = rng.choice(len(vids), size=self.shot + self.query, replace=False)
            support.extend(vids[i] for i in order[: self.shot])
            query.extend(vids[i] for i in order[self.shot :])
        return Episode(index, self.seed, classes, tuple(support), tuple(query), self.shot, self.query)

    def take(self, count: int, start: int = 0) -> list[Episode]:
        return [self.episode(i) for i in range(start, start + count)]

    def __iter__(self) -> Iterator[Episode]:
        i = 0
        while True:
            yield self.episode(i)
            i += 1


def episodes_to_frame(episodes: Sequence[Episode]) -> pd.DataFrame:
    """A table of episodes as sampled (one row each) that `episodes_from_frame` reads back exactly; a reordered
    episode is refused (its order is a setting, `evaluate.query_order`, applied to the saved episodes)."""
    reordered = [e.index for e in episodes if e.query_classes is not None]
    if reordered:
        raise ValueError(f"episodes {reordered[:5]} have reordered queries; save the episodes as sampled")
    return pd.DataFrame(
        {
            "episode": [e.index for e in episodes],
            "seed": [e.seed for e in episodes],
            "classes": [list(e.classes) for e in episodes],
            "support": [list(e.support) for e in episodes],
            "query": [list(e.query) for e in episodes],
            "shot": [e.shot for e in episodes],
            "queries_per_class": [e.queries_per_class for e in episodes],
        }
    )


def episodes_from_frame(df: pd.DataFrame) -> list[Episode]:
    return [
        Episode(int(r.episode), int(r.seed), tuple(r.classes), tuple(r.support), tuple(r.query), int(r.shot), int(r.queries_per_class))
        for r in df.itertuples(index=False)
    ]
