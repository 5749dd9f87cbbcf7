"""The text-embedding cache stage.

For every class of every split, the S prompts "A video of action about {class}: {sub-action k}"
(model.prompt_template; with `descriptions.choose=videos`, of the candidate and order the audit stage chose by the
class's videos, where it looked at them) are tokenised and run through the frozen text layers below the first adapted layer.
Those states depend only on the prompt text, so training and evaluation read them instead of
re-encoding text every episode.

Artifact files:
- `prompts.parquet` (main table): row, split, class, display_name, k (0..S-1, the sub-action), prompt
- `tokens.npy`: int64 [P, context]
- `states.npy`: [P, context, D_t] hidden states after the frozen prefix (embeddings.dtype)
"""

from __future__ import annotations

from collections.abc import Mapping
import logging
from typing import Any

import numpy as np
import pandas as pd
import torch

from pipeline.artifacts import ArtifactRef, ArtifactStore, Staging
from pipeline.config import Config, section_dict
from pipeline.contract import StageError, build_once
from pipeline.datasets import get_dataset
from pipeline.model import build_model
from pipeline.model.text import format_prompt
from pipeline.settings.model import model_fields

log = logging.getLogger("fsar")

__all__ = ["FORMAT_VERSION", "TEXT_MODEL_FIELDS", "TextCache", "build_prompts", "chosen_by_videos", "plan_fields", "run", "upstream_for"]

FORMAT_VERSION = 2  # 2: no class-name prompt rows (k = -1), which nothing read


def build_prompts(cfg: Config, descriptions: pd.DataFrame) -> pd.DataFrame:
    """One row per prompt: the S description prompts of each class, in order."""
    spec = get_dataset(cfg.dataset)
    S = cfg.protocol.num_sub_actions
    rows = []
    for (split, cls), part in descriptions.groupby(["split", "class"], sort=False):
        part = part.sort_values("k")
        texts = part["text"].tolist()
        if len(texts) != S or sorted(part["k"].tolist()) != list(range(S)):
            raise StageError(
                f"class {cls!r} ({split}) has {len(texts)} descriptions, protocol.num_sub_actions is {S}; "
                f"re-run the descriptions stage with the same protocol.num_sub_actions"
            )
        name = spec.display_name(cls)
        for k, text in enumerate(texts):
            rows.append((split, cls, name, k, format_prompt(cfg.model.prompt_template, name, text)))
    df = pd.DataFrame(rows, columns=["split", "class", "display_name", "k", "prompt"])
    df.insert(0, "row", np.arange(len(df), dtype=np.int64))
    return df


def _check_coverage(cfg: Config, descriptions: pd.DataFrame) -> None:
    have = set(zip(descriptions["split"], descriptions["class"]))
    missing = [f"{c} ({s})" for s, c in get_dataset(cfg.dataset).all_classes() if (s, c) not in have]
    if missing:
        raise StageError(
            f"the descriptions artifact lacks {len(missing)} class(es) of dataset {cfg.dataset.name!r}: {missing[:10]}; "
            f"re-run the descriptions stage"
        )


def upstream_for(cfg: Config) -> tuple[str, ...]:
    """The stages embeddings reads: descriptions, and the audit when `descriptions.choose=videos` (its chosen candidates)."""
    return ("descriptions", "audit") if cfg.descriptions.choose == "videos" else ("descriptions",)


def chosen_by_videos(descriptions: pd.DataFrame, audit: ArtifactRef, made_from: ArtifactRef) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The descriptions table with each class the audit chose by its videos given that candidate's sentences in the chosen
    order (k = 0..S-1), the other classes keeping the descriptions stage's choice (docs/audit.md); and the audit's rows of
    the classes chosen by their videos."""
    store = ArtifactStore(audit.root)
    source = store.manifest(audit).get("inputs", {}).get("descriptions", {}).get("version")
    if source != made_from.version:
        raise StageError(f"the audit artifact {audit} was made from descriptions {source}, not {made_from}; run `fsar audit` with this "
                         f"config or drop the --input audit=... pin")
    table = store.load(audit.stage, audit.dataset, audit.version)
    picked = table[table["chosen"] & (table["chosen_by"] == "videos")]
    out = descriptions.copy()
    for split, cls, sentences, order in zip(picked["split"], picked["class"], picked["sentences"], picked["chosen_order"]):
        rows = out.index[(out["split"] == split) & (out["class"] == cls)]
        texts = [sentences[int(i)] for i in order]
        if len(rows) != len(texts):
            raise StageError(f"the audit artifact {audit} holds {len(texts)} sentences for {cls!r} ({split}) but the descriptions "
                             f"{len(rows)}; re-run the audit with the same protocol.num_sub_actions")
        out.loc[rows, "text"] = [texts[int(k)] for k in out.loc[rows, "k"]]
    return out, picked


def run(cfg: Config, inputs: dict[str, ArtifactRef], store: ArtifactStore) -> ArtifactRef:
    """Cache the frozen text-prefix states of every prompt of the descriptions artifact (with `descriptions.choose=videos`:
    of the candidates and orders the audit chose by the videos)."""
    for need in upstream_for(cfg):
        if need not in inputs:
            raise StageError(f"the embeddings stage needs a{'n' if need[0] == 'a' else ''} {need} artifact; run `fsar {need}` first")
    fields = plan_fields(cfg, inputs)
    descriptions = ArtifactStore(inputs["descriptions"].root).load("descriptions", inputs["descriptions"].dataset, inputs["descriptions"].version)
    _check_coverage(cfg, descriptions)
    picked = None
    if "audit" in upstream_for(cfg):
        descriptions, picked = chosen_by_videos(descriptions, inputs["audit"], inputs["descriptions"])

    def build(staging: Staging) -> None:
        if picked is not None:
            log.info(f"embeddings: descriptions.choose=videos: {len(picked)} class(es) use the candidate and order their videos "
                     f"support most ({int((~picked['kept']).sum())} another candidate than the rule's, "
                     f"{sum(list(o) != sorted(o) for o in picked['chosen_order'])} another order)")
        prompts = build_prompts(cfg, descriptions)
        model = build_model(cfg.model, cfg.protocol).eval()
        tokens = model.tokenize(prompts["prompt"].tolist())  # (P, ctx)
        dtype = getattr(torch, cfg.embeddings.dtype)
        states = []
        with torch.inference_mode():
            for i in range(0, len(tokens), cfg.embeddings.batch_size):
                states.append(model.text_prefix(tokens[i : i + cfg.embeddings.batch_size]).to(dtype).cpu())  # (b, ctx, D_t)
        np.save(staging.path("tokens.npy"), tokens.cpu().numpy().astype(np.int64))
        np.save(staging.path("states.npy"), torch.cat(states).float().numpy().astype(cfg.embeddings.dtype))
        staging.write_parquet("prompts.parquet", prompts)
        staging.extra["summary"] = {"prompts": len(prompts), "classes": int(prompts["class"].nunique())}
        log.info(f"embeddings: {len(prompts)} prompts of {prompts['class'].nunique()} classes encoded")

    return build_once(
        store,
        "embeddings",
        cfg.dataset.name,
        config=fields,
        inputs={k: inputs[k] for k in upstream_for(cfg)},
        build=build,
        main="prompts.parquet",
        format_version=FORMAT_VERSION,
    )


TEXT_MODEL_FIELDS = ["clip", "pretrained", "init_seed", "text_adapted_layers", "prompt_template"]


def plan_fields(cfg: Config, inputs: Mapping[str, ArtifactRef] | None = None) -> dict[str, Any]:
    """What this stage's version hashes: the text model (weights by content), S, the stored dtype."""
    return {
        "model": model_fields(cfg.model, TEXT_MODEL_FIELDS),
        "num_sub_actions": cfg.protocol.num_sub_actions,
        "embeddings": section_dict(cfg.embeddings, ["dtype"]),
    }


class TextCache:
    """Read side of the embeddings artifact: tokens and prefix states per class, in description order."""

    def __init__(self, ref: ArtifactRef):
        store = ArtifactStore(ref.root)
        self.ref = ref
        self.prompts = store.load(ref.stage, ref.dataset, ref.version)
        self.tokens = torch.from_numpy(np.load(store.verified_path(ref, "tokens.npy")))  # (P, ctx)
        self.states = torch.from_numpy(np.load(store.verified_path(ref, "states.npy")).astype(np.float32))  # (P, ctx, D_t)
        self.config = store.manifest(ref)["config"]
        desc = self.prompts.sort_values(["class", "k"])
        self._rows = {c: part["row"].to_numpy() for c, part in desc.groupby("class")}

    def _check(self, classes: list[str]) -> None:
        missing = [c for c in classes if c not in self._rows]
        if missing:
            raise StageError(f"the embeddings artifact {self.ref} has no prompts for class(es) {missing[:10]}; re-run descriptions and embeddings")

    def for_classes(self, classes: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens [N, S, ctx], states [N, S, ctx, D_t]) of the classes' description prompts."""
        self._check(classes)
        rows = np.stack([self._rows[c] for c in classes])  # (N, S)
        # numpy's gather runs in the calling thread (a data worker: see pipeline.fewshot.loader._stack)
        return torch.from_numpy(self.tokens.numpy()[rows]), torch.from_numpy(self.states.numpy()[rows])
