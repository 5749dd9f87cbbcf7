"""The descriptions stage: S ordered sub-action sentences for every class of every split.

    ref = run(config, {}, store)   # -> ArtifactRef of descriptions/<dataset>/<version>/
    # descriptions.parquet: one row per (split, class, k); corpus.yaml: the Task-Adapter++ release layout

For each class and each of n = `candidates` candidates: ask the backend (candidate c, attempt a uses
seed + a * n + c), with the class's worked examples (`exemplars`, see exemplars.py) in the prompt;
parse and validate the answer, ask again while it is invalid, up to `max_attempts`. A candidate's
answer is its first valid one, else its usable one with the fewest qa flags.

The kept answer of a class is the best candidate by this deterministic rule:
  1. fewest qa flags, counting `same_as_other_class` when it equals an answer already kept for an
     earlier class (classes in split order);
  2. most agreement with the class's other candidates (mean, over them, of the position-wise word
     overlap, see exemplars.closeness), i.e. the consensus answer;
  3. lowest candidate index.
Every candidate, with its flags, agreement and rank, is in candidates.parquet. A kept answer that
is invalid stays with its flags (cut or padded to S sentences), or, under `strict`, the stage fails
listing those classes. A class with no usable answer at all is always an error naming it. Answers
come from the per-answer cache first (see cache.py).

Where the dataset knows its true scripts (synthetic), every sentence's closeness to the truth is in
the table (`truth_similarity`), and a summary goes to the stage log and the manifest (run.quality).
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
from pipeline.descriptions.exemplars import Exemplar, ExemplarPool, closeness, load_exemplars, truth_scripts
from pipeline.descriptions.prompts import Prompt, load_prompt
from pipeline.descriptions.validate import FLAGS, coerce, normalize, parse_answer, qa_flags
from pipeline.stage import StageError, build_once

__all__ = [
    "CANDIDATES_FILE", "CANDIDATES_SCHEMA", "CORPUS_FILE", "FORMAT_VERSION", "MAIN", "SCHEMA", "STAGE",
    "ClassItem", "choose", "describe", "plan_fields", "quality", "run", "version_fields",
]  # fmt: skip

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
    exemplars: tuple[str, ...] = ()  # names of the worked examples in its prompt

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


@dataclass(frozen=True)
class Choice:
    """The kept candidate of one class."""

    candidate: int
    attempt: Attempt
    flags: list[str]  # the attempt's flags, plus same_as_other_class where it applies
    agreement: float | None

    @property
    def valid(self) -> bool:
        return not self.flags


def _candidates(cfg: DescriptionsConfig, backend: Backend) -> int:
    return cfg.candidates if backend.uses_prompt else 1  # a file gives the same answer every time


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
    fields["candidates"] = _candidates(cfg, backend)
    fields["max_attempts"] = _max_attempts(cfg, backend)
    fields["max_chars"] = cfg.max_chars
    fields["classes"] = [[i.split, i.name, i.action] for i in items]
    return fields


def _max_attempts(cfg: DescriptionsConfig, backend: Backend) -> int:
    return min(cfg.max_attempts, backend.max_attempts or cfg.max_attempts)


def _request(index: int, item: ClassItem, attempt: int, cfg: DescriptionsConfig, s: int, backend: Backend, prompt: Prompt | None,
             exemplars: Sequence[Exemplar] = (), candidates: int = 1) -> Request:  # fmt: skip
    candidate = index % candidates
    sampling = Sampling(cfg.temperature, cfg.top_p, cfg.max_tokens, cfg.seed + attempt * candidates + candidate)
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
        if exemplars:
            key_fields["exemplars"] = [[e.name, list(e.sentences)] for e in exemplars]
        shown = [(e.name, e.sentences) for e in exemplars]
        messages, schema = prompt.messages(item.action, s, cfg.max_chars, exemplars=shown), prompt.schema(s)
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
    exemplars: Sequence[Sequence[Exemplar]] | None = None,
    candidates: int = 1,
) -> tuple[list[list[Attempt]], Tally]:
    """Every answer slot's attempts (slot = class x candidates + candidate), asking again while invalid.

    The progress bar counts answers: one per slot, more when a slot is asked again.
    """
    from tqdm.auto import tqdm

    max_attempts = _max_attempts(cfg, backend)
    slots = len(items) * candidates
    shown = [list(exemplars[i]) if exemplars else [] for i in range(len(items))]
    attempts: list[list[Attempt]] = [[] for _ in range(slots)]
    tally = Tally()
    bar = tqdm(total=slots, desc="descriptions", unit="answer", mininterval=0.5, dynamic_ncols=True)

    unusable: dict[int, list[tuple[str, dict[str, Any]]]] = {}  # stored once their slot has a usable answer

    def on_done(req: Request, comp: Completion) -> None:
        ex = shown[req.index // candidates]
        if comp.error is None:
            sentences = parse_answer(comp.text)
            flags = qa_flags(sentences, num_sub_actions, req.action, cfg.max_chars, raw=comp.text, exemplars=[e.sentences for e in ex])
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
        attempts[req.index].append(Attempt(req.sampling.seed, req.key, comp, sentences, flags, tuple(e.name for e in ex)))
        bar.update(1)

    try:
        pending = list(range(slots))
        for attempt in range(max_attempts):
            if attempt > 0:
                tally.reasked.update(j // candidates for j in pending)
                bar.total += len(pending)
                bar.refresh()
            misses = []
            for j in pending:
                i = j // candidates
                req = _request(j, items[i], attempt, cfg, num_sub_actions, backend, prompt, shown[i], candidates)
                hit = cache.get(req.key) if cache is not None and backend.uses_cache else None
                if hit is None:
                    misses.append(req)
                else:
                    on_done(req, Completion(hit["text"], hit.get("prompt_tokens"), hit.get("completion_tokens"), hit.get("mode", ""), from_cache=True))
            backend.generate(misses, on_done)
            pending = [j for j in pending if not (attempts[j] and attempts[j][-1].valid)]
            if not pending:
                break
    finally:
        bar.close()
    # An answer without a sentence is cached only when its slot got a usable one later, so that a re-run
    # replays a finished slot exactly (0 calls) but asks again for a slot that had nothing to keep.
    for j, entries in unusable.items():
        if _kept(attempts[j]) is not None:
            for key, entry in entries:
                cache.put(key, entry)  # type: ignore[union-attr]
    return attempts, tally


def _agreement(sentences: list[str], others: Sequence[list[str]], s: int) -> float | None:
    if not others:
        return None
    mine = coerce(sentences, s)
    return sum(closeness(mine, coerce(o, s)) for o in others) / len(others)


def choose(items: Sequence[ClassItem], attempts: Sequence[Sequence[Attempt]], candidates: int, s: int
           ) -> tuple[list[Choice | None], list[list[dict[str, Any]]]]:  # fmt: skip
    """The kept candidate of every class (None: nothing usable) and every candidate's score, by the rule in the module doc."""
    choices: list[Choice | None] = []
    scores: list[list[dict[str, Any]]] = []
    kept_answers: list[list[str]] = []  # normalized kept answers of earlier classes
    for i in range(len(items)):
        kept = [_kept(attempts[i * candidates + c]) for c in range(candidates)]
        usable = [c for c in range(candidates) if kept[c] is not None]
        rows: list[dict[str, Any]] = []
        ranked: list[tuple[tuple[int, float, int], int, list[str], float | None]] = []
        for c in range(candidates):
            a = kept[c]
            if a is None:
                rows.append({"candidate": c, "flags": [], "agreement": None, "rank": None})
                continue
            flags = list(a.flags)
            norm = [normalize(x) for x in coerce(a.sentences, s)]
            if any(norm == other for other in kept_answers):
                flags = [f for f in FLAGS if f in {*flags, "same_as_other_class"}]
            agree = _agreement(a.sentences, [kept[o].sentences for o in usable if o != c], s)  # type: ignore[union-attr]
            ranked.append(((len(flags), -(agree or 0.0), c), c, flags, agree))
            rows.append({"candidate": c, "flags": flags, "agreement": agree, "rank": None})
        ranked.sort(key=lambda r: r[0])
        for rank, (_, c, _, _) in enumerate(ranked):
            rows[c]["rank"] = rank
        if ranked:
            _, c, flags, agree = ranked[0]
            a = kept[c]
            assert a is not None
            choices.append(Choice(c, a, flags, agree))
            kept_answers.append([normalize(x) for x in coerce(a.sentences, s)])
        else:
            choices.append(None)
        scores.append(rows)
    return choices, scores


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
            a, score = _kept(tries), scores[i][c]
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


def _listing(items: Sequence[ClassItem], idx: Sequence[int], why: Mapping[int, str], limit: int = 20) -> str:
    shown = [f"{items[i].split}/{items[i].name!r} ({why[i]})" for i in idx[:limit]]
    more = f"; and {len(idx) - limit} more" if len(idx) > limit else ""
    return "; ".join(shown) + more


def no_usable_answer(items: Sequence[ClassItem], attempts: list[list[Attempt]], missing: Sequence[int], cfg: DescriptionsConfig,
                     max_attempts: int, candidates: int, shown: int = 3) -> str:  # fmt: skip
    """One line: the classes without any usable answer, each with its last answer and why, and what helps."""
    parts = []
    for i in missing[:shown]:
        tries = [a for c in range(candidates) for a in attempts[i * candidates + c]]
        last = tries[-1] if tries else None
        if last is None:
            parts.append(f"{items[i].split}/{items[i].name!r} (never asked)")
            continue
        why = last.completion.error or ", ".join(last.flags) or "no sentence"
        text = " ".join(str(last.completion.text or "").split())
        answer = f"{text[:100]!r}{'...' if len(text) > 100 else ''}" if text else "nothing"
        parts.append(f"{items[i].split}/{items[i].name!r} after {len(tries)} answer(s), the last {answer} ({why})")
    more = f"; and {len(missing) - shown} more" if len(missing) > shown else ""
    return (
        f"descriptions: no usable answer for {len(missing)} of {len(items)} classes: {'; '.join(parts)}{more}. "
        f"What helps: a bigger model (--set descriptions.local_model=qwen2.5-coder-1.5b, or LLM=openai MODEL=...), "
        f"more attempts (--set descriptions.max_attempts={max(2 * max_attempts, max_attempts + 2)}; now {max_attempts}), "
        f"or your own sentences (LLM=file CORPUS=FILE, the layout of corpus.yaml). "
        f"Answers received so far are cached: a re-run asks only for these classes"
    )


def _check(items: Sequence[ClassItem], attempts: list[list[Attempt]], choices: Sequence[Choice | None], cfg: DescriptionsConfig,
           max_attempts: int, candidates: int) -> list[int]:  # fmt: skip
    """Fail on classes without a usable answer (always) or without a valid one (strict); the flagged ones."""
    missing = [i for i, ch in enumerate(choices) if ch is None]
    if missing:
        raise StageError(no_usable_answer(items, attempts, missing, cfg, max_attempts, candidates))
    flagged = [i for i, ch in enumerate(choices) if ch is not None and not ch.valid]
    why = {i: ", ".join(choices[i].flags) for i in flagged}  # type: ignore[union-attr]
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


def _order_right(table: pd.DataFrame, truth: Mapping[str, list[str]], pairs: Mapping[str, str]) -> dict[str, bool]:
    """Per class with an order partner: are its sentences closer to its own true script than to the partner's?"""
    out = {}
    for (split, name), g in table.groupby(["split", "class"], sort=False):
        partner = pairs.get(name)
        if partner in truth and name in truth:
            text = g.sort_values("k")["text"].tolist()
            out[f"{split}/{name}"] = closeness(text, truth[name]) > closeness(text, truth[partner])
    return out


def quality(table: pd.DataFrame, cands: pd.DataFrame, truth_source: str, order_right: Mapping[str, bool] | None = None) -> dict[str, Any]:
    """Closeness of the kept sentences to the true scripts: overall, by split, per class; the best candidate too.

    `order_right`: per class, whether it is closer to its own script than to its order partner's (a
    reversed script shares almost every word with the true one, so word overlap alone flatters it).
    """
    known = table[table["truth_similarity"].notna()]
    norm_eq = known["truth_similarity"] == 1.0
    per_class = known.groupby(["split", "class"], sort=False)["truth_similarity"].mean()
    best = cands[cands["truth_similarity"].notna()].groupby(["split", "class"], sort=False)["truth_similarity"].max()
    return {
        "truth": truth_source,
        "similarity": round(float(per_class.mean()), 4),  # mean over classes of the mean position-wise word overlap (0..1)
        "exact_sentences": round(float(norm_eq.mean()), 4),  # share of sentences equal (as words) to the true one
        "best_candidate_similarity": round(float(best.mean()), 4),  # what a perfect choice among the candidates would give
        "by_split": {sp: round(float(v.mean()), 4) for sp, v in per_class.groupby(level=0, sort=False)},
        "per_class": {f"{sp}/{c}": round(float(v), 4) for (sp, c), v in per_class.items()},
        "order_right": round(sum(order_right.values()) / len(order_right), 4) if order_right else None,
        "order_right_classes": sorted(k for k, v in (order_right or {}).items() if v),
    }


def _print_quality(q: dict[str, Any]) -> None:
    splits = ", ".join(f"{sp} {v:.2f}" for sp, v in q["by_split"].items())
    print(
        f"[fsar] descriptions: closeness to the true scripts ({q['truth']}): {q['similarity']:.2f} mean word overlap "
        f"({splits}); {100 * q['exact_sentences']:.0f}% of sentences exact; best candidate per class would give "
        f"{q['best_candidate_similarity']:.2f}"
        + (f"; closer to their own script than to their order partner's: {100 * q['order_right']:.0f}% of classes" if q["order_right"] is not None else ""),
        flush=True,
    )
    right = set(q["order_right_classes"])
    for name, v in q["per_class"].items():
        mark = "  order right" if name in right else ""
        print(f"[fsar]   {v:.2f}  {name}{mark}", flush=True)


def spec_pairs(config: Any) -> dict[str, str]:
    """The dataset's order pairs (class -> its temporal reverse), where it names them."""
    spec = get_dataset(config.dataset)
    return dict(spec.order_pairs()) if hasattr(spec, "order_pairs") else {}


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
    n = _candidates(cfg, backend)
    truth = truth_scripts(config, s)

    def build(staging: Staging) -> None:
        t0 = time.monotonic()
        cache = AnswerCache(store) if cfg.cache and backend.uses_cache else None
        with backend:
            attempts, tally = describe(items, backend, prompt, cfg, s, cache, shown, n)
            info = backend.run_info()
        choices, scores = choose(items, attempts, n, s)
        flagged = _check(items, attempts, choices, cfg, _max_attempts(cfg, backend), n)
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
        print(
            f"[fsar] descriptions: {len(items)} classes x {s} sub-actions x {n} candidate(s): {tally.calls} LLM calls "
            f"({tally.http} requests with retries), {tally.cached} answers from the cache, {read}"
            f"{len(tally.reasked)} classes asked again, {len(flagged)} kept with qa flags",
            flush=True,
        )
        if truth is not None and table["truth_similarity"].notna().any():
            pairs = spec_pairs(config)
            q = quality(table, cands, "synthetic scripts" if dataset == "synthetic" else "scripts.yaml", _order_right(table, truth, pairs))
            staging.extra["run"]["quality"] = q
            _print_quality(q)

    return build_once(store, STAGE, config.dataset.name, config=fields, inputs=inputs, build=build, main=MAIN, format_version=FORMAT_VERSION)
