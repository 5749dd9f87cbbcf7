"""The descriptions stage: S ordered sub-action sentences for every class of every split.

    ref = run(config, {}, store)   # -> ArtifactRef of descriptions/<dataset>/<version>/
    # descriptions.parquet: one row per (split, class, k); corpus.yaml: the Task-Adapter++ release layout

The stage asks (`asking`: candidates per class, asked again while invalid, from the answer cache
first), chooses (`choosing`: the kept candidate of each class, and the classes refused), and, where the
dataset knows its true scripts, reports how close the kept sentences are (`quality`). Every candidate,
with its flags, agreement and rank, is in candidates.parquet.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import pyarrow as pa
import yaml

from pipeline.artifacts import ArtifactRef, ArtifactStore, Staging
from pipeline.contract import StageError, build_once
from pipeline.datasets import get_dataset
from pipeline.descriptions.asking import Attempt, ClassItem, candidates_for, describe, kept_attempt, max_attempts_for
from pipeline.descriptions.backends import Backend, make_backend
from pipeline.descriptions.cache import AnswerCache
from pipeline.descriptions.choosing import Choice, check_choices, choose
from pipeline.descriptions.exemplars import ExemplarPool, closeness, load_exemplars, truth_scripts
from pipeline.descriptions.prompts import Prompt, load_prompt
from pipeline.descriptions.quality import log_quality, order_right, quality, spec_pairs
from pipeline.descriptions.validate import coerce
from pipeline.settings.descriptions import DescriptionsConfig

__all__ = [
    "CANDIDATES_FILE", "CANDIDATES_SCHEMA", "CORPUS_FILE", "FORMAT_VERSION", "MAIN", "SCHEMA", "STAGE", "plan_fields", "run",
    "version_fields",
]  # fmt: skip

log = logging.getLogger("fsar")

STAGE = "descriptions"
FORMAT_VERSION = 2  # 2: candidates, exemplars, truth similarity
MAIN = "descriptions.parquet"
CORPUS_FILE = "corpus.yaml"
CANDIDATES_FILE = "candidates.parquet"

SCHEMA = pa.schema(
    [
        ("dataset", pa.string()),
        ("split", pa.string()),
        ("class", pa.string()),  # raw class name, as in the dataset's split
        ("action", pa.string()),  # display name written into the prompt
        ("k", pa.int32()),  # sub-action index in temporal order, 0 .. S-1
        ("text", pa.string()),
        ("backend", pa.string()),
        ("model", pa.string()),
        ("prompt_version", pa.string()),  # null for the file backend
        ("prompt_sha256", pa.string()),
        ("num_sub_actions", pa.int32()),  # S
        ("temperature", pa.float64()),
        ("top_p", pa.float64()),
        ("max_tokens", pa.int32()),
        ("seed", pa.int64()),  # seed of the kept answer
        ("attempts", pa.int32()),  # answers asked for this class (cached ones included)
        ("valid", pa.bool_()),  # the kept answer passed validation
        ("qa_flags", pa.list_(pa.string())),  # problems of the kept answer (see validate.py)
        ("raw_response", pa.string()),  # the kept answer, as received
        ("structured_output", pa.string()),  # json_schema | json_object | text | vllm | file
        ("prompt_tokens", pa.int64()),  # summed over the class's attempts (null: not reported)
        ("completion_tokens", pa.int64()),
        ("from_cache", pa.bool_()),  # the kept answer came from the cache
        ("cache_key", pa.string()),
        ("candidate", pa.int32()),  # which candidate was kept, 0 .. candidates-1
        ("candidates", pa.int32()),  # candidates asked for this class
        ("agreement", pa.float64()),  # the kept candidate's agreement with the others (null: one candidate)
        ("exemplars", pa.list_(pa.string())),  # worked examples in the kept answer's prompt (class names)
        ("truth_similarity", pa.float64()),  # this sentence vs the true one at position k (null: truth unknown)
    ]
)

CANDIDATES_SCHEMA = pa.schema(
    [
        ("dataset", pa.string()),
        ("split", pa.string()),
        ("class", pa.string()),
        ("action", pa.string()),
        ("candidate", pa.int32()),
        ("seed", pa.int64()),  # seed of this candidate's answer (null: none usable)
        ("attempts", pa.int32()),
        ("usable", pa.bool_()),  # has a sentence to keep
        ("valid", pa.bool_()),
        ("qa_flags", pa.list_(pa.string())),  # same_as_other_class included where it applied
        ("sentences", pa.list_(pa.string())),  # as parsed (not cut or padded)
        ("raw_response", pa.string()),
        ("agreement", pa.float64()),  # mean position-wise word overlap with the class's other usable candidates
        ("rank", pa.int32()),  # 0 = kept; null: not usable
        ("kept", pa.bool_()),
        ("exemplars", pa.list_(pa.string())),
        ("from_cache", pa.bool_()),
        ("cache_key", pa.string()),
        ("truth_similarity", pa.float64()),  # closeness of the (cut/padded) sentences to the truth (null: unknown)
    ]
)


def version_fields(
    cfg: DescriptionsConfig, num_sub_actions: int, backend: Backend, prompt: Prompt | None, items: Sequence[ClassItem],
    exemplars: ExemplarPool | None = None,
) -> dict[str, Any]:  # fmt: skip
    """What the artifact version hashes: backend, model identity, prompt, examples, S, sampling, candidates, class list."""
    fields: dict[str, Any] = {"backend": backend.name, **backend.identity(), "num_sub_actions": num_sub_actions}
    if prompt is not None:
        fields["prompt"] = prompt.version
        fields["prompt_sha256"] = prompt.sha256
        fields["sampling"] = {"temperature": cfg.temperature, "top_p": cfg.top_p, "max_tokens": cfg.max_tokens, "seed": cfg.seed}
        fields["exemplars"] = exemplars.identity(cfg.exemplar_count, cfg.exemplar_rule) if exemplars else None
    fields["candidates"] = candidates_for(cfg, backend)
    fields["max_attempts"] = max_attempts_for(cfg, backend)
    fields["max_chars"] = cfg.max_chars
    fields["classes"] = [[i.split, i.name, i.action] for i in items]
    return fields


def _sum(values: list[int | None]) -> int | None:
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def _rows(dataset: str, items: Sequence[ClassItem], attempts: list[list[Attempt]], choices: Sequence[Choice | None], cfg: DescriptionsConfig,
          s: int, backend: Backend, prompt: Prompt | None, candidates: int, truth: Mapping[str, list[str]] | None) -> list[dict[str, Any]]:  # fmt: skip
    rows = []
    for i, item in enumerate(items):
        choice = choices[i]
        assert choice is not None
        kept = choice.attempt
        tries = [a for c in range(candidates) for a in attempts[i * candidates + c]]
        true = truth.get(item.name) if truth else None
        for k, text in enumerate(coerce(kept.sentences, s)):
            rows.append({
                "dataset": dataset, "split": item.split, "class": item.name, "action": item.action, "k": k, "text": text,
                "backend": backend.name, "model": backend.model_label,
                "prompt_version": prompt.version if prompt else None, "prompt_sha256": prompt.sha256 if prompt else None,
                "num_sub_actions": s,
                "temperature": cfg.temperature if prompt else None, "top_p": cfg.top_p if prompt else None,
                "max_tokens": cfg.max_tokens if prompt else None, "seed": kept.seed if prompt else None,
                "attempts": len(tries), "valid": choice.valid, "qa_flags": list(choice.flags),
                "raw_response": kept.completion.text, "structured_output": kept.completion.mode,
                "prompt_tokens": _sum([a.completion.prompt_tokens for a in tries]),
                "completion_tokens": _sum([a.completion.completion_tokens for a in tries]),
                "from_cache": kept.completion.from_cache, "cache_key": kept.key if backend.uses_cache else None,
                "candidate": choice.candidate, "candidates": candidates, "agreement": choice.agreement,
                "exemplars": list(kept.exemplars),
                "truth_similarity": closeness([text], [true[k]]) if true and k < len(true) else None,
            })  # fmt: skip
    return rows


def _candidate_rows(dataset: str, items: Sequence[ClassItem], attempts: list[list[Attempt]], scores: list[list[dict[str, Any]]],
                    s: int, backend: Backend, candidates: int, truth: Mapping[str, list[str]] | None) -> list[dict[str, Any]]:  # fmt: skip
    rows = []
    for i, item in enumerate(items):
        true = truth.get(item.name) if truth else None
        for c in range(candidates):
            tries = attempts[i * candidates + c]
            a, score = kept_attempt(tries), scores[i][c]
            last = a or (tries[-1] if tries else None)
            rows.append({
                "dataset": dataset, "split": item.split, "class": item.name, "action": item.action, "candidate": c,
                "seed": a.seed if a else None, "attempts": len(tries), "usable": a is not None,
                "valid": a is not None and not score["flags"],
                "qa_flags": score["flags"] if a else (list(last.flags) if last else []),
                "sentences": list(a.sentences) if a else [], "raw_response": last.completion.text if last else None,
                "agreement": score["agreement"], "rank": score["rank"], "kept": score["rank"] == 0,
                "exemplars": list(last.exemplars) if last else [],
                "from_cache": bool(last and last.completion.from_cache),
                "cache_key": last.key if last is not None and backend.uses_cache else None,
                "truth_similarity": closeness(coerce(a.sentences, s), true) if a and true else None,
            })  # fmt: skip
    return rows


def _corpus(items: Sequence[ClassItem], table: pd.DataFrame) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        sel = table[(table["split"] == item.split) & (table["class"] == item.name)].sort_values("k")
        out[item.name] = {"label": item.name, "sub_act_en_li": sel["text"].tolist()}
    return out


@dataclass(frozen=True)
class _Setup:
    items: list[ClassItem]
    backend: Backend
    prompt: Prompt | None
    pool: ExemplarPool
    fields: dict[str, Any]


def _setup(config: Any, announce: bool = False) -> _Setup:
    """Classes, checked backend, prompt, examples and version fields: everything decided before any answer is asked."""
    cfg: DescriptionsConfig = config.descriptions
    s = config.protocol.num_sub_actions
    spec = get_dataset(config.dataset)
    items = [ClassItem(split, name, spec.display_name(name)) for split, name in spec.all_classes()]
    if not items:
        raise StageError(f"descriptions: dataset {config.dataset.name!r} has no classes")
    backend = make_backend(cfg, announce=announce)
    backend.check()  # before any work: a missing key, model, package or GPU stops here with the choices
    backend.prepare([(i.name, i.action) for i in items])
    prompt = load_prompt(cfg.prompt) if backend.uses_prompt else None
    pool = load_exemplars(cfg.exemplars, config, items, s) if prompt is not None else ExemplarPool()
    return _Setup(items, backend, prompt, pool, version_fields(cfg, s, backend, prompt, items, pool))


def plan_fields(config: Any, inputs: Mapping[str, ArtifactRef] | None = None) -> dict[str, Any]:
    """What this stage's version hashes for `config`, computed without asking the LLM anything (the planner)."""
    return _setup(config).fields


def run(config: Any, inputs: Mapping[str, ArtifactRef] | None, store: ArtifactStore) -> ArtifactRef:
    """Build (or find) the descriptions artifact of `config.dataset` with `config.descriptions`."""
    cfg: DescriptionsConfig = config.descriptions
    s = config.protocol.num_sub_actions
    setup = _setup(config, announce=True)
    items, backend, prompt, pool, fields = setup.items, setup.backend, setup.prompt, setup.pool, setup.fields
    shown = [pool.select(i, cfg.exemplar_count, cfg.exemplar_rule) for i in items] if pool else None
    n = candidates_for(cfg, backend)
    truth = truth_scripts(config, s)

    def build(staging: Staging) -> None:
        t0 = time.monotonic()
        cache = AnswerCache(store) if cfg.cache and backend.uses_cache else None
        with backend:
            attempts, tally = describe(items, backend, prompt, cfg, s, cache, shown, n)
            info = backend.run_info()
        choices, scores = choose(items, attempts, n, s)
        flagged = check_choices(items, attempts, choices, cfg, max_attempts_for(cfg, backend), n)
        dataset = config.dataset.name
        table = pd.DataFrame(_rows(dataset, items, attempts, choices, cfg, s, backend, prompt, n, truth), columns=SCHEMA.names)
        cands = pd.DataFrame(_candidate_rows(dataset, items, attempts, scores, s, backend, n, truth), columns=CANDIDATES_SCHEMA.names)
        staging.write_parquet(MAIN, table, schema=SCHEMA)
        staging.write_parquet(CANDIDATES_FILE, cands, schema=CANDIDATES_SCHEMA)
        corpus_text = yaml.safe_dump(_corpus(items, table), sort_keys=False, allow_unicode=True, width=1000)
        staging.path(CORPUS_FILE).write_text(corpus_text, encoding="utf-8")
        staging.extra["run"] = {
            **info,
            "llm_calls": tally.calls,
            "requests": tally.http,
            "from_cache": tally.cached,
            "read_without_call": tally.read,
            "failed_requests": tally.failed,
            "classes_reasked": len(tally.reasked),
            "classes_flagged": len(flagged),
            "candidates": n,
            "exemplars": pool.source,
            "seconds": round(time.monotonic() - t0, 3),
        }
        read = f"{tally.read} answers read from the {backend.name} backend, " if tally.read else ""
        log.info(
            f"descriptions: {len(items)} classes x {s} sub-actions x {n} candidate(s): {tally.calls} LLM calls "
            f"({tally.http} requests with retries), {tally.cached} answers from the cache, {read}"
            f"{len(tally.reasked)} classes asked again, {len(flagged)} kept with qa flags"
        )
        if truth is not None and table["truth_similarity"].notna().any():
            pairs = spec_pairs(config)
            q = quality(table, cands, "synthetic scripts" if dataset == "synthetic" else "scripts.yaml", order_right(table, truth, pairs))
            staging.extra["run"]["quality"] = q
            log_quality(q)

    return build_once(store, STAGE, config.dataset.name, config=fields, inputs=inputs, build=build, main=MAIN, format_version=FORMAT_VERSION)
