"""The audit stage's cost at HMDB51's size: frozen towers once per frame and per sentence, then the measure. Not a test.

    python benchmarks/audit.py --clip fsar-tiny --image-size 64                 # the demo's backbone size: seconds
    python benchmarks/audit.py                                                   # ViT-B-16 at 224 px, random weights (CPU: long)
    python benchmarks/audit.py --classes 4                                       # a slice of it: per-frame rates are the same

An HMDB51-sized audit: the 41 train+val classes (31 + 10 of the standard few-shot split) x 16 videos x 8 frames,
3 sentences per description, 3 description candidates per class and the kept description of every one of the 51
classes (the references of `relevance`), every one of the 3! orders of each candidate scored. Random weights
(`model.pretrained=null`: no weights offline); clips are seeded random tensors per video id, standing in for the
frame store, so the figures are the towers' and the measure's, not JPEG decoding's (`benchmarks/frames.py` times
that). The stage's own functions run: `features.frame_features` (through the few-shot core's `Prefetcher`),
`features.text_features` and `measure.audit_classes`.

Prints the time of each part, frames/s and prompts/s, and ends with
`audit benchmark: seconds=<total> videos=<n> frames=<n> prompts=<n>`.

Measured (2 CPU cores shared with other work; load average printed by `uptime` beside each run):
see docs/audit.md, "Speed".
"""

from __future__ import annotations

import argparse
import os
import time
import zlib

import pandas as pd
import torch

from pipeline.audit.features import frame_features, text_features
from pipeline.audit.measure import Settings, audit_classes
from pipeline.config import load_config
from pipeline.fewshot.loader import Prefetcher
from pipeline.model import build_model


class _Clips:
    """Stands in for the frame store's loader: seeded random (b, T, 3, H, W) clips per chunk of video ids."""

    def __init__(self, frames: int, size: int, device: torch.device):
        self.frames, self.size, self.device = frames, size, device

    def _clip(self, video_id: str) -> torch.Tensor:
        g = torch.Generator().manual_seed(zlib.crc32(video_id.encode()))
        return torch.randn(self.frames, 3, self.size, self.size, generator=g)

    def clip_batches(self, ids, batch, workers):
        chunks = [ids[i : i + batch] for i in range(0, len(ids), batch)]
        return Prefetcher(lambda chunk: (chunk, torch.stack([self._clip(v) for v in chunk])), chunks, workers, self.device, depth=workers + 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clip", default="ViT-B-16")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--classes", type=int, default=41, help="audited classes (HMDB51 train+val: 41)")
    p.add_argument("--all-classes", type=int, default=51, help="classes whose kept description is a reference (HMDB51: 51)")
    p.add_argument("--videos-per-class", type=int, default=16)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--sentences", type=int, default=3)
    p.add_argument("--candidates", type=int, default=3)
    p.add_argument("--videos-per-pass", type=int, default=16)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg = load_config(None, overrides=[f"model.clip={args.clip}", "model.pretrained=null", f"model.image_size={args.image_size}",
                                       f"protocol.num_frames={args.frames}", f"protocol.num_sub_actions={args.sentences}",
                                       "model.text_adapted_layers=1", "model.vision_adapted_layers=1"])  # adapters: unused here
    t0 = time.perf_counter()
    model = build_model(cfg.model, cfg.protocol, device=device).eval()
    built = time.perf_counter() - t0

    classes = [f"class {i:02d}" for i in range(args.all_classes)]
    audited = classes[: args.classes]
    rows = []
    for i, cls in enumerate(classes):
        for c in range(args.candidates if cls in audited else 1):
            sentences = [f"{cls}: step {k} of candidate {c}, seen from {['the left', 'above', 'the right'][k % 3]}" for k in range(args.sentences)]
            rows.append(("train", cls, c, c == 0, sentences))
    cands = pd.DataFrame(rows, columns=["split", "class", "candidate", "kept", "sentences"])
    prompts, prompt_rows = [], {}
    for split, cls, cand, sentences in zip(cands["split"], cands["class"], cands["candidate"], cands["sentences"]):
        prompt_rows[(split, cls, int(cand))] = list(range(len(prompts), len(prompts) + len(sentences)))
        prompts += [cfg.model.prompt_template.format(c=cls, s=s) for s in sentences]
    videos = {("train", cls): [f"{cls}/v{j:02d}" for j in range(args.videos_per_class)] for cls in audited}
    ids = [v for vs in videos.values() for v in vs]

    t0 = time.perf_counter()
    frames = frame_features(model, _Clips(args.frames, args.image_size, device), ids, args.videos_per_pass, args.workers)  # (V, T, E)
    t_frames = time.perf_counter() - t0
    t0 = time.perf_counter()
    text = text_features(model, prompts, 256)  # (P, E)
    t_text = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = audit_classes(cands, videos, prompt_rows, text, frames, {v: i for i, v in enumerate(ids)}, Settings("benchmark", "videos", 5, 4))
    t_measure = time.perf_counter() - t0
    total = t_frames + t_text + t_measure
    n_frames = len(ids) * args.frames
    print(f"audit benchmark: {args.clip} at {args.image_size} px on {args.device} ({torch.get_num_threads()} threads, "
          f"cpu_count {os.cpu_count()}), model built in {built:.1f} s")
    print(f"  {len(audited)} audited classes x {args.videos_per_class} videos x {args.frames} frames = {n_frames} frames: "
          f"{t_frames:.1f} s ({n_frames / t_frames:.1f} frames/s)")
    print(f"  {len(prompts)} sentence prompts ({args.all_classes} kept descriptions + {args.candidates - 1} more candidates of each "
          f"audited class, {args.sentences} sentences each): {t_text:.2f} s ({len(prompts) / t_text:.1f} prompts/s)")
    print(f"  measure ({len(result.table)} candidates, {len(result.per_video)} candidate-video pairs, "
          f"{int(result.table['orders_scored'].iloc[0])} orders each): {t_measure:.2f} s")
    print(f"audit benchmark: seconds={total:.1f} videos={len(ids)} frames={n_frames} prompts={len(prompts)}")


if __name__ == "__main__":
    main()
