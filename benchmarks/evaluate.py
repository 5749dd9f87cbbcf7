"""Evaluation episodes/s: batched + cached vs one episode at a time uncached, on the same episodes. Not a test.

    python benchmarks/evaluate.py                                   # ViT-B-16 at 112 px, CPU, 77 uses per video (~2-4 min, 2 cores)
    python benchmarks/evaluate.py --image-size 224 --classes 10     # native size, 20 videos (about 8x longer)
    python benchmarks/evaluate.py --clip fsar-tiny --image-size 64  # seconds
    python benchmarks/evaluate.py --device cuda --amp --image-size 224 --classes 10 --videos-per-class 129 \\
        --episodes 10000 --uncached-episodes 200 --prefix           # HMDB51's test split size, one GPU (benchmarks/gpu.sh)

Random weights, M=2 of L vision blocks (the HMDB51/UCF101/Kinetics preset), 5-way 1-shot, one query
per class, T=8, S=3. Clips are seeded random tensors per video id and text states come from the
model's own frozen text prefix, standing in for the frame and text stores, so the numbers are the
model's, not decoding's.

Two paths over the same episodes:
- per-episode uncached: `EpisodeScorer(cache=False).scores(ep)`, every layer and the text adapters
  for each episode (the path before the cache); timed on the first --uncached-episodes episodes
  (its cost per episode does not depend on reuse);
- batched + cached: `EpisodeScorer(cache=True, episodes_per_batch=B)` over all --episodes, timed
  including building the cache (once per video, in passes of `evaluate.videos_per_pass` videos, kept in
  memory on the device: the frozen prefix and the first adapted block's per-video temporal and spatial
  steps; what `evaluate.prefix=memory` does, the default on a GPU); the last block runs at the class token
  only; a batch's scores are read while the next one runs (as the evaluate stage).

`--prefix`: the batched side reads the frozen prefix from a real prefix artifact instead of computing it
in memory. Inside the timing it builds one in a temporary artifact root with the prefix stage's own code
(`pipeline.prefix.stage.write_states`: the frozen blocks 1..L-M of every video, written to states.npy in
`--prefix-dtype`, the videos table, the manifest with checksums), opens it with `PrefixStates` (which
verifies states.npy's sha256) and scores every episode with `EpisodeScorer(prefix=...)`. It prints the
prefix time (compute + write, publish) and the scoring time (open + score) separately; the rate and ratio
include both. The temporary root is removed at the end.

Reuse r = episodes * videos per episode / videos (about 77 on HMDB51's test split: 1,292 videos,
10,000 episodes of 10). The cache's compute bound is limit = L / ((L - M) / r + M): per episode the
cached path runs M of L layers, plus the prefix once per video. CPU target: ratio >= 0.8 x limit.
The batched path can beat that bound: an adapted layer costs about 2 frozen ones (three attentions),
but per episode it runs only part of M layers (see above), and on a GPU one episode at a time is
latency-bound. The default (5 classes x 2 videos, 77 episodes) keeps a 2-core run short; each
episode then uses all 10 videos, which changes nothing in the cost per episode.

Agreement: on the episodes both paths scored, a query's prediction that differs counts as a disagreement
only where the uncached (reference) path's top-1 logit exceeds its second by more than the tie tolerance
(--tie-tolerance; default 0.1 logit under bf16 autocast, about twice the largest logit difference a GPU
run measured between the paths (4.7e-2), and 1e-3 in fp32); below it the two classes are tied within the
precision's rounding and either answer is right. The line before the last gives both counts; `agree` is
true when there is no disagreement beyond the tolerance.

Prints both rates, the ratio, the bound, the agreement, and ends with `ratio=<x> limit=<x> agree=<true|false>`.

Without `--prefix`, `--prefix-dtype float16` also scores every episode again from the frozen prefix
rounded to float16 (what the prefix artifact stores with `evaluate.prefix_dtype=float16`) and prints
whether every prediction agrees with the float32 prefix and the largest visual and semantic score
differences. With `--prefix` it is the stored dtype of the artifact (no second scoring).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.artifacts import ArtifactStore, Staging  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.contract import build_once  # noqa: E402
from pipeline.fewshot.episodes import EpisodeSampler  # noqa: E402
from pipeline.fewshot.loader import EpisodeLoader  # noqa: E402
from pipeline.model import build_model  # noqa: E402
from pipeline.prefix import FORMAT_VERSION, PrefixStates, plan_fields  # noqa: E402
from pipeline.prefix.stage import videos_table, write_states  # noqa: E402
from pipeline.fewshot.scoring import AUTO_EPISODES_PER_BATCH, EpisodeScorer, HostScores, episode_batches, videos_per_pass_for  # noqa: E402


class RandomFrames:
    """Stands in for FrameStore: a fixed random clip per video id (seeded by the id's CRC32), made on `device`."""

    def __init__(self, device: torch.device):
        self.device = device

    def clip(self, video_id, num_frames, mode, size, mean, std, rng=None):
        gen = torch.Generator(device=self.device).manual_seed(zlib.crc32(video_id.encode()))
        return torch.randn(num_frames, 3, size, size, generator=gen, device=self.device)  # (T, 3, H, W)


class RandomText:
    """Stands in for TextCache: S prompts per class, their states from the model's own frozen text prefix."""

    def __init__(self, model, classes: list[str], num_sub_actions: int):
        prompts = [f"A video of action about {c}: step {k}" for c in classes for k in range(num_sub_actions)]
        tokens = model.tokenize(prompts)  # (C*S, ctx)
        with torch.inference_mode():
            states = model.text_prefix(tokens).float()  # (C*S, ctx, D_t)
        self.rows = {c: i for i, c in enumerate(classes)}
        self.tokens = tokens.view(len(classes), num_sub_actions, -1)
        self.states = states.view(len(classes), num_sub_actions, *states.shape[1:])

    def for_classes(self, classes):
        idx = torch.as_tensor([self.rows[c] for c in classes], device=self.tokens.device)
        return self.tokens[idx], self.states[idx]


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clip", default="ViT-B-16", help="open_clip model name (random weights)")
    p.add_argument("--image-size", type=int, default=112, help="crop side (ViT-B-16's native 224 costs ~4x more)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA only)")
    p.add_argument("--vision-adapted-layers", type=int, default=2, help="M")
    p.add_argument("--text-adapted-layers", type=int, default=None, help="M_t; default 8 (HMDB51), 2 for fsar-*")
    p.add_argument("--task-context", choices=["faithful", "inductive"], default="faithful")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--classes", type=int, default=5)
    p.add_argument("--videos-per-class", type=int, default=2)
    p.add_argument("--uses", type=float, default=77.0, help="uses per video; sets --episodes when that is not given")
    p.add_argument("--episodes", type=int, default=None, help="default: uses * videos / 10")
    p.add_argument("--uncached-episodes", type=int, default=3, help="episodes timed on the per-episode uncached path")
    auto = ", ".join(f"{n} {device}" for device, n in AUTO_EPISODES_PER_BATCH.items())
    p.add_argument("--episodes-per-batch", default="auto", help=f"batched path: int or auto ({auto})")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--prefix", action="store_true",
                   help="batched side: build a real prefix artifact (temporary root) inside the timing and score from it")
    p.add_argument("--tie-tolerance", type=float, default=None,
                   help="reference top-1 margin (logits) within which a different prediction is a near-tie; default 0.1 under bf16, 1e-3 fp32")
    p.add_argument("--videos-per-pass", type=int, default=None, help="videos per pass through the frozen prefix (default 16 CPU, 128 CUDA)")
    p.add_argument("--prefix-dtype", choices=["float32", "float16"], default="float32",
                   help="with --prefix: the artifact's stored dtype; without: float16 also compares scores from a float16-stored prefix")
    return p.parse_args()


def _setup(args: argparse.Namespace):
    small = args.clip.startswith("fsar")
    cfg = load_config(
        "hmdb51",
        overrides=[
            f"model.clip={args.clip}", "model.pretrained=null", f"model.vision_adapted_layers={args.vision_adapted_layers}",
            f"model.text_adapted_layers={args.text_adapted_layers or (2 if small else 8)}", f"model.image_size={args.image_size}",
            f"model.task_context={args.task_context}", f"model.amp={str(args.amp).lower()}", f"protocol.num_frames={args.frames}",
            f"evaluate.prefix_dtype={args.prefix_dtype}",
        ],
    )
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.protocol, device=device).eval()
    classes = [f"class{c}" for c in range(args.classes)]
    vids = {c: [f"{c}/v{i}" for i in range(args.videos_per_class)] for c in classes}
    per_episode = cfg.protocol.way * (cfg.protocol.shot + cfg.protocol.query)
    num_videos = args.classes * args.videos_per_class
    count = args.episodes or max(1, round(args.uses * num_videos / per_episode))
    episodes = EpisodeSampler(vids, cfg.protocol.way, cfg.protocol.shot, cfg.protocol.query, seed=0).take(count)
    text = RandomText(model, classes, cfg.protocol.num_sub_actions)
    loader = EpisodeLoader(RandomFrames(device), text, cfg, model.image_mean, model.image_std, device)
    uses = count * per_episode / num_videos
    return cfg, model, loader, episodes, uses, vids


def _timed(device: torch.device, fn):
    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - t0


def _per_episode_uncached(model, loader, episodes, amp: bool, device: torch.device):
    scorer = EpisodeScorer(model, loader, cache=False, amp=amp)
    if device.type == "cuda":
        scorer.scores(episodes[0])  # warm-up (kernels, allocator)
    return _timed(device, lambda: [scorer.scores(ep).logits.float().cpu() for ep in episodes])


def _score_all(scorer: EpisodeScorer, episodes) -> list[torch.Tensor]:
    """Logits of every episode as the evaluate stage scores them: states of every video first (passes of
    `scorer.batch` videos), then batches of episodes, each batch's logits read while the next runs."""
    scorer.precompute(episodes)
    out: list[torch.Tensor] = []
    pending = None
    for batch in episode_batches(episodes, scorer.episodes_per_batch):
        fetch = HostScores({"logits": scorer.scores_batch(batch).logits})
        if pending is not None:
            out.extend(torch.from_numpy(x) for x in pending.get()["logits"])
        pending = fetch
    if pending is not None:
        out.extend(torch.from_numpy(x) for x in pending.get()["logits"])
    return out


def _batched_cached(model, loader, episodes, amp: bool, per_batch, device: torch.device, videos_per_pass=None):
    if device.type == "cuda":  # warm-up with its own cache: the timed run builds a fresh one
        EpisodeScorer(model, loader, cache=True, amp=amp, episodes_per_batch=per_batch, batch=videos_per_pass).scores_batch(episodes[:1])
    scorer = EpisodeScorer(model, loader, cache=True, amp=amp, episodes_per_batch=per_batch, batch=videos_per_pass)
    logits, seconds = _timed(device, lambda: _score_all(scorer, episodes))
    return logits, seconds, scorer.episodes_per_batch


def _batched_prefix_artifact(model, loader, cfg, episodes, vids: dict[str, list[str]], amp: bool, per_batch, device: torch.device,
                             videos_per_pass=None):
    """Batched scoring from a prefix artifact built (and timed) here: (logits, seconds by phase, episodes per batch, note)."""
    if device.type == "cuda":  # warm-up (kernels, allocator), as on the in-memory path
        EpisodeScorer(model, loader, cache=True, amp=amp, episodes_per_batch=per_batch).scores_batch(episodes[:1])
    table = videos_table(vids, cfg.evaluate.split)
    seconds: dict[str, float] = {}

    def build(staging: Staging) -> None:
        _, seconds["compute"] = _timed(device, lambda: write_states(staging, model, loader, table, cfg.evaluate.prefix_dtype, amp,
                                                                    videos_per_pass_for(videos_per_pass, device)))

    with tempfile.TemporaryDirectory(prefix="fsar-benchmark-prefix-") as root:
        store = ArtifactStore(root)
        config = {**plan_fields(cfg), "frames": "benchmarks/evaluate.py random clips, seeded by video id"}
        ref, built = _timed(device, lambda: build_once(store, "prefix", "benchmark", config=config, inputs={}, build=build,
                                                       main="videos.parquet", format_version=FORMAT_VERSION))
        seconds["publish"] = built - seconds["compute"]
        states, seconds["open"] = _timed(device, lambda: PrefixStates(ref, device))
        states.check(cfg)
        scorer = EpisodeScorer(model, loader, cache=True, amp=amp, episodes_per_batch=per_batch, prefix=states, batch=videos_per_pass)

        logits, seconds["score"] = _timed(device, lambda: _score_all(scorer, episodes))
        path = store.local_path(ref) / "states.npy"
        stored = np.load(path, mmap_mode="r")  # (V, T, P+1, D)
        note = f"prefix/{ref.dataset}/{ref.version}, states.npy {tuple(stored.shape)} {stored.dtype}, {path.stat().st_size / 2**20:.1f} MiB"
        del stored
    return logits, seconds, scorer.episodes_per_batch, note


class RoundedPrefix:
    """Stands in for PrefixStates: the frozen prefix of each video, computed once and stored in `dtype`."""

    def __init__(self, model, loader, dtype: torch.dtype):
        self.model, self.loader, self.dtype = model, loader, dtype
        self.states: dict[str, torch.Tensor] = {}

    def get(self, ids) -> torch.Tensor:
        todo = [v for v in dict.fromkeys(ids) if v not in self.states]
        if todo:
            with torch.inference_mode():
                out = self.model.vision_prefix(self.loader.clips(todo, "eval", None)).float()
            self.states.update((v, x.to(self.dtype)) for v, x in zip(todo, out))
        return torch.stack([self.states[v] for v in ids]).float()  # (B, T, P+1, D)


def _prefix_dtype_effect(model, loader, episodes, amp: bool, per_batch) -> str:
    """Scores of every episode from a float32 and a float16 prefix: prediction agreement and score differences."""
    out = {}
    for name, dtype in (("float32", torch.float32), ("float16", torch.float16)):
        scorer = EpisodeScorer(model, loader, cache=True, amp=amp, episodes_per_batch=per_batch, prefix=RoundedPrefix(model, loader, dtype))
        out[name] = [scorer.scores_batch(b) for b in episode_batches(episodes, scorer.episodes_per_batch)]
    pairs = list(zip(out["float32"], out["float16"]))
    agree = all(torch.equal(a.logits.argmax(-1), b.logits.argmax(-1)) for a, b in pairs)
    vis = max(float((a.vis - b.vis).abs().max()) for a, b in pairs)
    sem = max(float((a.sem - b.sem).abs().max()) for a, b in pairs)
    logit = max(float((a.logits - b.logits).abs().max()) for a, b in pairs)
    return (f"prefix float16 vs float32 over {len(episodes)} episodes: predictions agree={str(agree).lower()}, "
            f"max |visual score diff| {vis:.2e}, max |semantic score diff| {sem:.2e}, max |logit diff| {logit:.2e}")


def main() -> None:
    args = _parse()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg, model, loader, episodes, uses, vids = _setup(args)
    num_videos = sum(len(v) for v in vids.values())
    device = loader.device
    layers, adapted = len(model.clip.visual.transformer.resblocks), cfg.model.vision_adapted_layers
    limit = layers / ((layers - adapted) / uses + adapted)
    per_batch = args.episodes_per_batch if args.episodes_per_batch == "auto" else int(args.episodes_per_batch)
    precision = "bf16 autocast" if args.amp and device.type == "cuda" else "fp32"
    print(f"{args.clip} at {args.image_size} px on {device} ({precision}, {torch.get_num_threads()} CPU threads), "
          f"L={layers}, M={adapted}, {cfg.model.task_context}, {cfg.protocol.way}-way {cfg.protocol.shot}-shot, "
          f"{cfg.protocol.query} query per class, T={args.frames}; {len(episodes)} episodes over {num_videos} videos "
          f"({uses:.1f} uses per video)", flush=True)

    some = episodes[: max(1, min(args.uncached_episodes, len(episodes)))]
    plain, plain_s = _per_episode_uncached(model, loader, some, args.amp, device)
    plain_rate = len(some) / plain_s
    print(f"per-episode uncached: {len(some)} episodes in {plain_s:.2f} s = {plain_rate:.3f} episodes/s", flush=True)
    if args.prefix:
        batched, phases, size, note = _batched_prefix_artifact(model, loader, cfg, episodes, vids, args.amp, per_batch, device,
                                                               args.videos_per_pass)
        batched_s = sum(phases.values())
        print(f"prefix artifact ({note}): {num_videos} videos through the frozen blocks 1..{layers - adapted} and written in "
              f"{phases['compute']:.2f} s, published (checksums, manifest) in {phases['publish']:.2f} s; "
              f"prefix time {phases['compute'] + phases['publish']:.2f} s", flush=True)
        print(f"scoring from the prefix artifact ({size} episodes per batch): opened (sha256 verified) in {phases['open']:.2f} s, "
              f"{len(episodes)} episodes scored in {phases['score']:.2f} s = {len(episodes) / phases['score']:.3f} episodes/s; "
              f"scoring time {phases['open'] + phases['score']:.2f} s", flush=True)
        batched_rate = len(episodes) / batched_s
        print(f"batched + prefix artifact, prefix included: {len(episodes)} episodes in {batched_s:.2f} s = "
              f"{batched_rate:.3f} episodes/s", flush=True)
    else:
        batched, batched_s, size = _batched_cached(model, loader, episodes, args.amp, per_batch, device, args.videos_per_pass)
        batched_rate = len(episodes) / batched_s
        print(f"batched + cached ({size} episodes per batch, cache of {num_videos} videos built inside the timing): "
              f"{len(episodes)} episodes in {batched_s:.2f} s = {batched_rate:.3f} episodes/s", flush=True)

    bf16 = args.amp and device.type == "cuda"
    tol = args.tie_tolerance if args.tie_tolerance is not None else (0.1 if bf16 else 1e-3)
    counts = agreement(plain, batched[: len(plain)], tol)
    agree = counts["disagreements"] == 0
    ratio = batched_rate / plain_rate
    print(f"predictions of the {len(some)} episodes both paths scored: {counts['same']} of {counts['queries']} queries the same; "
          f"disagreements={counts['disagreements']} (reference top-1 margin > tie tolerance {tol:g} logit, {precision}), "
          f"near_ties={counts['near_ties']} (different, margin <= {tol:g}); max |logit difference| {counts['max_diff']:.2e}, "
          f"smallest reference top-1 margin {counts['min_margin']:.2e}")
    print(f"ratio {ratio:.2f}x, compute bound of the cache L/((L-M)/r+M) = {limit:.2f}x, ratio/limit {ratio / limit:.2f} "
          f"(CPU target >= 0.8)")
    if args.prefix_dtype == "float16" and not args.prefix:
        print(_prefix_dtype_effect(model, loader, episodes, args.amp, per_batch), flush=True)
    if device.type == "cuda":
        print(f"CUDA peak allocated over the whole run (torch.cuda.max_memory_allocated): "
              f"{torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB", flush=True)
    print(f"evaluate benchmark: ratio={ratio:.3f} limit={limit:.3f} agree={str(agree).lower()}")


def agreement(reference: list[torch.Tensor], other: list[torch.Tensor], tol: float) -> dict[str, float]:
    """Query predictions of two paths ((Q, N) logits per episode): how many are the same, and of the others how many
    are real disagreements (the reference's top-1 logit beats its second by more than `tol`) or near-ties (by `tol` or less)."""
    out = {"queries": 0, "same": 0, "disagreements": 0, "near_ties": 0, "max_diff": 0.0, "min_margin": float("inf")}
    for ref, got in zip(reference, other, strict=True):
        top = ref.float().topk(2, dim=-1).values  # (Q, 2)
        margin = top[:, 0] - top[:, 1]  # (Q,)
        differ = ref.argmax(-1) != got.argmax(-1)  # (Q,)
        out["queries"] += len(margin)
        out["same"] += int((~differ).sum())
        out["disagreements"] += int((differ & (margin > tol)).sum())
        out["near_ties"] += int((differ & (margin <= tol)).sum())
        out["max_diff"] = max(out["max_diff"], float((ref.float() - got.float()).abs().max()))
        out["min_margin"] = min(out["min_margin"], float(margin.min()))
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


if __name__ == "__main__":
    main()
