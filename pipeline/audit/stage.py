"""The audit stage: do each class's videos show its sub-actions in the stated order? Before any training.

    ref = run(config, {"descriptions": d, "frames": f}, store)   # `fsar audit --dataset D`
    artifacts.load("audit", D)                                   # one row per (class, candidate): measure.AUDIT_SCHEMA

For the classes of `audit.splits` (default train and val; test only when listed), up to `audit.videos_per_class`
videos per class (seeded) with `protocol.num_frames` frames each, through the few-shot core's loader with evaluation
sampling; every usable description candidate of those classes is scored against them under the frozen backbone
(`model.clip` / `model.pretrained`, no adapters): its S sentences in the stated order against the reversed order (and
every order when S <= audit.all_orders_up_to), by the order-respecting fit of `alignment`. docs/audit.md has the
measure, what it can and cannot tell, and what to do about a low score.

Artifact files: `audit.parquet` (main), `videos.parquet` (each audited video's fits), `report.md`, `agreement.png`.
With `descriptions.choose=videos` the `chosen` rows are the candidate and order the videos support most (the
embeddings stage reads them); else the descriptions stage's rule (the kept candidate, stated order).
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from pipeline.artifacts import ArtifactRef, ArtifactStore, Staging
from pipeline.audit.features import frame_features, text_features
from pipeline.audit.measure import AUDIT_SCHEMA, VIDEO_SCHEMA, Settings, audit_classes
from pipeline.audit.report import summarise, summary_lines, write_report
from pipeline.config import Config, section_dict
from pipeline.contract import StageError, build_once
from pipeline.datasets import get_dataset
from pipeline.descriptions.reading import candidate_sentences
from pipeline.fewshot.devices import pick_device
from pipeline.fewshot.episodes import videos_by_class
from pipeline.fewshot.loader import EpisodeLoader, workers_for
from pipeline.fewshot.scoring import videos_per_pass_for
from pipeline.frames import FrameStore
from pipeline.model import build_model
from pipeline.model.text import format_prompt
from pipeline.settings.model import model_fields

log = logging.getLogger("fsar")

__all__ = ["FORMAT_VERSION", "MAIN", "STAGE", "VIDEOS_FILE", "plan_fields", "run", "select_videos"]

STAGE = "audit"
FORMAT_VERSION = 1
MAIN = "audit.parquet"
VIDEOS_FILE = "videos.parquet"
TOWER_FIELDS = ["clip", "pretrained", "init_seed", "image_size", "quick_gelu", "prompt_template", "amp"]  # what the frozen features depend on


def plan_fields(cfg: Config, inputs: Mapping[str, ArtifactRef] | None = None) -> dict[str, Any]:
    """What this stage's version hashes: the audit settings that change results, which choice `chosen` marks, the frozen
    towers (weights by content), T and S; + the descriptions and frames versions."""
    return {
        "audit": section_dict(cfg.audit, ["splits", "videos_per_class", "min_videos", "seed", "all_orders_up_to"]),
        "descriptions": {"choose": cfg.descriptions.choose},
        "model": model_fields(cfg.model, TOWER_FIELDS),
        "protocol": section_dict(cfg.protocol, ["num_frames", "num_sub_actions"]),
    }


def select_videos(index: pd.DataFrame, classes: list[tuple[str, str]], cfg: Config) -> tuple[dict[tuple[str, str], list[str]], dict[str, int]]:
    """{(split, class): audited video ids} for `classes`: up to audit.videos_per_class usable videos each (a class's draw
    depends on audit.seed and its own name only), and the excluded videos by reason."""
    out: dict[tuple[str, str], list[str]] = {}
    excluded: dict[str, int] = {}
    by_split = {}
    for split in cfg.audit.splits:
        by_split[split], dropped = videos_by_class(index, split, cfg.protocol.num_frames)
        for reason, n in dropped.items():
            excluded[reason] = excluded.get(reason, 0) + n
    for split, cls in classes:
        vids = sorted(by_split[split].get(cls, []))
        rng = np.random.default_rng([cfg.audit.seed, zlib.crc32(f"{split}/{cls}".encode())])
        take = min(len(vids), cfg.audit.videos_per_class)
        out[(split, cls)] = [vids[i] for i in sorted(rng.choice(len(vids), size=take, replace=False))] if take else []
    return out, excluded


def run(cfg: Config, inputs: dict[str, ArtifactRef], store: ArtifactStore) -> ArtifactRef:
    """Audit the descriptions of `cfg.audit.splits`' classes against their videos (see the module doc)."""
    for need in ("descriptions", "frames"):
        if need not in inputs:
            raise StageError(f"audit needs a {need} artifact; run `fsar {need}` first")
    fields = plan_fields(cfg, inputs)
    s = cfg.protocol.num_sub_actions
    cands = candidate_sentences(inputs["descriptions"], s)
    classes = list(dict.fromkeys((sp, c) for sp, c in zip(cands["split"], cands["class"]) if sp in cfg.audit.splits))
    if not classes:
        raise StageError(f"audit: the descriptions artifact {inputs['descriptions']} has no class of split(s) {list(cfg.audit.splits)}; "
                         f"set audit.splits to splits of dataset {cfg.dataset.name!r}")
    frames = FrameStore.open(inputs["frames"].dataset, inputs["frames"].version, root=inputs["frames"].root)
    videos, excluded = select_videos(frames.index, classes, cfg)
    if not any(videos.values()):
        raise StageError(f"audit: the frames artifact {inputs['frames']} has no usable video (at least protocol.num_frames="
                         f"{cfg.protocol.num_frames} stored frames) of split(s) {list(cfg.audit.splits)}; check the frames stage's failures")
    spec = get_dataset(cfg.dataset)

    def build(staging: Staging) -> None:
        t0 = time.perf_counter()
        device = pick_device(cfg.audit.device, "audit.device")
        model = build_model(cfg.model, cfg.protocol, device=device).eval()
        loader = EpisodeLoader(frames, None, cfg, model.image_mean, model.image_std, device)
        ids = list(dict.fromkeys(v for vids in videos.values() for v in vids))
        try:
            frame_feats = frame_features(model, loader, ids, videos_per_pass_for(cfg.audit.videos_per_pass, device),
                                         workers_for(cfg.audit.loader_workers, device))  # (V, T, E)
        finally:
            loader.close()
        audited = np.array([(sp, c) in videos for sp, c in zip(cands["split"], cands["class"])], dtype=bool)
        prompts, prompt_rows = _prompts(cands[cands["kept"] | audited], spec, cfg.model.prompt_template)  # every kept, every audited
        text = text_features(model, prompts, cfg.audit.prompts_per_pass)  # (P, E)
        settings = Settings(cfg.dataset.name, cfg.descriptions.choose, cfg.audit.min_videos, cfg.audit.all_orders_up_to)
        result = audit_classes(cands, videos, prompt_rows, text, frame_feats, {v: i for i, v in enumerate(ids)}, settings)
        staging.write_parquet(MAIN, result.table, schema=AUDIT_SCHEMA)
        staging.write_parquet(VIDEOS_FILE, result.per_video, schema=VIDEO_SCHEMA)
        summary = summarise(result.table, cfg.audit.splits, excluded)
        write_report(result.table, summary, staging.dir, _about(cfg, fields))
        seconds = time.perf_counter() - t0
        staging.extra["summary"] = summary
        staging.extra["run"] = {"seconds": round(seconds, 3), "videos": len(ids), "frames": len(ids) * cfg.protocol.num_frames,
                                "prompts": len(prompts), "device": str(device)}
        for line in summary_lines(summary):
            log.info(line)
        log.info(f"audit: {len(ids)} videos x {cfg.protocol.num_frames} frames and {len(prompts)} sentence prompts through the frozen "
                 f"towers in {seconds:.1f} s")

    return build_once(store, STAGE, cfg.dataset.name, config=fields, inputs={k: inputs[k] for k in ("descriptions", "frames")},
                      build=build, main=MAIN, format_version=FORMAT_VERSION)


def _about(cfg: Config, fields: Mapping[str, Any]) -> dict[str, Any]:
    """What the report says was audited, with what (no paths: the backbone's weights by tag or sha256)."""
    model = fields["model"]
    return {"dataset": cfg.dataset.name, "splits": list(cfg.audit.splits), "videos_per_class": cfg.audit.videos_per_class,
            "min_videos": cfg.audit.min_videos, "num_frames": cfg.protocol.num_frames, "num_sub_actions": cfg.protocol.num_sub_actions,
            "clip": model["clip"], "weights": model["pretrained"] or f"random (init_seed {model['init_seed']})",
            "choose": cfg.descriptions.choose}


def _prompts(cands: pd.DataFrame, spec: Any, template: str) -> tuple[list[str], dict[tuple[str, str, int], list[int]]]:
    """Distinct sentence prompts (as the embeddings stage writes them) and each candidate's S rows among them."""
    index: dict[str, int] = {}
    rows: dict[tuple[str, str, int], list[int]] = {}
    for split, cls, cand, sentences in zip(cands["split"], cands["class"], cands["candidate"], cands["sentences"]):
        name = spec.display_name(cls)
        rows[(split, cls, int(cand))] = [index.setdefault(format_prompt(template, name, t), len(index)) for t in sentences]
    return list(index), rows
