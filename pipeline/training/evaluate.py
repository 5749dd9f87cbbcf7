"""The evaluate stage: seeded few-shot episodes of the test split, scored by the full model and its parts.

Methods scored on the same saved episodes:
- `task_adapter_pp`: argmax of vis * sem (the paper's model),
- `visual_only`: argmax of vis, `semantic_only`: argmax of sem (the two factors alone),
- `clip_prototype`: frozen CLIP (no adapters), cosine of the mean frame feature to class prototypes,
- `untrained` (with `evaluate.untrained`): the full model at its training initialisation.

The evaluation cache (docs/method.md, "Speed"): every parameter is fixed and eval frame sampling is
deterministic, so the first L-M vision blocks run once per video (`model.vision_prefix`) and only the
last M blocks run per episode; the adapted text features of a class depend on that class alone, so
they are computed once per class. Predictions are identical to the uncached path (a test).

Batched episodes: `evaluate.episodes_per_batch` episodes of one layout go through the adapted blocks in
one pass (`model.forward_batch`, an extra episode axis that no attention crosses); "auto" = 1 on CPU
(one episode fills the CPU's matrix products), 64 on CUDA. Its cache per video goes one step further
than the frozen prefix: the temporal and spatial steps of the first adapted block depend on each video
alone too (`model.vision_video_states`), and the last block runs at the class token only. Same predictions as one episode at a time, scores within fp32
rounding (a test).

Artifact files: `episodes.parquet` (main: one row per episode x method, with `accuracy`),
`episode_list.parquet` (the saved episodes), `confusion.parquet`, `summary.json`, `report.md`, PNG plots.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm import tqdm

from pipeline.artifacts import ArtifactRef, ArtifactStore, Staging, file_fingerprint
from pipeline.config import Config, section_dict
from pipeline.settings.model import model_fields
from pipeline.stage import StageError, build_once
from pipeline.training.common import (
    EpisodeLoader,
    autocast,
    check_checkpoint,
    load_checkpoint,
    pick_device,
    prepare,
)
from pipeline.training.data import to_device, workers_for
from pipeline.training.episodes import Episode, EpisodeSampler, check_splits, episodes_to_frame, videos_by_class
from pipeline.training.report import collect_lineage, confusion, summarise, table_markdown, write_plots, write_report

__all__ = [
    "EpisodeScorer", "FORMAT_VERSION", "METHODS", "checkpoint_fingerprint", "checkpoint_path", "combine", "descriptions_label", "episodes_per_batch_for", "plan_fields", "run",
    "score_episodes", "upstream_for", "videos_per_pass_for",
]

FORMAT_VERSION = 2  # 2: the train input is hashed by version, an explicit checkpoint by content
METHODS = ("task_adapter_pp", "visual_only", "semantic_only", "clip_prototype")  # `untrained` too with evaluate.untrained
AUTO_EPISODES_PER_BATCH = {"cpu": 1, "cuda": 64}  # evaluate.episodes_per_batch "auto", by device type (else 1)
# CPU: one episode already fills the matrix products; on the demo config (fsar-tiny, 150 episodes, 2 threads)
# best of 3: 1 -> 19.0 episodes/s, 2 -> 15.8, 4 -> 11.8, 8 -> 10.9. CUDA: one episode at a time is latency-bound;
# "auto" there is 64, or fewer when an estimate of a batch's activations would not fit in half the free memory.
AUTO_VIDEOS_PER_PASS = {"cpu": 16, "cuda": 128}  # videos per pass through the frozen prefix, by device type (else 16)


def episodes_per_batch_for(setting: int | str, device: torch.device, model: torch.nn.Module | None = None,
                           videos: int | None = None) -> int:
    """Episodes per forward pass: `setting` when a number, else the device's "auto" default (on CUDA capped by memory
    when the model and the videos per episode are given)."""
    if isinstance(setting, int):
        return setting
    size = AUTO_EPISODES_PER_BATCH.get(device.type, 1)
    if device.type == "cuda" and model is not None and videos:
        size = min(size, _fits_in_memory(model, videos, device))
    return size


def _fits_in_memory(model: torch.nn.Module, videos: int, device: torch.device) -> int:
    """Episodes of `videos` videos whose adapted-block activations (an estimate, ~40 bytes per hidden value) fit in
    half the free device memory; at least 1."""
    visual = model.clip.visual
    tokens = model.protocol.num_frames * (int(visual.positional_embedding.shape[0]))
    per_episode = videos * tokens * visual.transformer.width * 40
    free, _ = torch.cuda.mem_get_info(device)
    return max(1, int(free // 2 // per_episode))


def videos_per_pass_for(setting: int | None, device: torch.device) -> int:
    """Videos per pass through the frozen prefix: `setting`, else 16 on CPU and 128 on CUDA."""
    return setting if setting else AUTO_VIDEOS_PER_PASS.get(device.type, 16)


class _Rows:
    """Per-key tensors (a video's states, a class's text features) kept as the rows of one tensor on a device:
    added once, gathered by key with one index (no per-key copies). Grows by doubling; `reserve` avoids that."""

    def __init__(self, device: torch.device):
        self.device = device
        self.index: dict[str, int] = {}
        self.data: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.index)

    def __contains__(self, key: str) -> bool:
        return key in self.index

    def missing(self, keys: Sequence[str]) -> list[str]:
        return [k for k in dict.fromkeys(keys) if k not in self.index]

    def _grow(self, need: int, like: torch.Tensor) -> None:
        have = 0 if self.data is None else self.data.shape[0]
        if need <= have:
            return
        size = max(need, 2 * have)
        data = torch.empty((size, *like.shape[1:]), dtype=like.dtype, device=self.device)
        if self.data is not None:
            data[: len(self.index)] = self.data[: len(self.index)]
        self.data = data

    def reserve(self, count: int, like: torch.Tensor) -> None:
        """Room for `count` more rows shaped like `like`'s rows."""
        self._grow(len(self.index) + count, like)

    def add(self, keys: Sequence[str], values: torch.Tensor) -> None:
        first = len(self.index)
        self._grow(first + len(keys), values)
        self.data[first : first + len(keys)] = values  # type: ignore[index]
        self.index.update((k, first + i) for i, k in enumerate(keys))

    def get(self, keys: Sequence[str]) -> torch.Tensor:
        """(len(keys), ...) rows in the order of keys."""
        rows = torch.as_tensor([self.index[k] for k in keys], dtype=torch.long)
        return self.data.index_select(0, to_device(rows, self.device))  # type: ignore[union-attr]


class EpisodeScorer:
    """Scores episodes with a fixed model; with `cache=True` the frozen vision prefix runs once per video.

    `batch`: videos per pass through the frozen prefix (None: 16 on CPU, 128 on CUDA); `episodes_per_batch`: episodes
    per pass through the adapted blocks in `scores_batch` (int, or "auto" for the device's default); `workers`: data
    threads loading clips ahead of the passes ("auto": `data.workers_for`). `precompute(episodes)` runs the prefix of
    every video of the episodes in passes of `batch` videos before scoring (`score_episodes` calls it).
    """

    def __init__(
        self, model: torch.nn.Module, loader: EpisodeLoader, cache: bool, amp: bool = True, batch: int | None = None,
        episodes_per_batch: int | str = "auto", prefix: Any | None = None, workers: int | str = "auto",
    ):
        device = loader.device
        self.model, self.loader, self.cache, self.amp = model, loader, cache, amp
        self.batch = videos_per_pass_for(batch, device)
        self.prefix = prefix  # a `pipeline.prefix.PrefixStates` (the prefix artifact) or None: computed here
        self.workers = workers_for(workers, device)
        videos = model.protocol.way * (model.protocol.shot + model.protocol.query)
        self.episodes_per_batch = episodes_per_batch_for(episodes_per_batch, device, model, videos)
        self._prefix = _Rows(device)  # frozen prefix per video (`scores`)
        self._video = _Rows(device)  # `vision_video_states` per video (`scores_batch`)
        self._frozen = _Rows(device)  # frozen CLIP frame features per video (the prototype baseline)
        self._text = _Rows(device)  # adapted text features per class

    def _fill(self, rows: _Rows, ids: Sequence[str], from_clips, from_prefix=None) -> None:
        """Add the missing videos of `ids` to `rows`, `batch` videos per pass: `from_prefix(prefix states)` when a prefix
        artifact is given and `from_prefix` is, else `from_clips(clips)`; clips are loaded ahead by the data workers."""
        todo = rows.missing(ids)
        if not todo:
            return
        if self.prefix is not None and from_prefix is not None:
            chunks = ((chunk, self.prefix.get(chunk)) for chunk in (todo[i : i + self.batch] for i in range(0, len(todo), self.batch)))
            fn = from_prefix
        else:
            chunks, fn = self.loader.clip_batches(todo, self.batch, self.workers), from_clips
        try:
            for chunk, x in chunks:
                with autocast(self.loader.device, self.amp):
                    out = fn(x).float()
                if rows.data is None:
                    rows.reserve(len(todo), out)
                rows.add(chunk, out)
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()

    def precompute(self, episodes: Sequence[Episode], baselines: bool = False) -> None:
        """The per-video states `scores_batch` reads (and with `baselines` the frozen features) of every video of the
        episodes, computed now in passes of `batch` videos (otherwise: when an episode first needs them)."""
        ids = [v for ep in episodes for v in (*ep.support, *ep.query)]
        if self.cache:
            self._fill(self._video, ids, self._video_states_of_clips, self.model.vision_video_states)
        if baselines:
            self._fill(self._frozen, ids, self.model.frozen_frame_features)

    def _video_states_of_clips(self, clips: torch.Tensor) -> torch.Tensor:
        return self.model.vision_video_states(self.model.vision_prefix(clips))

    def videos(self, ids: Sequence[str]) -> tuple[torch.Tensor, bool]:
        """Model input for videos: cached prefix states (is_prefix=True) or clips."""
        if not self.cache:
            return self.loader.clips(ids, "eval", None), False
        self._fill(self._prefix, ids, self.model.vision_prefix, lambda states: states)
        return self._prefix.get(ids), True  # (B, T, P+1, D)

    def videos_batch(self, ids: Sequence[Sequence[str]]) -> torch.Tensor:
        """(B, V, T, P+1, D) states of B episodes' videos.

        Cached: `vision_video_states` once per video (the batched path's cache: the frozen prefix and the first
        adapted block's per-video steps); uncached: the frozen prefix, computed `batch` videos at a time.
        """
        flat = [v for episode in ids for v in episode]
        if self.cache:
            self._fill(self._video, flat, self._video_states_of_clips, self.model.vision_video_states)
            states = self._video.get(flat)  # (B*V, T, P+1, D)
        else:
            parts = []
            with self.loader.clip_batches(flat, self.batch, self.workers) as chunks:
                for _, clips in chunks:
                    with autocast(self.loader.device, self.amp):
                        parts.append(self.model.vision_prefix(clips).float())
            states = torch.cat(parts)  # (B*V, T, P+1, D)
        return states.unflatten(0, (len(ids), -1))

    def frozen_features(self, ids: Sequence[str]) -> torch.Tensor:
        self._fill(self._frozen, ids, self.model.frozen_frame_features)
        return self._frozen.get(ids)  # (B, T, E)

    def text(self, classes: Sequence[str]) -> torch.Tensor | None:
        """Adapted text features per class, computed once per class when caching (a class's depend on it alone)."""
        if not self.cache:
            return None
        todo = self._text.missing(classes)
        if todo:
            tokens, states = self.loader.text_for(todo)
            with autocast(self.loader.device, self.amp):
                feats = self.model.encode_text(tokens, states).float()  # (n, S, E)
            self._text.add(todo, feats)
        return self._text.get(classes)  # (N, S, E)

    def _labels(self, labels: Sequence[int] | Sequence[Sequence[int]]) -> torch.Tensor:
        return to_device(torch.as_tensor(labels, dtype=torch.long), self.loader.device)

    @torch.inference_mode()
    def scores(self, ep: Episode):
        support, s_prefix = self.videos(ep.support)
        query, q_prefix = self.videos(ep.query)
        features = self.text(ep.classes)  # (N, S, E) once per class when caching, else None
        tokens, states = self.loader.text_for(ep.classes) if features is None else (None, None)
        labels = self._labels(ep.support_labels)
        with autocast(self.loader.device, self.amp):
            return self.model(
                support, labels, query, tokens, text_prefix=states, support_is_prefix=s_prefix, query_is_prefix=q_prefix,
                text_features=features, validate=False,  # sampled episodes: labels valid by construction
            )

    @torch.inference_mode()
    def scores_batch(self, episodes: Sequence[Episode]):
        """`scores` of episodes of one layout (same N, K, Q) in one pass through the adapted blocks: EpisodeScores (B, Q, N)."""
        _check_layout(episodes)
        support = self.videos_batch([ep.support for ep in episodes])  # (B, N*K, T, P+1, D)
        query = self.videos_batch([ep.query for ep in episodes])  # (B, Q, T, P+1, D)
        labels = self._labels([ep.support_labels for ep in episodes])  # (B, N*K)
        tokens = states = features = None
        if self.cache:
            self.text([c for ep in episodes for c in ep.classes])  # every new class of the batch in one pass
            features = self._text.get([c for ep in episodes for c in ep.classes]).unflatten(0, (len(episodes), -1))  # (B, N, S, E)
        else:
            texts = [self.loader.text_for(ep.classes) for ep in episodes]
            tokens, states = torch.stack([t for t, _ in texts]), torch.stack([s for _, s in texts])  # (B, N, S, ctx), (B, N, S, ctx, D_t)
        with autocast(self.loader.device, self.amp):
            return self.model.forward_batch(
                support, labels, query, tokens, text_prefix=states, support_is_prefix=True, query_is_prefix=True,
                text_features=features, video_states=self.cache, validate=False,
            )

    @torch.inference_mode()
    def prototype_scores_batch(self, episodes: Sequence[Episode]) -> torch.Tensor:
        """`prototype_scores` of episodes of one layout: (B, N*Q, N)."""
        _check_layout(episodes)
        batch = len(episodes)
        s = F.normalize(self.frozen_features([v for ep in episodes for v in ep.support]).unflatten(0, (batch, -1)).mean(2), dim=-1)  # (B, N*K, E)
        q = F.normalize(self.frozen_features([v for ep in episodes for v in ep.query]).unflatten(0, (batch, -1)).mean(2), dim=-1)  # (B, N*Q, E)
        labels = self._labels([ep.support_labels for ep in episodes])  # (B, N*K)
        onehot = F.one_hot(labels, episodes[0].way).to(s.dtype)  # (B, N*K, N)
        protos = torch.einsum("bvn,bve->bne", onehot / onehot.sum(1, keepdim=True), s)  # (B, N, E) mean of each class's supports
        return q @ F.normalize(protos, dim=-1).transpose(1, 2)  # (B, N*Q, N)

    @torch.inference_mode()
    def prototype_scores(self, ep: Episode) -> torch.Tensor:
        """Frozen CLIP: cosine of each query's mean frame feature to the mean of each class's supports, (N*Q, N)."""
        s = F.normalize(self.frozen_features(ep.support).mean(1), dim=-1)  # (N*K, E)
        q = F.normalize(self.frozen_features(ep.query).mean(1), dim=-1)  # (N*Q, E)
        labels = torch.as_tensor(ep.support_labels, device=s.device)
        protos = torch.stack([s[labels == c].mean(0) for c in range(ep.way)])  # (N, E)
        return q @ F.normalize(protos, dim=-1).T


def pair_outcomes(scores: np.ndarray, ep: Episode, pairs: dict[str, str]) -> tuple[int, int]:
    """(right, asked): queries whose order partner is in the episode, right when the true class outscores it."""
    position = {c: i for i, c in enumerate(ep.classes)}
    right = asked = 0
    for q, label in enumerate(ep.query_labels):
        partner = position.get(pairs.get(ep.classes[label], ""))
        if partner is not None:
            asked += 1
            right += int(scores[q, label] > scores[q, partner])
    return right, asked


def _layout(ep: Episode) -> tuple[int, int, int, int, int]:
    return ep.way, ep.shot, ep.queries_per_class, len(ep.support), len(ep.query)


def _check_layout(episodes: Sequence[Episode]) -> None:
    if not episodes or any(_layout(ep) != _layout(episodes[0]) for ep in episodes):
        raise ValueError("a batch of episodes must be non-empty and share N, K and Q")


def episode_batches(episodes: Sequence[Episode], size: int) -> list[list[Episode]]:
    """Consecutive runs of at most `size` episodes of one layout (same N, K, Q), in order."""
    batches: list[list[Episode]] = []
    for ep in episodes:
        if batches and len(batches[-1]) < size and _layout(batches[-1][0]) == _layout(ep):
            batches[-1].append(ep)
        else:
            batches.append([ep])
    return batches


def _batch_scores(scorer: EpisodeScorer, batch: Sequence[Episode], baselines: bool) -> dict[str, torch.Tensor]:
    """method -> (B, N*Q, N) scores of a batch of episodes, on the scorer's device (not read yet)."""
    sc = scorer.scores_batch(batch)
    scores = {"task_adapter_pp": sc.logits}
    if baselines:
        scores.update(visual_only=sc.vis, semantic_only=sc.sem, clip_prototype=scorer.prototype_scores_batch(batch))
    return scores


class HostScores:
    """Device scores copied to the host without waiting: `get()` waits for that copy only (not for later work)."""

    def __init__(self, scores: dict[str, torch.Tensor]):
        self.scores = {m: v.float().to("cpu", non_blocking=True) for m, v in scores.items()}
        self.event = None
        if any(v.is_cuda for v in scores.values()):
            self.event = torch.cuda.Event()
            self.event.record()

    def get(self) -> dict[str, np.ndarray]:
        if self.event is not None:
            self.event.synchronize()
        return {m: v.numpy() for m, v in self.scores.items()}


def score_episodes(
    scorer: EpisodeScorer, episodes: Sequence[Episode], baselines: bool, pairs: dict[str, str] | None = None, desc: str = "evaluate"
) -> list[dict[str, Any]]:
    """One row per (episode, method): accuracy, labels, predictions (+ order-pair outcomes where pairs are known).

    The per-video states of every video are computed first (`EpisodeScorer.precompute`: passes of `scorer.batch`
    videos), then episodes are scored `scorer.episodes_per_batch` at a time; a batch's scores are read while the next
    batch runs. The rows are the same as one episode at a time.
    """
    scorer.precompute(episodes, baselines)
    rows: list[dict[str, Any]] = []
    progress = tqdm(total=len(episodes), desc=desc, unit="ep", mininterval=2.0)
    pending: tuple[list[Episode], HostScores] | None = None

    def emit(batch: list[Episode], fetch: HostScores) -> None:
        scores = fetch.get()
        progress.update(len(batch))
        for b, ep in enumerate(batch):
            rows.extend(_episode_rows(ep, {method: m[b] for method, m in scores.items()}, pairs))

    for batch in episode_batches(episodes, scorer.episodes_per_batch):
        fetch = HostScores(_batch_scores(scorer, batch, baselines))
        if pending is not None:
            emit(*pending)
        pending = (batch, fetch)
    if pending is not None:
        emit(*pending)
    progress.close()
    return rows


def _episode_rows(ep: Episode, scores: dict[str, np.ndarray], pairs: dict[str, str] | None) -> list[dict[str, Any]]:
    """The rows of one episode from its (N*Q, N) score matrix per method."""
    labels = np.asarray(ep.query_labels)
    rows: list[dict[str, Any]] = []
    for method, m in scores.items():
        p = m.argmax(-1)
        row = {
            "episode": ep.index,
            "method": method,
            "accuracy": float((p == labels).mean()),
            "classes": list(ep.classes),
            "labels": labels.tolist(),
            "predictions": p.tolist(),
        }
        if pairs:
            row["pair_right"], row["pair_asked"] = pair_outcomes(m, ep, pairs)
        rows.append(row)
    return rows


def descriptions_label(cfg: Config, embeddings: ArtifactRef | None) -> str:
    """Which corpus the text came from: evaluate.descriptions_label, else `file` or `llm` by the descriptions
    backend (of the embeddings artifact's input when it exists, else of this config)."""
    if cfg.evaluate.descriptions_label:
        return cfg.evaluate.descriptions_label
    backend = cfg.descriptions.backend
    store = ArtifactStore(embeddings.root) if embeddings is not None else None
    if store is not None and store.exists(embeddings.stage, embeddings.dataset, embeddings.version) is not None:
        desc = store.manifest(embeddings).get("inputs", {}).get("descriptions")
        if desc:
            backend = store.manifest(ArtifactRef.from_dict(desc, embeddings.root)).get("config", {}).get("backend", backend)
    return "file" if backend == "file" else "llm"


def upstream_for(cfg: Config) -> tuple[str, ...]:
    """The stages evaluate reads: frames, embeddings, train unless `evaluate.checkpoint` names a file, and the
    vision prefix when it lives in an artifact (`prefix.enabled`: `evaluate.prefix`, with `evaluate.cache`)."""
    from pipeline import prefix

    ups = ("frames", "embeddings") if cfg.evaluate.checkpoint else ("frames", "embeddings", "train")
    return (*ups, "prefix") if prefix.enabled(cfg) else ups


def checkpoint_path(cfg: Config, inputs: Mapping[str, ArtifactRef]) -> Path:
    """The checkpoint to score, verified: `evaluate.checkpoint`, else best.pt of the train input."""
    if cfg.evaluate.checkpoint:
        path = Path(cfg.evaluate.checkpoint).expanduser()
        if not path.is_file():
            raise StageError(f"checkpoint {str(path)!r} does not exist; train first or pass an existing file with --checkpoint")
        file_fingerprint(path)  # a file inside an artifact must match its manifest
        return path
    if "train" not in inputs:
        raise StageError("evaluate needs a checkpoint: run `fsar train` first or pass --checkpoint FILE")
    return ArtifactStore(inputs["train"].root).verified_path(inputs["train"], "best.pt")


def plan_fields(cfg: Config, inputs: Mapping[str, ArtifactRef] | None = None) -> dict[str, Any]:
    """What this stage's version hashes: protocol, model, the evaluate fields that change results, the
    descriptions label and, for an explicit checkpoint file, its content (a train input is hashed by version)."""
    inputs = inputs or {}
    fields = {
        "evaluate": section_dict(cfg.evaluate, ["episodes", "shot", "seed", "split", "baselines", "untrained"]),
        "protocol": section_dict(cfg.protocol),
        "model": model_fields(cfg.model),
        "descriptions": descriptions_label(cfg, inputs.get("embeddings")),
    }
    if cfg.evaluate.checkpoint:
        fields["checkpoint"] = checkpoint_fingerprint(cfg)
    return fields


def checkpoint_fingerprint(cfg: Config) -> str:
    """The content fingerprint of the explicit `evaluate.checkpoint` file (what versions hash); a missing file is an error."""
    path = Path(cfg.evaluate.checkpoint).expanduser()
    if not path.is_file():
        raise StageError(f"checkpoint {str(path)!r} does not exist; train first or pass an existing file with --checkpoint")
    return file_fingerprint(path)


def run(cfg: Config, inputs: dict[str, ArtifactRef], store: ArtifactStore) -> ArtifactRef:
    from pipeline import prefix

    if prefix.enabled(cfg) and "prefix" not in inputs and all(k in inputs for k in prefix.upstream_for(cfg)):
        inputs = {**inputs, "prefix": prefix.run(cfg, inputs, store)}  # the vision prefix it reads (skipped if it exists)
    for need in upstream_for(cfg):
        if need not in inputs:
            raise StageError(f"evaluate needs a {need} artifact; run `fsar {need}` first")
    fields = plan_fields(cfg, inputs)
    stage_inputs = {k: inputs[k] for k in upstream_for(cfg)}
    label = fields["descriptions"]
    check_splits(inputs["frames"], cfg.protocol, {cfg.evaluate.split: cfg.evaluate.shot or cfg.protocol.shot})  # before any model

    def build(staging: Staging) -> None:
        ckpt_path = checkpoint_path(cfg, inputs)
        ckpt = load_checkpoint(ckpt_path)
        check_checkpoint(ckpt, cfg, ckpt_path)
        evaluate_into(staging, cfg, inputs, ckpt, label)

    return build_once(
        store, "evaluate", cfg.dataset.name, config=fields, inputs=stage_inputs, build=build, main="episodes.parquet",
        format_version=FORMAT_VERSION,
    )


def open_prefix(cfg: Config, inputs: Mapping[str, ArtifactRef], device: torch.device) -> Any | None:
    """The prefix artifact's states when evaluate reads one (checked against this config and checkpoint), else None."""
    if "prefix" not in inputs:
        return None
    from pipeline.prefix import PrefixStates

    prefix = PrefixStates(inputs["prefix"], device)
    prefix.check(cfg)
    made_from = ArtifactStore(inputs["prefix"].root).manifest(inputs["prefix"]).get("inputs", {}).get("train", {}).get("version")
    if made_from is not None and "train" in inputs and made_from != inputs["train"].version:
        raise StageError(f"the prefix artifact {inputs['prefix']} holds the temporal embedding of train/{made_from}, but evaluate scores "
                         f"train/{inputs['train'].version}; run `fsar prefix` for that checkpoint or drop the --input prefix=... pin")
    return prefix


def evaluate_into(staging: Staging, cfg: Config, inputs: dict[str, ArtifactRef], ckpt: dict[str, Any], label: str) -> None:
    from pipeline.model import build_model

    device = pick_device(cfg.evaluate.device, "evaluate.device")
    model, loader, frames = prepare(cfg, inputs, device)
    model.load_trainable_state_dict(ckpt["trainable"])
    model.eval()
    shot = cfg.evaluate.shot or cfg.protocol.shot
    vids, excluded = videos_by_class(frames.index, cfg.evaluate.split, cfg.protocol.num_frames)
    if excluded:
        print(f"[fsar] evaluate: excluded videos of split {cfg.evaluate.split}: {excluded}", flush=True)
    sampler = EpisodeSampler(vids, cfg.protocol.way, shot, cfg.protocol.query, cfg.evaluate.seed, split=cfg.evaluate.split)
    episodes = sampler.take(cfg.evaluate.episodes)
    prefix = open_prefix(cfg, inputs, device)
    scorer = EpisodeScorer(model, loader, cache=cfg.evaluate.cache, amp=cfg.model.amp, episodes_per_batch=cfg.evaluate.episodes_per_batch,
                           prefix=prefix, batch=cfg.evaluate.videos_per_pass, workers=cfg.evaluate.loader_workers)
    t0 = time.perf_counter()
    from pipeline.datasets import get_dataset

    pairs = get_dataset(cfg.dataset).order_pairs()
    rows = score_episodes(scorer, episodes, cfg.evaluate.baselines, pairs)
    if cfg.evaluate.untrained:  # the same model at its training initialisation, on the same episodes
        torch.manual_seed(cfg.train.seed)
        fresh = build_model(cfg.model, cfg.protocol, device=device).eval()
        fresh_prefix = prefix if prefix is not None and prefix.checkpoint_free else None  # else the trained embedding is in it
        fresh_scorer = EpisodeScorer(fresh, loader, cache=cfg.evaluate.cache, amp=cfg.model.amp, episodes_per_batch=scorer.episodes_per_batch,
                                     prefix=fresh_prefix, batch=scorer.batch, workers=scorer.workers)
        for row in score_episodes(fresh_scorer, episodes, False, pairs, "untrained"):
            rows.append({**row, "method": "untrained"})
    seconds = time.perf_counter() - t0
    df = pd.DataFrame(rows)
    df.insert(2, "descriptions", label)
    df["shot"] = shot
    staging.write_parquet("episodes.parquet", df)
    staging.write_parquet("episode_list.parquet", episodes_to_frame(episodes))
    full = df[df["method"] == "task_adapter_pp"]
    cm = confusion(full)
    staging.write_parquet("confusion.parquet", cm.reset_index(names="true"))
    summary = summarise(
        df,
        {
            "dataset": cfg.dataset.name,
            "split": cfg.evaluate.split,
            "way": cfg.protocol.way,
            "shot": shot,
            "query": cfg.protocol.query,
            "episodes": len(episodes),
            "seed": cfg.evaluate.seed,
            "num_frames": cfg.protocol.num_frames,
            "num_sub_actions": cfg.protocol.num_sub_actions,
            "excluded_videos": excluded,
            "task_context": cfg.model.task_context,
            "checkpoint_step": ckpt.get("step"),
            "lineage": {label: collect_lineage(cfg, inputs, checkpoint_path(cfg, inputs), ckpt)},
        },
    )
    # Wall-clock numbers go to the manifest's `run` and the log, never into report.md or summary.json.
    staging.extra["run"] = {"seconds": round(seconds, 3), "episodes_per_second": round(len(episodes) / max(seconds, 1e-9), 3)}
    print(f"[fsar] evaluate: {len(episodes)} episodes in {seconds:.1f} s ({len(episodes) / max(seconds, 1e-9):.2f} episodes/s)", flush=True)
    out = staging.dir
    write_plots(df, summary, out)
    notes = [
        f"{cfg.protocol.way}-way {shot}-shot, {cfg.protocol.query} query per class, {len(episodes)} episodes of split "
        f"{cfg.evaluate.split}, seed {cfg.evaluate.seed}; interval = 1.96 std / sqrt(episodes)",
        f"task_context: {cfg.model.task_context}; descriptions: {label}",
    ]
    if pairs:
        notes.append("order pairs: share of queries whose true class outscores the class that differs from it only in temporal "
                     "order, over queries whose partner is in the episode (chance 50%)")
    write_report(summary, out, f"fsar evaluation: {cfg.dataset.name}", notes)
    staging.extra["summary"] = {r["method"] + (f"/{r['descriptions']}" if "descriptions" in r else ""): [r["mean"], r["ci95"]] for r in summary["results"]}
    print(table_markdown(summary), flush=True)


def combine(store: ArtifactStore, evaluations: dict[str, ArtifactRef], title: str) -> ArtifactRef:
    """One evaluate artifact holding several evaluations of the same episodes (e.g. one per description corpus).

    Its main table is the inputs' tables stacked (their `descriptions` column tells them apart), with a
    summary, report and plots over all of them; the inputs must share dataset and saved episodes.
    """
    tables, episode_lists = {}, {}
    for name, ref in evaluations.items():
        tables[name] = store.load("evaluate", ref.dataset, ref.version)
        episode_lists[name] = store.load("evaluate", ref.dataset, ref.version, table="episode_list.parquet")
    first = next(iter(episode_lists.values()))
    if any(not first.equals(e) for e in episode_lists.values()):
        raise StageError(f"evaluations {list(evaluations)} were made on different episodes; combine only runs with the same evaluate seed and split")
    dataset = next(iter(evaluations.values())).dataset

    def build(staging: Staging) -> None:
        df = pd.concat(tables.values(), ignore_index=True)
        staging.write_parquet("episodes.parquet", df)
        staging.write_parquet("episode_list.parquet", first)
        base = json.loads((store.local_path(next(iter(evaluations.values()))) / "summary.json").read_text())
        extra = {k: v for k, v in base.items() if k not in ("results", "seconds", "episodes_per_second")}
        lineage: dict[str, Any] = {}
        for ref in evaluations.values():  # each input's lineage, by its descriptions label
            lineage.update(json.loads((store.local_path(ref) / "summary.json").read_text()).get("lineage", {}))
        summary = summarise(df, {**extra, "lineage": lineage, "combined": {name: str(ref) for name, ref in evaluations.items()}})
        write_plots(df, summary, staging.dir)
        write_report(summary, staging.dir, title, [f"combines {', '.join(f'{k} ({v})' for k, v in evaluations.items())}; same saved episodes"])
        staging.extra["summary"] = {f"{r['method']}/{r.get('descriptions')}": [r["mean"], r["ci95"]] for r in summary["results"]}

    return build_once(
        store, "evaluate", dataset, config={"combine": sorted(evaluations)}, inputs=evaluations, build=build,
        main="episodes.parquet", format_version=FORMAT_VERSION,
    )
