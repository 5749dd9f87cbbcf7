"""`synthetic`: a generated, order-sensitive action dataset for tests and the demo.

Each class is a motion of one or two objects whose classes come in pairs that differ in temporal
order (left->right vs right->left, grow vs shrink, ...). Per video, the shape, colours, size, speed
profile, background, noise and a static distractor are random; everything is deterministic for a
seed. Videos are real mp4 files (PyAV, H.264), decoded back like any user's video.

Every class has its true ordered sub-action script (`script(name, S)`), written with the same
vocabulary as `caption(state)`, which describes one frame ("a small red circle near the top left").
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from pipeline.atomic import atomic_open, atomic_path, atomic_write_text
from pipeline.datasets.custom import ListedDataset, read_video_list
from pipeline.datasets.registry import SPLITS, DatasetError, VideoEntry, register_dataset

__all__ = [
    "CLASSES",
    "COLOURS",
    "CaptionedFrame",
    "ObjectState",
    "SyntheticClass",
    "caption",
    "captioned_frame",
    "class_split",
    "frame_seed",
    "generate",
    "phrase",
    "render_frame",
    "render_video",
    "sample_video_params",
    "script",
    "states_at",
    "write_video",
]

LIST_FILE = "synthetic.csv"
SCRIPTS_FILE = "scripts.yaml"

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 80, 230),
    "yellow": (235, 215, 40),
    "purple": (150, 60, 200),
    "orange": (245, 140, 30),
    "white": (245, 245, 245),
    "cyan": (40, 210, 220),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (10, 10, 10),
    "dark gray": (60, 60, 60),
    "navy": (20, 25, 70),
    "dark green": (20, 60, 30),
    "brown": (80, 50, 25),
}
SHAPES = ("circle", "square", "triangle")


@dataclass(frozen=True)
class ObjectState:
    """One object at one instant, in normalised coordinates (0..1, y grows downwards)."""

    x: float
    y: float
    scale: float = 1.0  # relative size (1 = the video's base size)
    alpha: float = 1.0  # visibility 0..1
    angle: float = 0.0  # degrees, clockwise on screen


Trajectory = Callable[[float], list[ObjectState]]  # u in [0, 1] -> objects


def _lerp(a: float, b: float, u: float) -> float:
    return a + (b - a) * u


def _move(x0: float, y0: float, x1: float, y1: float) -> Trajectory:
    return lambda u: [ObjectState(_lerp(x0, x1, u), _lerp(y0, y1, u))]


def _there_and_back(key: str, a: float, b: float) -> Trajectory:
    def f(u: float) -> list[ObjectState]:
        v = _lerp(a, b, 1 - abs(2 * u - 1))
        return [ObjectState(v, 0.5) if key == "x" else ObjectState(0.5, v)]

    return f


def _scale(s0: float, s1: float) -> Trajectory:
    return lambda u: [ObjectState(0.5, 0.5, scale=_lerp(s0, s1, u))]


def _fade(a0: float, a1: float) -> Trajectory:
    return lambda u: [ObjectState(0.5, 0.5, alpha=_lerp(a0, a1, u))]


def _rotate(sign: float) -> Trajectory:
    return lambda u: [ObjectState(0.5, 0.5, angle=sign * 135.0 * u)]


def _pair(d0: float, d1: float) -> Trajectory:
    def f(u: float) -> list[ObjectState]:
        d = _lerp(d0, d1, u)
        return [ObjectState(0.5 - d, 0.5, scale=0.8), ObjectState(0.5 + d, 0.5, scale=0.8)]

    return f


def _two_step(first: str, dx: float) -> Trajectory:
    """Grow (or shrink) and move horizontally, one after the other."""
    x0 = 0.5 - dx / 2
    s0, s1 = (0.5, 1.3) if dx > 0 else (1.3, 0.5)

    def f(u: float) -> list[ObjectState]:
        a, b = min(u * 2, 1.0), max(u * 2 - 1, 0.0)
        grow, move = (a, b) if first == "size" else (b, a)
        return [ObjectState(x0 + dx * move, 0.5, scale=_lerp(s0, s1, grow))]

    return f


@dataclass(frozen=True)
class SyntheticClass:
    name: str  # class name (also its folder)
    pair: int  # index of the order pair it belongs to
    trajectory: Trajectory = field(compare=False, repr=False)
    shape: str | None = None  # forced shape (rotation needs an elongated bar)


CLASSES: tuple[SyntheticClass, ...] = (
    SyntheticClass("moving left to right", 0, _move(0.15, 0.5, 0.85, 0.5)),
    SyntheticClass("moving right to left", 0, _move(0.85, 0.5, 0.15, 0.5)),
    SyntheticClass("moving up", 1, _move(0.5, 0.85, 0.5, 0.15)),
    SyntheticClass("moving down", 1, _move(0.5, 0.15, 0.5, 0.85)),
    SyntheticClass("growing", 2, _scale(0.35, 1.6)),
    SyntheticClass("shrinking", 2, _scale(1.6, 0.35)),
    SyntheticClass("appearing", 3, _fade(0.0, 1.0)),
    SyntheticClass("disappearing", 3, _fade(1.0, 0.0)),
    SyntheticClass("rotating clockwise", 4, _rotate(1.0), shape="bar"),
    SyntheticClass("rotating counter-clockwise", 4, _rotate(-1.0), shape="bar"),
    SyntheticClass("two objects approaching", 5, _pair(0.33, 0.1)),
    SyntheticClass("two objects separating", 5, _pair(0.1, 0.33)),
    SyntheticClass("moving diagonally down to the right", 6, _move(0.18, 0.18, 0.82, 0.82)),
    SyntheticClass("moving diagonally up to the left", 6, _move(0.82, 0.82, 0.18, 0.18)),
    SyntheticClass("moving diagonally down to the left", 7, _move(0.82, 0.18, 0.18, 0.82)),
    SyntheticClass("moving diagonally up to the right", 7, _move(0.18, 0.82, 0.82, 0.18)),
    SyntheticClass("going right and coming back", 8, _there_and_back("x", 0.15, 0.85)),
    SyntheticClass("going left and coming back", 8, _there_and_back("x", 0.85, 0.15)),
    SyntheticClass("jumping up and landing", 9, _there_and_back("y", 0.8, 0.2)),
    SyntheticClass("dipping down and rising", 9, _there_and_back("y", 0.2, 0.8)),
    SyntheticClass("growing then moving right", 10, _two_step("size", 0.6)),
    SyntheticClass("moving right then growing", 10, _two_step("move", 0.6)),
    SyntheticClass("shrinking then moving left", 11, _two_step("size", -0.6)),
    SyntheticClass("moving left then shrinking", 11, _two_step("move", -0.6)),
)
_BY_NAME = {c.name: c for c in CLASSES}

#: which order pairs go to which split (pairs never straddle splits)
SPLIT_PAIRS: dict[str, tuple[int, ...]] = {"train": (0, 2, 3, 4, 6, 8), "val": (5, 9, 11), "test": (1, 7, 10)}


def class_split(name: str) -> str:
    pair = _BY_NAME[name].pair
    return next(s for s, pairs in SPLIT_PAIRS.items() if pair in pairs)


# ---------------------------------------------------------------- language
def _where(x: float, y: float) -> str:
    col = "left" if x < 0.38 else "right" if x > 0.62 else ""
    row = "top" if y < 0.38 else "bottom" if y > 0.62 else ""
    if not col and not row:
        return "in the center"
    return f"near the {' '.join(w for w in (row, col) if w)}"


def _size_word(scale: float) -> str:
    return "small" if scale < 0.75 else "large" if scale > 1.25 else "medium"


def _tilt(angle: float) -> str:
    a = angle % 180
    if a < 22.5 or a >= 157.5:
        return "horizontal"
    if 67.5 <= a < 112.5:
        return "vertical"
    return "tilted down to the right" if a < 90 else "tilted up to the right"


def caption(states: Sequence[ObjectState], shape: str, colour: str, background: str | None = None) -> str:
    """One frame in words: 'a small red circle near the top left', two objects, faint ones, tilted bars."""
    if len(states) == 2:
        gap = abs(states[1].x - states[0].x)
        dist = "far apart" if gap > 0.45 else "close together" if gap < 0.3 else "a little apart"
        text = f"two {colour} {shape}s {dist}"
    else:
        s = states[0]
        if s.alpha < 0.2:
            text = "an empty scene"
        else:
            faint = "faint " if s.alpha < 0.6 else ""
            text = f"a {faint}{_size_word(s.scale)} {colour} {shape} {_where(s.x, s.y)}"
            if shape == "bar":
                text += f", {_tilt(s.angle)}"
    if background:
        text += f" on a {background} background"
    return text


def phrase(states: Sequence[ObjectState], shape: str) -> str:
    """One frame in the scripts' words, colour-free: 'the object is small near the left', 'the bar is vertical ...'."""
    noun = "bar" if shape == "bar" else "object"
    if len(states) == 2:
        gap = abs(states[1].x - states[0].x)
        dist = "far apart" if gap > 0.45 else "close together" if gap < 0.3 else "a little apart"
        return f"the two objects are {dist}"
    s = states[0]
    if s.alpha < 0.2:
        return "the scene is empty"
    if s.alpha < 0.6:
        return f"the {noun} is faint {_where(s.x, s.y)}"
    if noun == "bar":
        return f"the bar is {_tilt(s.angle)} {_where(s.x, s.y)}"
    return f"the {noun} is {_size_word(s.scale)} {_where(s.x, s.y)}"


def script(name: str, num_sub_actions: int) -> list[str]:
    """The class's true ordered sub-actions: the scene at the middle of each of S stages."""
    cls = _BY_NAME[name]
    out = []
    for k in range(num_sub_actions):
        u = (k + 0.5) / num_sub_actions
        text = phrase(cls.trajectory(u), cls.shape or "object")
        prefix = "first" if k == 0 else "finally" if k == num_sub_actions - 1 else "then"
        out.append(f"{prefix} {text}")
    return out


# ----------------------------------------------------------------- drawing
@dataclass(frozen=True)
class VideoParams:
    shape: str
    colour: str
    background: str
    base_size: float  # object radius as a share of the frame side
    gamma: float  # speed profile u = t ** gamma
    start: float  # motion window start (share of the video)
    end: float  # motion window end
    noise: float  # std of pixel noise
    distractor: tuple[float, float, str] | None  # static small square: x, y, colour
    jitter: tuple[float, float]  # constant offset of the whole motion


def sample_video_params(rng: np.random.Generator, cls: SyntheticClass) -> VideoParams:
    colours = list(COLOURS)
    colour = colours[rng.integers(len(colours))]
    distractor = None
    if rng.random() < 0.5:
        other = [c for c in colours if c != colour]
        distractor = (float(rng.uniform(0.1, 0.9)), float(rng.uniform(0.1, 0.9)), other[rng.integers(len(other))])
    start = float(rng.uniform(0.0, 0.12))
    return VideoParams(
        shape=cls.shape or SHAPES[rng.integers(len(SHAPES))],
        colour=colour,
        background=list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))],
        base_size=float(rng.uniform(0.09, 0.14)),
        gamma=float(rng.uniform(0.7, 1.4)),
        start=start,
        end=float(rng.uniform(0.88, 1.0)),
        noise=float(rng.uniform(0.0, 8.0)),
        distractor=distractor,
        jitter=(float(rng.uniform(-0.05, 0.05)), float(rng.uniform(-0.05, 0.05))),
    )


def _shape_mask(shape: str, xx: np.ndarray, yy: np.ndarray, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    th = math.radians(angle)
    dx, dy = xx - cx, yy - cy
    xr = dx * math.cos(th) + dy * math.sin(th)
    yr = -dx * math.sin(th) + dy * math.cos(th)
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        return (np.abs(xr) <= r * 0.85) & (np.abs(yr) <= r * 0.85)
    if shape == "bar":
        return (np.abs(xr) <= r * 1.6) & (np.abs(yr) <= r * 0.35)
    if shape == "triangle":  # pointing up: y from cy - r to cy + r, half width grows downwards
        half = (yr + r) * 0.6
        return (yr >= -r) & (yr <= r) & (np.abs(xr) <= half)
    raise ValueError(f"unknown shape {shape!r}")


def render_frame(states: Sequence[ObjectState], p: VideoParams, size: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """One RGB uint8 frame [size, size, 3]."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    img = np.empty((size, size, 3), np.float32)
    img[:] = BACKGROUNDS[p.background]
    if p.distractor is not None:
        dx, dy, dc = p.distractor
        m = _shape_mask("square", xx, yy, dx * size, dy * size, size * 0.04, 0.0)
        img[m] = COLOURS[dc]
    colour = np.array(COLOURS[p.colour], np.float32)
    for s in states:
        cx = (s.x + p.jitter[0]) * size
        cy = (s.y + p.jitter[1]) * size
        m = _shape_mask(p.shape, xx, yy, cx, cy, p.base_size * size * s.scale, s.angle)
        img[m] = img[m] * (1 - s.alpha) + colour * s.alpha
    if p.noise > 0 and rng is not None:
        img += rng.normal(0.0, p.noise, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def states_at(cls: SyntheticClass, p: VideoParams, t: float) -> list[ObjectState]:
    """The objects at video time t in [0, 1] (speed profile and motion window applied)."""
    u = min(max((t - p.start) / (p.end - p.start), 0.0), 1.0) ** p.gamma
    return cls.trajectory(u)


def render_video(cls: SyntheticClass, p: VideoParams, num_frames: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """[num_frames, size, size, 3] uint8."""
    frames = [render_frame(states_at(cls, p, i / (num_frames - 1)), p, size, rng) for i in range(num_frames)]
    return np.stack(frames)


# ------------------------------------------------ single captioned frames
#: first entry of every single-frame seed; videos use the 3-entry seeds [seed, class index, video index]
FRAME_SEED_NAMESPACE = 0x5CE7E
#: independent streams of single frames (pre-training vs held-out retrieval); never 0, see `frame_seed`
FRAME_STREAMS = {"train": 1, "heldout": 2}


@dataclass(frozen=True)
class CaptionedFrame:
    """One rendered scene with its words: a class trajectory at a random time, or a free random layout."""

    image: np.ndarray  # [size, size, 3] uint8
    class_name: str | None  # whose trajectory it was taken from (never part of its words); None = free layout
    t: float  # video time in [0, 1] (trajectory scenes)
    params: VideoParams
    states: tuple[ObjectState, ...]

    def caption(self, background: bool = True) -> str:
        """'a small red circle near the top left on a navy background' (see `caption`)."""
        return caption(self.states, self.params.shape, self.params.colour, self.params.background if background else None)

    def phrase(self) -> str:
        """'the object is small near the left' (the scripts' words, see `phrase`)."""
        return phrase(self.states, self.params.shape)


def frame_seed(seed: int, index: int, stream: str) -> list[int]:
    """Seed of single frame `index`: 4 entries, the last one non-zero, so never equal to a video's 3-entry seed."""
    if stream not in FRAME_STREAMS:
        raise ValueError(f"unknown frame stream {stream!r}; choose one of {', '.join(FRAME_STREAMS)}")
    return [FRAME_SEED_NAMESPACE, seed, index, FRAME_STREAMS[stream]]


def _free_layout(rng: np.random.Generator, shape: str) -> tuple[tuple[ObjectState, ...], str]:
    """Objects anywhere: any position, size, visibility and (bars) tilt, or two objects at any gap."""
    shape = "bar" if rng.random() < 0.2 else shape
    if shape != "bar" and rng.random() < 0.15:
        cx, y, d, s = rng.uniform(0.4, 0.6), rng.uniform(0.25, 0.75), rng.uniform(0.04, 0.36), rng.uniform(0.5, 1.0)
        return (ObjectState(float(cx - d), float(y), float(s)), ObjectState(float(cx + d), float(y), float(s))), shape
    x, y = rng.uniform(0.12, 0.88, 2)
    scale = math.exp(rng.uniform(math.log(0.35), math.log(1.6)))
    alpha = 1.0 if rng.random() < 0.75 else float(rng.random())
    angle = float(rng.uniform(0.0, 180.0)) if shape == "bar" else 0.0
    return (ObjectState(float(x), float(y), scale, alpha, angle),), shape


def captioned_frame(seed: int, index: int, size: int, stream: str = "train", free_share: float = 0.0) -> CaptionedFrame:
    """Frame `index` of a stream: a random class's trajectory at a random time (or, with probability
    `free_share`, a free random layout), with every video nuisance (colour, background, noise, distractor)."""
    rng = np.random.default_rng(frame_seed(seed, index, stream))
    cls = CLASSES[rng.integers(len(CLASSES))]
    params = sample_video_params(rng, cls)
    t, u = float(rng.random()), float(rng.random())
    if u < free_share:
        states, shape = _free_layout(rng, params.shape)
        params = dataclasses.replace(params, shape=shape)
        return CaptionedFrame(render_frame(states, params, size, rng), None, t, params, states)
    states = tuple(states_at(cls, params, t))
    return CaptionedFrame(render_frame(states, params, size, rng), cls.name, t, params, states)


def write_video(frames: np.ndarray, path: str | os.PathLike[str], fps: int = 12, codec: str = "libx264") -> None:
    """Write RGB frames [T, H, W, 3] to an mp4 (H.264, yuv420p) atomically; the same frames give the same bytes.

    libx264's lookahead (rate-control lookahead, B-frame decisions) made repeated encodes of one clip differ
    (7 distinct files in 12 encodes on 2 busy cores), so two `fsar synthetic` runs wrote different datasets and
    the demo's figures moved by a tenth of a point between runs. One thread, no lookahead and no B-frames
    give one file in 100 encodes."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _, h, w, _ = frames.shape
    with atomic_path(path) as tmp, av.open(str(tmp), mode="w", format="mp4") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        if codec == "libx264":
            stream.codec_context.thread_count = 1
            stream.options = {"crf": "18", "preset": "veryfast", "x264-params": "threads=1:rc-lookahead=0:sync-lookahead=0:bframes=0"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _slug(name: str) -> str:
    return name.replace(" ", "_")


def generate(
    out: str | os.PathLike[str],
    videos_per_class: int = 8,
    *,
    seed: int = 0,
    num_frames: int = 24,
    size: int = 64,
    num_sub_actions: int = 3,
    classes: Sequence[str] | None = None,
) -> Path:
    """Write the synthetic dataset: one mp4 per video, `synthetic.csv` (path,label,split), `scripts.yaml`.

    Returns the folder. Existing videos with the same name are kept (the generator is deterministic).
    """
    import yaml

    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    chosen = [_BY_NAME[c] for c in classes] if classes else list(CLASSES)
    rows = []
    for ci, cls in enumerate(CLASSES):
        if cls not in chosen:
            continue
        for vi in range(videos_per_class):
            rng = np.random.default_rng([seed, ci, vi])
            params = sample_video_params(rng, cls)
            rel = f"{_slug(cls.name)}/{_slug(cls.name)}_{vi:03d}.mp4"
            path = root / rel
            if not path.exists():
                write_video(render_video(cls, params, num_frames, size, rng), path)
            rows.append({"path": rel, "label": cls.name, "split": class_split(cls.name)})
    with atomic_open(root / LIST_FILE, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "label", "split"])
        writer.writeheader()
        writer.writerows(rows)
    corpus = {c.name: {"label": c.name, "sub_act_en_li": script(c.name, num_sub_actions)} for c in chosen}
    atomic_write_text(root / SCRIPTS_FILE, yaml.safe_dump(corpus, sort_keys=False, allow_unicode=True))
    return root


@register_dataset("synthetic")
class SyntheticDataset(ListedDataset):
    """The generated dataset. Class names need no files; videos are read from `<video_root>/synthetic.csv`."""

    name = "synthetic"

    def classes(self, split: str) -> list[str]:
        if split not in SPLITS:
            raise DatasetError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
        return [c.name for c in CLASSES if class_split(c.name) == split]

    def order_pairs(self) -> dict[str, str]:
        out = {}
        for a in CLASSES:
            for b in CLASSES:
                if a.pair == b.pair and a.name != b.name:
                    out[a.name] = b.name
        return out

    @cached_property
    def _entries(self) -> list[VideoEntry]:
        root = self._video_root_or_hint()
        return read_video_list(root / LIST_FILE, root)

    def _video_root_or_hint(self) -> Path:
        if not self.cfg.video_root:
            raise DatasetError(
                "dataset 'synthetic' needs its videos: run `fsar synthetic --out DIR` and pass --video-root DIR (make: VIDEO_ROOT=DIR)"
            )
        root = Path(self.cfg.video_root).expanduser().resolve()
        if not (root / LIST_FILE).is_file():
            raise DatasetError(
                f"{str(root)!r} holds no {LIST_FILE}; generate the dataset there with `fsar synthetic --out {root}`"
            )
        return root
