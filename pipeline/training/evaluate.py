"""The evaluate stage: seeded few-shot episodes of the test split, scored by the full model and its parts.

Methods scored on the same saved episodes:
- `task_adapter_pp`: argmax of vis * sem (the paper's model),
- `visual_only`: argmax of vis, `semantic_only`: argmax of sem (the two factors alone),
- `clip_prototype`: frozen CLIP (no adapters), cosine of the mean frame feature to class prototypes,
- `untrained` (with `evaluate.untrained`): the full model at its training initialisation.

The evaluation cache (method.md, "Speed"): every parameter is fixed and eval frame sampling is
deterministic, so the first L-M vision blocks run once per video (`model.vision_prefix`) and only the
last M blocks run per episode; the adapted text features of a class depend on that class alone, so
they are computed once per class. Predictions are identical to the uncached path (a test).

Artifact files: `episodes.parquet` (main: one row per episode x method, with `accuracy`),
`episode_list.parquet` (the saved episodes), `confusion.parquet`, `summary.json`, `report.md`, PNG plots.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm import tqdm

from pipeline.artifacts import ArtifactRef, ArtifactStore, Staging, sha256_file
from pipeline.config import Config, section_dict
from pipeline.stage import StageError, build_once
from pipeline.training.common import (
    EpisodeLoader,
    autocast,
    check_checkpoint,
    load_checkpoint,
    pick_device,
    videos_by_class,
)
from pipeline.training.episodes import Episode, EpisodeSampler, episodes_to_frame
from pipeline.training.report import collect_lineage, confusion, summarise, table_markdown, write_plots, write_report

__all__ = ["EpisodeScorer", "FORMAT_VERSION", "METHODS", "combine", "descriptions_label", "run", "score_episodes"]

FORMAT_VERSION = 1
METHODS = ("task_adapter_pp", "visual_only", "semantic_only", "clip_prototype")  # `untrained` too with evaluate.untrained


class EpisodeScorer:
    """Scores episodes with a fixed model; with `cache=True` the frozen vision prefix runs once per video."""

    def __init__(self, model: torch.nn.Module, loader: EpisodeLoader, cache: bool, amp: bool = True, batch: int = 16):
        self.model, self.loader, self.cache, self.amp, self.batch = model, loader, cache, amp, batch
        self._prefix: dict[str, torch.Tensor] = {}
        self._frozen: dict[str, torch.Tensor] = {}
        self._text: dict[str, torch.Tensor] = {}

    def _fill(self, store: dict[str, torch.Tensor], ids: Sequence[str], fn) -> None:
        todo = [v for v in dict.fromkeys(ids) if v not in store]
        for i in range(0, len(todo), self.batch):
            chunk = todo[i : i + self.batch]
            with autocast(self.loader.device, self.amp):
                out = fn(self.loader.clips(chunk, "eval", None)).float()
            for vid, x in zip(chunk, out):
                store[vid] = x

    def videos(self, ids: Sequence[str]) -> tuple[torch.Tensor, bool]:
        """Model input for videos: cached prefix states (is_prefix=True) or clips."""
        if not self.cache:
            return self.loader.clips(ids, "eval", None), False
        self._fill(self._prefix, ids, self.model.vision_prefix)
        return torch.stack([self._prefix[v] for v in ids]), True  # (B, T, P+1, D)

    def frozen_features(self, ids: Sequence[str]) -> torch.Tensor:
        self._fill(self._frozen, ids, self.model.frozen_frame_features)
        return torch.stack([self._frozen[v] for v in ids])  # (B, T, E)

    def text(self, classes: Sequence[str]) -> torch.Tensor | None:
        """Adapted text features per class, computed once per class when caching (a class's depend on it alone)."""
        if not self.cache:
            return None
        todo = [c for c in classes if c not in self._text]
        if todo:
            tokens, states = self.loader.text_for(todo)
            with autocast(self.loader.device, self.amp):
                feats = self.model.encode_text(tokens, states).float()  # (n, S, E)
            self._text.update(zip(todo, feats))
        return torch.stack([self._text[c] for c in classes])  # (N, S, E)

    @torch.inference_mode()
    def scores(self, ep: Episode):
        support, s_prefix = self.videos(ep.support)
        query, q_prefix = self.videos(ep.query)
        features = self.text(ep.classes)  # (N, S, E) once per class when caching, else None
        tokens, states = self.loader.text_for(ep.classes) if features is None else (None, None)
        labels = torch.as_tensor(ep.support_labels, device=self.loader.device)
        with autocast(self.loader.device, self.amp):
            return self.model(
                support, labels, query, tokens, text_prefix=states, support_is_prefix=s_prefix, query_is_prefix=q_prefix,
                text_features=features,
            )

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


def score_episodes(
    scorer: EpisodeScorer, episodes: Sequence[Episode], baselines: bool, pairs: dict[str, str] | None = None, desc: str = "evaluate"
) -> list[dict[str, Any]]:
    """One row per (episode, method): accuracy, labels, predictions (+ order-pair outcomes where pairs are known)."""
    rows: list[dict[str, Any]] = []
    for ep in tqdm(episodes, desc=desc, unit="ep", mininterval=2.0):
        labels = np.asarray(ep.query_labels)
        sc = scorer.scores(ep)
        scores = {"task_adapter_pp": sc.logits}
        if baselines:
            scores["visual_only"] = sc.vis
            scores["semantic_only"] = sc.sem
            scores["clip_prototype"] = scorer.prototype_scores(ep)
        for method, m in scores.items():
            m = m.float().cpu().numpy()  # (N*Q, N)
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


def descriptions_label(cfg: Config, embeddings: ArtifactRef) -> str:
    """Which corpus the text came from: evaluate.descriptions_label, else `llm` or `file` by backend."""
    if cfg.evaluate.descriptions_label:
        return cfg.evaluate.descriptions_label
    store = ArtifactStore(embeddings.root)
    desc = store.manifest(embeddings).get("inputs", {}).get("descriptions")
    if not desc:
        return "unknown"
    backend = store.manifest(ArtifactRef.from_dict(desc)).get("config", {}).get("backend")
    return "file" if backend == "file" else "llm"


def _checkpoint_path(cfg: Config, inputs: dict[str, ArtifactRef]) -> Path:
    if cfg.evaluate.checkpoint:
        return Path(cfg.evaluate.checkpoint).expanduser()
    if "train" not in inputs:
        raise StageError("evaluate needs a checkpoint: run `fsar train` first or pass --checkpoint FILE")
    return ArtifactStore(inputs["train"].root).local_path(inputs["train"]) / "best.pt"


def run(cfg: Config, inputs: dict[str, ArtifactRef], store: ArtifactStore) -> ArtifactRef:
    for need in ("frames", "embeddings"):
        if need not in inputs:
            raise StageError(f"evaluate needs a {need} artifact; run `fsar {need}` first")
    ckpt_path = _checkpoint_path(cfg, inputs)
    ckpt = load_checkpoint(ckpt_path)
    check_checkpoint(ckpt, cfg, ckpt_path)
    label = descriptions_label(cfg, inputs["embeddings"])
    fields = {
        "evaluate": section_dict(cfg.evaluate, ["episodes", "shot", "seed", "split", "baselines", "untrained", "checkpoint"]),
        "protocol": section_dict(cfg.protocol),
        "model": section_dict(cfg.model),
        "checkpoint_sha256": sha256_file(ckpt_path),
        "descriptions": label,
    }
    stage_inputs = {k: v for k, v in inputs.items() if k in ("frames", "embeddings", "train")}
    if cfg.evaluate.checkpoint:
        stage_inputs.pop("train", None)

    def build(staging: Staging) -> None:
        evaluate_into(staging, cfg, inputs, ckpt, label)

    return build_once(
        store, "evaluate", cfg.dataset.name, config=fields, inputs=stage_inputs, build=build, main="episodes.parquet",
        format_version=FORMAT_VERSION,
    )


def prepare(cfg: Config, inputs: dict[str, ArtifactRef], device: torch.device):
    """(model, loader, frame store) for a config and its frames/embeddings inputs."""
    from pipeline.embeddings import TextCache
    from pipeline.frames import FrameStore
    from pipeline.model import build_model

    frames = FrameStore.open(inputs["frames"].dataset, inputs["frames"].version, root=inputs["frames"].root)
    text = TextCache(inputs["embeddings"])
    _check_text_cache(cfg, text)
    model = build_model(cfg.model, cfg.protocol, device=device)
    loader = EpisodeLoader(frames, text, cfg, model.image_mean, model.image_std, device)
    return model, loader, frames


def _check_text_cache(cfg: Config, text: Any) -> None:
    got = text.config.get("model", {})
    want = section_dict(cfg.model, ["clip", "pretrained", "text_adapted_layers"])
    diffs = [f"{k}: cache {got.get(k)!r} vs config {v!r}" for k, v in want.items() if got.get(k) != v]
    if diffs:
        raise StageError(f"the embeddings artifact was made for another text model ({'; '.join(diffs)}); re-run `fsar embeddings` with this config")


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
    scorer = EpisodeScorer(model, loader, cache=cfg.evaluate.cache, amp=cfg.train.amp)
    t0 = time.perf_counter()
    from pipeline.datasets import get_dataset

    pairs = get_dataset(cfg.dataset).order_pairs()
    rows = score_episodes(scorer, episodes, cfg.evaluate.baselines, pairs)
    if cfg.evaluate.untrained:  # the same model at its training initialisation, on the same episodes
        torch.manual_seed(cfg.train.seed)
        fresh = build_model(cfg.model, cfg.protocol, device=device).eval()
        for row in score_episodes(EpisodeScorer(fresh, loader, cache=cfg.evaluate.cache, amp=cfg.train.amp), episodes, False, pairs, "untrained"):
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
            "lineage": {label: collect_lineage(cfg, inputs, _checkpoint_path(cfg, inputs), ckpt)},
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
