"""Zero-shot caption retrieval on held-out synthetic frames (their own seed stream): does the
pre-trained CLIP read position, size, colour, visibility and tilt off a frame?

- `caption`: frames in groups of `candidates` with distinct full captions; each frame picks its
  caption among its group's (chance 1 / candidates).
- `phrase`: each frame picks its colour-free scripts' phrase among every distinct phrase of the
  held-out frames (chance 1 / that count; `majority`: always answering the most common one).
- `probes`: one attribute at a time. Candidates are the frame's own caption (or phrase) with only
  that attribute changed (position: 9 places, size: 3, colour: 8, visibility: 3, tilt: 4, gap: 3);
  frames whose words do not mention the attribute are left out.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.datasets.synthetic import COLOURS, CaptionedFrame, ObjectState, caption, phrase
from pipeline.pretrain.data import FrameView
from pipeline.pretrain.train import encode_text

__all__ = ["PROBES", "evaluate", "headline", "probe_line"]

_GRID = (0.2, 0.5, 0.8)


def _single(f: CaptionedFrame) -> bool:
    return len(f.states) == 1


def _visible(f: CaptionedFrame) -> bool:
    return all(s.alpha >= 0.6 for s in f.states)


def _with(f: CaptionedFrame, **change: Any) -> list[ObjectState]:
    return [dataclasses.replace(s, **change) for s in f.states]


def _gap(f: CaptionedFrame, g: float) -> list[ObjectState]:
    a, b = f.states
    c = (a.x + b.x) / 2
    return [dataclasses.replace(a, x=c - g / 2), dataclasses.replace(b, x=c + g / 2)]


# attribute -> (which frames, variants: frame -> [(states, colour)])
PROBES: dict[str, tuple[Callable[[CaptionedFrame], bool], Callable[[CaptionedFrame], list[tuple[list[ObjectState], str]]]]] = {
    "position": (lambda f: _single(f) and _visible(f), lambda f: [(_with(f, x=x, y=y), f.params.colour) for y in _GRID for x in _GRID]),
    "size": (lambda f: _single(f) and _visible(f) and f.params.shape != "bar", lambda f: [(_with(f, scale=s), f.params.colour) for s in (0.5, 1.0, 1.5)]),
    "colour": (_visible, lambda f: [(list(f.states), c) for c in COLOURS]),
    "visibility": (_single, lambda f: [(_with(f, alpha=a), f.params.colour) for a in (0.1, 0.4, 1.0)]),
    "tilt": (lambda f: _single(f) and _visible(f) and f.params.shape == "bar", lambda f: [(_with(f, angle=a), f.params.colour) for a in (0.0, 45.0, 90.0, 135.0)]),
    "gap": (lambda f: len(f.states) == 2, lambda f: [(_gap(f, g), f.params.colour) for g in (0.2, 0.38, 0.6)]),
}


class _TextBank:
    """Normalised text features, encoded once per distinct string."""

    def __init__(self, clip: nn.Module, tokenizer: Callable[[list[str]], torch.Tensor], batch: int = 256):
        self.clip, self.tokenizer, self.batch, self.cache = clip, tokenizer, batch, {}
        self.device = next(clip.parameters()).device

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        todo = sorted({t for t in texts if t not in self.cache})
        for i in range(0, len(todo), self.batch):
            chunk = todo[i : i + self.batch]
            feats = F.normalize(encode_text(self.clip, self.tokenizer(chunk).to(self.device)), dim=-1)
            self.cache.update(zip(chunk, feats))
        return torch.stack([self.cache[t] for t in texts])  # (P, E)


def _groups(frames: Sequence[CaptionedFrame], size: int) -> list[list[int]]:
    """Consecutive groups of `size` frames with distinct captions (frames that would repeat one wait for the next group)."""
    groups, current, seen, waiting = [], [], set(), []
    for i in range(len(frames)):
        waiting.append(i)
        for j in list(waiting):
            cap = frames[j].caption()
            if cap not in seen:
                current.append(j)
                seen.add(cap)
                waiting.remove(j)
            if len(current) == size:
                groups.append(current)
                current, seen = [], set()
    return groups


@torch.inference_mode()
def evaluate(clip: nn.Module, tokenizer: Callable[[list[str]], torch.Tensor], view: FrameView,
             frames: Sequence[CaptionedFrame], candidates: int, probes: bool = True) -> dict[str, Any]:
    """Retrieval scores of `clip` on `frames` (centre crops), as a JSON-ready dict."""
    was_training = clip.training
    clip.eval()
    device = next(clip.parameters()).device
    images = torch.cat([F.normalize(clip.encode_image(view.batch([f.image for f in frames[i : i + 256]]).to(device)), dim=-1)
                        for i in range(0, len(frames), 256)])  # (N, E)
    bank = _TextBank(clip, tokenizer)
    out: dict[str, Any] = {}

    groups = _groups(frames, candidates)
    hits = 0
    for g in groups:
        sims = images[g] @ bank([frames[i].caption() for i in g]).T  # (C, C)
        hits += int((sims.argmax(1).cpu() == torch.arange(len(g))).sum())
    n = sum(len(g) for g in groups)
    out["caption"] = {"top1": hits / n if n else None, "chance": 1 / candidates, "candidates": candidates, "groups": len(groups), "frames": n}

    truth = [f.phrase() for f in frames]
    vocab = sorted(set(truth))
    pred = (images @ bank(vocab).T).argmax(1)
    top1 = sum(vocab[int(p)] == t for p, t in zip(pred, truth)) / len(frames)
    majority = Counter(truth).most_common(1)[0][1] / len(frames)
    out["phrase"] = {"top1": top1, "chance": 1 / len(vocab), "majority": majority, "candidates": len(vocab), "frames": len(frames)}

    if probes:
        out["probes"] = {form: _probes(images, frames, bank, form) for form in ("caption", "phrase")}
    clip.train(was_training)
    return out


def _probes(images: torch.Tensor, frames: Sequence[CaptionedFrame], bank: _TextBank, form: str) -> dict[str, Any]:
    res: dict[str, Any] = {}
    for name, (keep, variants) in PROBES.items():
        if form == "phrase" and name == "colour":
            continue  # phrases are colour-free
        hits = total = 0
        k = 0
        for i, f in enumerate(frames):
            if not keep(f):
                continue
            words = [caption(s, f.params.shape, c, f.params.background) if form == "caption" else phrase(s, f.params.shape) for s, c in variants(f)]
            own = f.caption() if form == "caption" else f.phrase()
            if len(set(words)) != len(words) or own not in words:
                continue  # this attribute is not in the frame's words (or a variant reads the same)
            k = len(words)
            hits += int(int((images[i] @ bank(words).T).argmax()) == words.index(own))
            total += 1
        if total:
            res[name] = {"top1": hits / total, "chance": 1 / k, "frames": total}
    return res


def headline(result: dict[str, Any]) -> str:
    """One line for the log: caption and phrase top-1 against chance."""
    c, p = result["caption"], result["phrase"]
    return (f"caption top-1 {c['top1']:.3f} over {c['candidates']} captions (chance {c['chance']:.3f}); "
            f"phrase top-1 {p['top1']:.3f} over {p['candidates']} phrases (chance {p['chance']:.3f}, majority {p['majority']:.3f})")


def probe_line(result: dict[str, Any], form: str = "phrase") -> str:
    """One line for the log: each attribute probe's top-1 / chance."""
    probes = result.get("probes", {}).get(form, {})
    return f"{form} probes (top-1 / chance): " + ", ".join(f"{k} {v['top1']:.2f}/{v['chance']:.2f}" for k, v in probes.items())
