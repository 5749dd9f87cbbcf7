"""Scoring few-shot episodes with a fixed model: what validation, the evaluate stage and benchmarks share.

`EpisodeScorer` holds per-video and per-class caches (docs/method.md, "Speed"): every parameter is fixed
and eval frame sampling is deterministic, so the first L-M vision blocks run once per video
(`model.vision_prefix`) and only the last M blocks run per episode; the adapted text features of a class
depend on that class alone, so they are computed once per class. Predictions are identical to the
uncached path (a test).

Batched episodes: `episodes_per_batch` episodes of one layout go through the adapted blocks in one pass
(`model.forward_batch`, an extra episode axis that no attention crosses); "auto" = 1 on CPU (one episode
fills the CPU's matrix products), 64 on CUDA. Its cache per video goes one step further than the frozen
prefix: the temporal and spatial steps of the first adapted block depend on each video alone too
(`model.vision_video_states`), and the last block runs at the class token only. Same predictions as one
episode at a time, scores within fp32 rounding (a test).

`score_episodes` turns episodes into rows (one per episode x method: accuracy, labels, predictions and,
where the dataset knows its order pairs, pair outcomes).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from pipeline.fewshot.episodes import Episode
from pipeline.fewshot.loader import EpisodeLoader, to_device, workers_for
from pipeline.precision import autocast

__all__ = [
    "AUTO_EPISODES_PER_BATCH", "AUTO_VIDEOS_PER_PASS", "EpisodeScorer", "HostScores", "episode_batches", "episodes_per_batch_for",
    "pair_outcomes", "score_episodes", "videos_per_pass_for",
]

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
    def scores_batch(self, episodes: Sequence[Episode], text_features: torch.Tensor | None = None):
        """`scores` of episodes of one layout (same N, K, Q) in one pass through the adapted blocks: EpisodeScores (B, Q, N).

        `text_features` (B, N, S, E): the adapted text features to score each episode's classes with, instead of each
        class's own descriptions (evaluate's `choose_by_support`)."""
        _check_layout(episodes)
        support = self.videos_batch([ep.support for ep in episodes])  # (B, N*K, T, P+1, D)
        query = self.videos_batch([ep.query for ep in episodes])  # (B, Q, T, P+1, D)
        labels = self._labels([ep.support_labels for ep in episodes])  # (B, N*K)
        tokens = states = features = None
        if text_features is not None:
            features = text_features
        elif self.cache:
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


def _batch_scores(scorer: EpisodeScorer, batch: Sequence[Episode], baselines: bool,
                  text_features: Callable[[Sequence[Episode]], torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """method -> (B, N*Q, N) scores of a batch of episodes, on the scorer's device (not read yet)."""
    sc = scorer.scores_batch(batch, None if text_features is None else text_features(batch))
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
    scorer: EpisodeScorer, episodes: Sequence[Episode], baselines: bool, pairs: dict[str, str] | None = None, desc: str = "evaluate",
    text_features: Callable[[Sequence[Episode]], torch.Tensor] | None = None,
) -> list[dict[str, Any]]:
    """One row per (episode, method): accuracy, labels, predictions (+ order-pair outcomes where pairs are known).

    `text_features(batch)` -> (B, N, S, E): the full model scores the batch's classes with these adapted text features
    instead of each class's own descriptions (see `EpisodeScorer.scores_batch`).

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

    try:
        for batch in episode_batches(episodes, scorer.episodes_per_batch):
            fetch = HostScores(_batch_scores(scorer, batch, baselines, text_features))
            if pending is not None:
                emit(*pending)
            pending = (batch, fetch)
        if pending is not None:
            emit(*pending)
    finally:  # closed on the way out too: a later line (an error) starts a line of its own
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
