"""The descriptions stage: S ordered sub-action sentences for every class of every split.

    ref = run(config, {}, store)   # -> ArtifactRef of descriptions/<dataset>/<version>/
    # descriptions.parquet: one row per (split, class, k); corpus.yaml: the Task-Adapter++ release layout

For each class: ask the backend (attempt a uses seed + a), parse and validate the answer, ask again
while it is invalid, up to `max_attempts`. Then the first valid answer is kept; else the answer with
the fewest qa flags is kept with its flags (cut or padded to S sentences), or, under `strict`, the
stage fails listing those classes. A class with no usable answer at all is always an error naming it.
Answers come from the per-answer cache first (see cache.py).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import pyarrow as pa
import yaml

from pipeline.artifacts import ArtifactRef, ArtifactStore, Staging
from pipeline.datasets import get_dataset
from pipeline.descriptions.backends import Backend, Completion, Request, Sampling, make_backend
from pipeline.descriptions.cache import AnswerCache, cache_key
from pipeline.descriptions.config import DescriptionsConfig
from pipeline.descriptions.prompts import Prompt, load_prompt
from pipeline.descriptions.validate import coerce, parse_answer, qa_flags
from pipeline.stage import StageError, build_once

__all__ = ["CORPUS_FILE", "FORMAT_VERSION", "MAIN", "SCHEMA", "STAGE", "ClassItem", "describe", "plan_fields", "run", "version_fields"]

STAGE = "descriptions"
FORMAT_VERSION = 1
MAIN = "descriptions.parquet"
CORPUS_FILE = "corpus.yaml"

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
    ]
)


@dataclass(frozen=True)
class ClassItem:
    split: str
    name: str  # raw class name
    action: str  # display name


@dataclass
class Attempt:
    seed: int
    key: str
    completion: Completion
    sentences: list[str]
    flags: list[str]

    @property
    def valid(self) -> bool:
        return not self.flags


@dataclass
class Tally:
    calls: int = 0  # answers asked of the backend
    http: int = 0  # requests made for them (transport retries and fallbacks included)
    cached: int = 0  # answers read from the cache
    failed: int = 0  # requests that got no answer
    read: int = 0  # answers that cost no call (the file backend)
    reasked: set[int] = field(default_factory=set)  # classes asked again after an invalid answer


def _kept(attempts: Sequence[Attempt]) -> Attempt | None:
    """The first valid answer, else the usable one with the fewest flags (earliest on ties), else None."""
    for a in attempts:
        if a.valid:
            return a
    usable = [a for a in attempts if coerce(a.sentences, 1)]
    return min(usable, key=lambda a: len(a.flags)) if usable else None


def version_fields(
    cfg: DescriptionsConfig, num_sub_actions: int, backend: Backend, prompt: Prompt | None, items: Sequence[ClassItem]
) -> dict[str, Any]:
    """What the artifact version hashes: backend, model identity, prompt, S, sampling, validation, class list."""
    fields: dict[str, Any] = {"backend": backend.name, **backend.identity(), "num_sub_actions": num_sub_actions}
    if prompt is not None:
        fields["prompt"] = prompt.version
        fields["prompt_sha256"] = prompt.sha256
        fields["sampling"] = {"temperature": cfg.temperature, "top_p": cfg.top_p, "max_tokens": cfg.max_tokens, "seed": cfg.seed}
    fields["max_attempts"] = _max_attempts(cfg, backend)
    fields["max_chars"] = cfg.max_chars
    fields["classes"] = [[i.split, i.name, i.action] for i in items]
    return fields


def _max_attempts(cfg: DescriptionsConfig, backend: Backend) -> int:
    return min(cfg.max_attempts, backend.max_attempts or cfg.max_attempts)


def _request(index: int, item: ClassItem, attempt: int, cfg: DescriptionsConfig, s: int, backend: Backend, prompt: Prompt | None) -> Request:
    sampling = Sampling(cfg.temperature, cfg.top_p, cfg.max_tokens, cfg.seed + attempt)
    key_fields: dict[str, Any] = {
        "backend": backend.name,
        **backend.identity(),
        "action": item.action,
        "num_sub_actions": s,
        "max_chars": cfg.max_chars,
        "sampling": sampling.to_dict(),
    }
    if prompt is not None:
        key_fields.update(prompt=prompt.version, prompt_sha256=prompt.sha256)
        messages, schema = prompt.messages(item.action, s, cfg.max_chars), prompt.schema(s)
    else:
        key_fields["class"] = item.name
        messages, schema = [], {}
    return Request(index, item.name, item.action, messages, schema, sampling, key=cache_key(key_fields))


def describe(
    items: Sequence[ClassItem],
    backend: Backend,
    prompt: Prompt | None,
    cfg: DescriptionsConfig,
    num_sub_actions: int,
    cache: AnswerCache | None,
) -> tuple[list[list[Attempt]], Tally]:
    """Every class's attempts, asking again while the answer is invalid; a progress bar while it works."""
    from tqdm.auto import tqdm

    max_attempts = _max_attempts(cfg, backend)
    attempts: list[list[Attempt]] = [[] for _ in items]
    tally = Tally()
    bar = tqdm(total=len(items), desc="descriptions", unit="class", mininterval=0.5, dynamic_ncols=True)
    state = {"round": 0}

    unusable: dict[int, list[tuple[str, dict[str, Any]]]] = {}  # stored once their class has a usable answer

    def on_done(req: Request, comp: Completion) -> None:
        if comp.error is None:
            sentences = parse_answer(comp.text)
            flags = qa_flags(sentences, num_sub_actions, req.action, cfg.max_chars, raw=comp.text)
            if cache is not None and not comp.from_cache:
                entry = {
                    "backend": backend.name, "model": backend.model_label, "action": req.action,
                    "seed": req.sampling.seed, "text": comp.text, "prompt_tokens": comp.prompt_tokens,
                    "completion_tokens": comp.completion_tokens, "mode": comp.mode,
                }  # fmt: skip
                if sentences:
                    cache.put(req.key, entry)
                else:
                    unusable.setdefault(req.index, []).append((req.key, entry))
        else:
            sentences, flags = [], ["request_failed"]
            tally.failed += 1
        if comp.from_cache:
            tally.cached += 1
        elif comp.calls or comp.error is not None:
            tally.calls += 1
            tally.http += comp.calls
        else:
            tally.read += 1
        attempts[req.index].append(Attempt(req.sampling.seed, req.key, comp, sentences, flags))
        if not flags or state["round"] == max_attempts - 1:
            bar.update(1)

    try:
        pending = list(range(len(items)))
        for attempt in range(max_attempts):
            state["round"] = attempt
            if attempt > 0:
                tally.reasked.update(pending)
            misses = []
            for i in pending:
                req = _request(i, items[i], attempt, cfg, num_sub_actions, backend, prompt)
                hit = cache.get(req.key) if cache is not None and backend.uses_cache else None
                if hit is None:
                    misses.append(req)
                else:
                    on_done(req, Completion(hit["text"], hit.get("prompt_tokens"), hit.get("completion_tokens"), hit.get("mode", ""), from_cache=True))
            backend.generate(misses, on_done)
            pending = [i for i in pending if not (attempts[i] and attempts[i][-1].valid)]
            if not pending:
                break
    finally:
        bar.close()
    # An answer without a sentence is cached only when its class got a usable one later, so that a re-run
    # replays a finished class exactly (0 calls) but asks again for a class that had nothing to keep.
    for i, entries in unusable.items():
        if _kept(attempts[i]) is not None:
            for key, entry in entries:
                cache.put(key, entry)  # type: ignore[union-attr]
    return attempts, tally


def _sum(values: list[int | None]) -> int | None:
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def _rows(dataset: str, items: Sequence[ClassItem], attempts: list[list[Attempt]], cfg: DescriptionsConfig, s: int,
          backend: Backend, prompt: Prompt | None) -> list[dict[str, Any]]:  # fmt: skip
    rows = []
    for item, tries in zip(items, attempts, strict=True):
        kept = _kept(tries)
        assert kept is not None
        for k, text in enumerate(coerce(kept.sentences, s)):
            rows.append({
                "dataset": dataset, "split": item.split, "class": item.name, "action": item.action, "k": k, "text": text,
                "backend": backend.name, "model": backend.model_label,
                "prompt_version": prompt.version if prompt else None, "prompt_sha256": prompt.sha256 if prompt else None,
                "num_sub_actions": s,
                "temperature": cfg.temperature if prompt else None, "top_p": cfg.top_p if prompt else None,
                "max_tokens": cfg.max_tokens if prompt else None, "seed": kept.seed if prompt else None,
                "attempts": len(tries), "valid": kept.valid, "qa_flags": list(kept.flags),
                "raw_response": kept.completion.text, "structured_output": kept.completion.mode,
                "prompt_tokens": _sum([a.completion.prompt_tokens for a in tries]),
                "completion_tokens": _sum([a.completion.completion_tokens for a in tries]),
                "from_cache": kept.completion.from_cache, "cache_key": kept.key if backend.uses_cache else None,
            })  # fmt: skip
    return rows


def _listing(items: Sequence[ClassItem], idx: Sequence[int], why: Mapping[int, str], limit: int = 20) -> str:
    shown = [f"{items[i].split}/{items[i].name!r} ({why[i]})" for i in idx[:limit]]
    more = f"; and {len(idx) - limit} more" if len(idx) > limit else ""
    return "; ".join(shown) + more


def _check(items: Sequence[ClassItem], attempts: list[list[Attempt]], cfg: DescriptionsConfig, max_attempts: int) -> list[int]:
    """Fail on classes without a usable answer (always) or without a valid one (strict); the flagged ones."""
    missing = [i for i, tries in enumerate(attempts) if _kept(tries) is None]
    if missing:
        why = {}
        for i in missing:
            last = attempts[i][-1] if attempts[i] else None
            why[i] = (last.completion.error or ", ".join(last.flags)) if last else "never asked"
        raise StageError(
            f"descriptions: no usable answer for {len(missing)} of {len(items)} classes after {len(attempts[missing[0]])} attempt(s): "
            f"{_listing(items, missing, why)}. Answers received so far are cached: re-running asks only for these"
        )
    flagged = [i for i, tries in enumerate(attempts) if not _kept(tries).valid]  # type: ignore[union-attr]
    why = {i: ", ".join(_kept(attempts[i]).flags) for i in flagged}  # type: ignore[union-attr]
    if flagged and cfg.strict:
        raise StageError(
            f"descriptions: {len(flagged)} classes have no valid answer after {max_attempts} attempt(s) (strict): "
            f"{_listing(items, flagged, why)}. Raise descriptions.max_attempts, change the model or prompt, "
            f"or set descriptions.strict=false to keep them with their qa flags"
        )
    if flagged:
        print(f"[fsar] descriptions: kept {len(flagged)} classes with qa flags: {_listing(items, flagged, why, limit=10)}", flush=True)
    return flagged


def _corpus(items: Sequence[ClassItem], table: pd.DataFrame) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        sel = table[(table["split"] == item.split) & (table["class"] == item.name)].sort_values("k")
        out[item.name] = {"label": item.name, "sub_act_en_li": sel["text"].tolist()}
    return out


def _setup(config: Any) -> tuple[list[ClassItem], Backend, Prompt | None, dict[str, Any]]:
    """Classes, checked backend, prompt and version fields: everything decided before any answer is asked."""
    cfg: DescriptionsConfig = config.descriptions
    spec = get_dataset(config.dataset)
    items = [ClassItem(split, name, spec.display_name(name)) for split, name in spec.all_classes()]
    if not items:
        raise StageError(f"descriptions: dataset {config.dataset.name!r} has no classes")
    backend = make_backend(cfg)
    backend.check()  # before any work: a missing key, model, package or GPU stops here with the choices
    backend.prepare([(i.name, i.action) for i in items])
    prompt = load_prompt(cfg.prompt) if backend.uses_prompt else None
    return items, backend, prompt, version_fields(cfg, config.protocol.num_sub_actions, backend, prompt, items)


def plan_fields(config: Any, inputs: Mapping[str, ArtifactRef] | None = None) -> dict[str, Any]:
    """What this stage's version hashes for `config`, computed without asking the LLM anything (the planner)."""
    return _setup(config)[3]


def run(config: Any, inputs: Mapping[str, ArtifactRef] | None, store: ArtifactStore) -> ArtifactRef:
    """Build (or find) the descriptions artifact of `config.dataset` with `config.descriptions`."""
    cfg: DescriptionsConfig = config.descriptions
    s = config.protocol.num_sub_actions
    items, backend, prompt, fields = _setup(config)

    def build(staging: Staging) -> None:
        t0 = time.monotonic()
        cache = AnswerCache(store) if cfg.cache and backend.uses_cache else None
        with backend:
            attempts, tally = describe(items, backend, prompt, cfg, s, cache)
            info = backend.run_info()
        flagged = _check(items, attempts, cfg, _max_attempts(cfg, backend))
        table = pd.DataFrame(_rows(config.dataset.name, items, attempts, cfg, s, backend, prompt), columns=SCHEMA.names)
        staging.write_parquet(MAIN, table, schema=SCHEMA)
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
            "seconds": round(time.monotonic() - t0, 3),
        }
        read = f"{tally.read} answers read from the {backend.name} backend, " if tally.read else ""
        print(
            f"[fsar] descriptions: {len(items)} classes x {s} sub-actions: {tally.calls} LLM calls "
            f"({tally.http} requests with retries), {tally.cached} answers from the cache, {read}"
            f"{len(tally.reasked)} classes asked again, {len(flagged)} kept with qa flags",
            flush=True,
        )

    return build_once(store, STAGE, config.dataset.name, config=fields, inputs=inputs, build=build, main=MAIN, format_version=FORMAT_VERSION)
