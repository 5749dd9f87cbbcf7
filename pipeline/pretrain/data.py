"""Pre-training data: captioned synthetic frames, seen exactly as the model stage sees video frames.

    view = FrameView.from_config(cfg, mean, std)
    frame = captioned_frame(seed, i, view.video_size, "train", free_share)   # pipeline.datasets.synthetic
    x = view(frame.image, rng)                                                # (3, H, W), normalised
    text, form, key = describe(frame, "prompt", rng, cfg.model.prompt_template)

Every frame gets one text in one of three styles: the full caption ("a small red circle near the top
left on a navy background", background named half of the time), the scripts' colour-free phrase
("the object is small near the left", half of the time led by first/then/finally), or that phrase in
the model's prompt template with a random class name ("A video of action about growing: then the
object is ..."), so the text tower learns the descriptions' words and to read past the class name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.datasets.synthetic import CLASSES, CaptionedFrame, captioned_frame
from pipeline.frames.decode import encode_jpeg
from pipeline.frames.reader import clip_from_jpegs
from pipeline.model.text import format_prompt

__all__ = ["FORMS", "ORDER_WORDS", "STYLES", "FrameView", "TrainStream", "content", "describe", "positives"]

STYLES = ("caption", "phrase", "prompt")  # the three caption styles, in the order of backbone.caption_weights
FORMS = ("caption", "caption_nobg", "phrase")  # what a text says about its frame (its content), see `content`
ORDER_WORDS = ("first", "then", "finally")  # the scripts' stage words


@dataclass(frozen=True)
class FrameView:
    """How the model stage sees a frame, through the same code: the frames stage's `encode_jpeg` (resized to
    the stored square, PIL bilinear, JPEG at its quality), then the frame store's `clip_from_jpegs` (a crop of
    the model's image size, random to train, centred to evaluate, normalised with the model's mean/std)."""

    video_size: int  # dataset.synthetic_size: side of the rendered frame
    storage_size: int  # frames.storage_size
    jpeg_quality: int  # frames.jpeg_quality
    image_size: int  # model.image_size: crop side fed to CLIP
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __post_init__(self) -> None:
        if self.image_size > self.storage_size:
            raise ValueError(f"model.image_size {self.image_size} is larger than frames.storage_size {self.storage_size}")

    def stored(self, image: np.ndarray) -> bytes:
        """What the frames stage keeps of one RGB frame [H, W, 3]: its JPEG at storage_size."""
        return encode_jpeg(np.ascontiguousarray(image), self.storage_size, self.jpeg_quality)

    def __call__(self, image: np.ndarray, rng: np.random.Generator | None = None) -> torch.Tensor:
        """(3, image_size, image_size) float: random crop with an rng, centre crop without."""
        mode = "eval" if rng is None else "train"
        return clip_from_jpegs([self.stored(image)], self.image_size, mode, self.mean, self.std, rng)[0]

    def batch(self, images: Sequence[np.ndarray], rng: np.random.Generator | None = None) -> torch.Tensor:
        return torch.stack([self(im, rng) for im in images])  # (B, 3, H, W)


def content(frame: CaptionedFrame, form: str) -> str:
    """What a text of that form says about the frame (two texts of a form match iff these are equal)."""
    if form == "caption":
        return frame.caption(background=True)
    if form == "caption_nobg":
        return frame.caption(background=False)
    if form == "phrase":
        return frame.phrase()
    raise ValueError(f"unknown form {form!r}; choose one of {FORMS}")


def describe(frame: CaptionedFrame, style: str, rng: np.random.Generator, prompt_template: str) -> tuple[str, str]:
    """(text, form) of one frame in one style; the form says which `content` the text carries."""
    if style == "caption":
        form = "caption" if rng.random() < 0.5 else "caption_nobg"
        return content(frame, form), form
    p = frame.phrase()
    if style == "phrase":
        return (p if rng.random() < 0.5 else f"{ORDER_WORDS[rng.integers(len(ORDER_WORDS))]} {p}"), "phrase"
    if style == "prompt":
        name = CLASSES[rng.integers(len(CLASSES))].name  # random: the class name says nothing about the frame
        return format_prompt(prompt_template, name, f"{ORDER_WORDS[rng.integers(len(ORDER_WORDS))]} {p}"), "phrase"
    raise ValueError(f"unknown caption style {style!r}; choose one of {STYLES}")


def positives(frames: Sequence[CaptionedFrame], forms: Sequence[str]) -> torch.Tensor:
    """(B, B) bool: text j (of form forms[j], written for frame j) is a correct text for frame i."""
    table = {f: [content(fr, f) for fr in frames] for f in set(forms)}
    cols = [[table[f][i] == table[f][j] for i in range(len(frames))] for j, f in enumerate(forms)]
    return torch.tensor(cols, dtype=torch.bool).T.contiguous()


class TrainStream:
    """Batches of (images, texts, positives) from the pre-training scene stream, deterministic per seed.

    Scene indices run through `scenes` distinct scenes, shuffled anew each pass; crops, caption
    styles and wording come from a separate rng.
    """

    def __init__(self, view: FrameView, *, seed: int, scenes: int, batch_size: int, free_share: float,
                 caption_weights: Sequence[float], prompt_template: str):
        self.view, self.seed, self.scenes, self.batch_size = view, seed, scenes, batch_size
        self.free_share, self.prompt_template = free_share, prompt_template
        w = np.asarray(caption_weights, dtype=np.float64)
        self.style_p = w / w.sum()
        self.rng = np.random.default_rng([seed, 1])
        self._pos, self._perm, self._pass = 0, np.empty(0, dtype=np.int64), -1

    def _next_indices(self, n: int) -> list[int]:
        out = []
        while len(out) < n:
            p, i = divmod(self._pos, self.scenes)
            if p != self._pass:
                self._perm, self._pass = np.random.default_rng([self.seed, 2, p]).permutation(self.scenes), p
            out.append(int(self._perm[i]))
            self._pos += 1
        return out

    def next(self) -> tuple[torch.Tensor, list[str], torch.Tensor]:
        frames = [captioned_frame(self.seed, i, self.view.video_size, "train", self.free_share) for i in self._next_indices(self.batch_size)]
        images = self.view.batch([f.image for f in frames], self.rng)  # (B, 3, H, W)
        styles = self.rng.choice(len(STYLES), size=len(frames), p=self.style_p)
        texts, forms = zip(*(describe(f, STYLES[s], self.rng, self.prompt_template) for f, s in zip(frames, styles)))
        return images, list(texts), positives(frames, forms)
