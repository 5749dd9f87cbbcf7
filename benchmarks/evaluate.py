"""Evaluation episodes/s with and without the evaluation cache, on the same episodes. Not a test.

    python benchmarks/evaluate.py                                         # fsar-tiny, CPU
    python benchmarks/evaluate.py --clip ViT-B-16 --episodes 4 --videos-per-class 2   # real size, CPU (slow)
    python benchmarks/evaluate.py --clip ViT-B-16 --device cuda --episodes 200

Random weights, M=2 (the HMDB51/UCF101/Kinetics preset), 5-way 1-shot, 1 query per class, T=8.
Clips are random tensors per video id (deterministic), standing in for the frame store, so the
numbers are the model's, not decoding's. Video reuse matters: the real HMDB51 test split has 1,292
videos and 10,000 episodes of 10 videos each, about 77 uses per video; pass --classes and
--videos-per-class so that episodes * 10 / videos is in that range where time allows.

Prints episodes/s of both paths, the ratio, and whether every prediction agrees. Target >= 5x.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import load_config  # noqa: E402
from pipeline.model import build_model  # noqa: E402
from pipeline.training.common import EpisodeLoader  # noqa: E402
from pipeline.training.episodes import EpisodeSampler  # noqa: E402
from pipeline.training.evaluate import EpisodeScorer  # noqa: E402


class RandomFrames:
    """Stands in for FrameStore: a fixed random clip per video id."""

    def __init__(self, num_frames: int, size: int):
        self.num_frames, self.size = num_frames, size

    def clip(self, video_id, num_frames, mode, size, mean, std, rng=None):
        g = torch.Generator().manual_seed(abs(hash(video_id)) % (2**31))
        return torch.randn(num_frames, 3, size, size, generator=g)  # (T, 3, H, W)


class RandomText:
    """Stands in for TextCache: random prompts per class, encoded by the model's own frozen prefix."""

    def __init__(self, model, classes, S):
        prompts = [f"A video of action about {c}: step {k}" for c in classes for k in range(S)]
        tokens = model.tokenize(prompts)
        with torch.inference_mode():
            states = model.text_prefix(tokens.to(next(model.parameters()).device))
        self.rows = {c: i for i, c in enumerate(classes)}
        self.tokens = tokens.view(len(classes), S, -1)
        self.states = states.view(len(classes), S, *states.shape[1:]).cpu()

    def for_classes(self, classes):
        idx = torch.as_tensor([self.rows[c] for c in classes])
        return self.tokens[idx], self.states[idx]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clip", default="fsar-tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA only)")
    p.add_argument("--episodes", type=int, default=40)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--videos-per-class", type=int, default=4)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--image-size", type=int, default=None, help="default: the model's own")
    args = p.parse_args()

    image_size = args.image_size or (224 if args.clip.startswith("ViT") else 64)
    cfg = load_config(
        "hmdb51",
        overrides=[f"model.clip={args.clip}", "model.pretrained=null", "model.vision_adapted_layers=2",
                   f"model.text_adapted_layers={8 if args.clip.startswith('ViT') else 2}", f"model.image_size={image_size}",
                   f"protocol.num_frames={args.frames}"],
    )
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.protocol, device=device).eval()
    classes = [f"class{c}" for c in range(args.classes)]
    vids = {c: [f"{c}/v{i}" for i in range(args.videos_per_class)] for c in classes}
    episodes = EpisodeSampler(vids, 5, 1, 1, seed=0).take(args.episodes)
    loader = EpisodeLoader(RandomFrames(args.frames, image_size), RandomText(model, classes, cfg.protocol.num_sub_actions), cfg,
                           model.image_mean, model.image_std, device)
    uses = args.episodes * 10 / (args.classes * args.videos_per_class)
    print(f"{args.clip} on {device} ({'bf16 autocast' if args.amp and device.type == 'cuda' else 'fp32'}), M=2, 5-way 1-shot, "
          f"T={args.frames}, {args.episodes} episodes over {args.classes * args.videos_per_class} videos ({uses:.1f} uses per video)")

    results = {}
    for name, cache in (("uncached", False), ("cached", True)):
        scorer = EpisodeScorer(model, loader, cache=cache, amp=args.amp)
        scorer.scores(episodes[0]) if not cache else None  # warm-up of kernels (the cache is built inside the timing)
        _sync(device)
        t0 = time.perf_counter()
        preds = [scorer.scores(ep).logits.argmax(-1).cpu() for ep in episodes]
        _sync(device)
        seconds = time.perf_counter() - t0
        results[name] = (seconds, torch.stack(preds))
        print(f"{name:>9}: {seconds:8.2f} s  {args.episodes / seconds:8.2f} episodes/s")
    same = bool(torch.equal(results["cached"][1], results["uncached"][1]))
    ratio = results["uncached"][0] / results["cached"][0]
    print(f"ratio cached/uncached episodes/s: {ratio:.2f}x (target >= 5x); identical predictions: {same}")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
