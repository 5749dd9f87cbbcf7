"""The evaluate stage: seeded few-shot episodes of the test split, scored by the full model and its parts.

Methods scored on the same saved episodes:
- `task_adapter_pp`: argmax of vis * sem (the paper's model),
- `visual_only`: argmax of vis, `semantic_only`: argmax of sem (the two factors alone),
- `clip_prototype`: frozen CLIP (no adapters), cosine of the mean frame feature to class prototypes,
- `untrained` (with `evaluate.untrained`): the full model at its training initialisation,
- `by_support` (with `evaluate.choose_by_support`, beyond the paper): the full model with, per episode and class, the
  description candidate and order that the class's labelled supports fit best under the frozen towers (by_support.py).
- `task_adapter_pp_queries_shuffled` / `..._by_class` (with `model.scores=released`, whose scores depend on the
  order of the queries): the full model with the queries in the order `evaluate.query_order` does not give.

The queries of every saved episode are scored in `evaluate.query_order` (`Episode.with_query_order`).

The scoring itself (caches, batched episodes) is the few-shot core's (`pipeline.fewshot.scoring`). The stage
reads its inputs only: the registry (`pipeline.registry`) builds the vision-prefix artifact first when
evaluation reads one.

Artifact files: `episodes.parquet` (main: one row per episode x method, with `accuracy`),
`episode_list.parquet` (the saved episodes), `confusion.parquet`, `summary.json`, `report.md`, PNG plots.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import pandas as pd
import torch

from pipeline.artifacts import ArtifactRef, ArtifactStore, Staging
from pipeline.config import Config, section_dict
from pipeline.contract import StageError, build_once
from pipeline.datasets import get_dataset
from pipeline.evaluate.by_support import CHOICES_FILE, score_by_support
from pipeline.evaluate.report import collect_lineage, confusion, summarise, table_markdown, write_plots, write_report
from pipeline.fewshot.checkpoints import check_checkpoint, checkpoint_fingerprint, checkpoint_path, load_checkpoint
from pipeline.fewshot.devices import pick_device
from pipeline.fewshot.episodes import QUERY_ORDERS, EpisodeSampler, check_splits, episodes_to_frame, videos_by_class
from pipeline.fewshot.prepare import prepare
from pipeline.fewshot.scoring import EpisodeScorer, score_episodes
from pipeline.model import build_model
from pipeline.prefix import PrefixStates, enabled as prefix_enabled
from pipeline.settings.model import model_fields

log = logging.getLogger("fsar")

__all__ = ["FORMAT_VERSION", "METHODS", "descriptions_label", "plan_fields", "run", "scoring_fields", "upstream_for"]

FORMAT_VERSION = 2  # 2: the train input is hashed by version, an explicit checkpoint by content
METHODS = ("task_adapter_pp", "visual_only", "semantic_only", "clip_prototype")  # `untrained` too with evaluate.untrained


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
    vision prefix when it lives in an artifact (`pipeline.prefix.enabled`: `evaluate.prefix`, with `evaluate.cache`)."""
    ups = ("frames", "embeddings") if cfg.evaluate.checkpoint else ("frames", "embeddings", "train")
    return (*ups, "prefix") if prefix_enabled(cfg) else ups


def plan_fields(cfg: Config, inputs: Mapping[str, ArtifactRef] | None = None) -> dict[str, Any]:
    """What this stage's version hashes: protocol, model, the evaluate fields that change results, the
    descriptions label and, for an explicit checkpoint file, its content (a train input is hashed by version)."""
    inputs = inputs or {}
    fields = {
        "evaluate": section_dict(cfg.evaluate, ["episodes", "shot", "seed", "split", "baselines", "untrained", "query_order",
                                                "choose_by_support"]),
        "protocol": section_dict(cfg.protocol),
        "model": model_fields(cfg.model),
        "descriptions": descriptions_label(cfg, inputs.get("embeddings")),
    }
    if cfg.evaluate.checkpoint:
        fields["checkpoint"] = checkpoint_fingerprint(cfg)
    if cfg.evaluate.choose_by_support:  # a late field: the versions of evaluations without it stay as they were
        fields["all_orders_up_to"] = cfg.audit.all_orders_up_to
    return fields


def run(cfg: Config, inputs: dict[str, ArtifactRef], store: ArtifactStore) -> ArtifactRef:
    """Score `evaluate.episodes` saved episodes of `evaluate.split`; `inputs` holds every stage of `upstream_for`
    (`pipeline.registry.run_stage` builds the prefix first when it is one)."""
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


def scoring_fields(cfg: Config) -> dict[str, str]:
    """`scores` and `query_order` for the summary, only where they differ from fsar's defaults (so the summary of
    every evaluation made before they existed keeps its bytes)."""
    return {**section_dict(cfg.model, ["scores"]), **section_dict(cfg.evaluate, ["query_order"])}


def open_prefix(cfg: Config, inputs: Mapping[str, ArtifactRef], device: torch.device) -> Any | None:
    """The prefix artifact's states when evaluate reads one (checked against this config and checkpoint), else None."""
    if "prefix" not in inputs:
        return None
    prefix = PrefixStates(inputs["prefix"], device)
    prefix.check(cfg)
    made_from = ArtifactStore(inputs["prefix"].root).manifest(inputs["prefix"]).get("inputs", {}).get("train", {}).get("version")
    if made_from is not None and "train" in inputs and made_from != inputs["train"].version:
        raise StageError(f"the prefix artifact {inputs['prefix']} holds the temporal embedding of train/{made_from}, but evaluate scores "
                         f"train/{inputs['train'].version}; run `fsar prefix` for that checkpoint or drop the --input prefix=... pin")
    return prefix


def evaluate_into(staging: Staging, cfg: Config, inputs: dict[str, ArtifactRef], ckpt: dict[str, Any], label: str) -> None:
    device = pick_device(cfg.evaluate.device, "evaluate.device")
    model, loader, frames = prepare(cfg, inputs, device)
    model.load_trainable_state_dict(ckpt["trainable"])
    model.eval()
    shot = cfg.evaluate.shot or cfg.protocol.shot
    vids, excluded = videos_by_class(frames.index, cfg.evaluate.split, cfg.protocol.num_frames)
    if excluded:
        log.info(f"evaluate: excluded videos of split {cfg.evaluate.split}: {excluded}")
    sampler = EpisodeSampler(vids, cfg.protocol.way, shot, cfg.protocol.query, cfg.evaluate.seed, split=cfg.evaluate.split)
    episodes = sampler.take(cfg.evaluate.episodes)
    prefix = open_prefix(cfg, inputs, device)
    scorer = EpisodeScorer(model, loader, cache=cfg.evaluate.cache, amp=cfg.model.amp, episodes_per_batch=cfg.evaluate.episodes_per_batch,
                           prefix=prefix, batch=cfg.evaluate.videos_per_pass, workers=cfg.evaluate.loader_workers)
    t0 = time.perf_counter()
    pairs = get_dataset(cfg.dataset).order_pairs()
    order = cfg.evaluate.query_order
    ordered = [ep.with_query_order(order) for ep in episodes]
    rows = score_episodes(scorer, ordered, cfg.evaluate.baselines, pairs)
    if cfg.model.scores == "released":  # its scores depend on the query order: the other order too, on the same episodes
        other = next(o for o in QUERY_ORDERS if o != order)
        for row in score_episodes(scorer, [ep.with_query_order(other) for ep in episodes], False, pairs, f"queries {other}"):
            rows.append({**row, "method": f"task_adapter_pp_queries_{other}"})
    if cfg.evaluate.choose_by_support:  # a variant beyond the paper, its own rows (by_support.py)
        chosen_rows, choices = score_by_support(cfg, inputs, model, scorer, ordered, pairs)
        rows += chosen_rows
        staging.write_parquet(CHOICES_FILE, choices)
    if cfg.evaluate.untrained:  # the same model at its training initialisation, on the same episodes
        torch.manual_seed(cfg.train.seed)
        fresh = build_model(cfg.model, cfg.protocol, device=device).eval()
        fresh_prefix = prefix if prefix is not None and prefix.checkpoint_free else None  # else the trained embedding is in it
        fresh_scorer = EpisodeScorer(fresh, loader, cache=cfg.evaluate.cache, amp=cfg.model.amp, episodes_per_batch=scorer.episodes_per_batch,
                                     prefix=fresh_prefix, batch=scorer.batch, workers=scorer.workers)
        for row in score_episodes(fresh_scorer, ordered, False, pairs, "untrained"):
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
            **scoring_fields(cfg),
            "checkpoint_step": ckpt.get("step"),
            "lineage": {label: collect_lineage(cfg, inputs, checkpoint_path(cfg, inputs), ckpt)},
        },
    )
    # Wall-clock numbers go to the manifest's `run` and the log, never into report.md or summary.json.
    staging.extra["run"] = {"seconds": round(seconds, 3), "episodes_per_second": round(len(episodes) / max(seconds, 1e-9), 3)}
    log.info(f"evaluate: {len(episodes)} episodes in {seconds:.1f} s ({len(episodes) / max(seconds, 1e-9):.2f} episodes/s)")
    out = staging.dir
    write_plots(df, summary, out)
    notes = [
        f"{cfg.protocol.way}-way {shot}-shot, {cfg.protocol.query} query per class, {len(episodes)} episodes of split "
        f"{cfg.evaluate.split}, seed {cfg.evaluate.seed}; interval = 1.96 std / sqrt(episodes)",
        f"task_context: {cfg.model.task_context}; descriptions: {label}",
    ]
    if cfg.model.scores == "released":
        notes.append(f"scores: the released code's product (model.scores=released), queries {order.replace('_', ' ')}; it "
                     f"depends on the query order, so the other order is scored too (docs/method.md, defect 1)")
    if pairs:
        notes.append("order pairs: share of queries whose true class outscores the class that differs from it only in temporal "
                     "order, over queries whose partner is in the episode (chance 50%)")
    write_report(summary, out, f"fsar evaluation: {cfg.dataset.name}", notes)
    staging.extra["summary"] = {r["method"] + (f"/{r['descriptions']}" if "descriptions" in r else ""): [r["mean"], r["ci95"]] for r in summary["results"]}
    log.info(table_markdown(summary), extra={"bare": True})
