"""Asking the LLM: every class's candidates, each asked again while its answer is invalid.

For each class and each of n = `candidates` candidates: ask the backend (candidate c, attempt a uses
seed + a * n + c), with the class's worked examples (`exemplars`, see exemplars.py) in the prompt;
parse and validate the answer, ask again while it is invalid, up to `max_attempts`. A candidate's
answer is its first valid one, else its usable one with the fewest qa flags (`kept_attempt`). Answers
come from the per-answer cache first (see cache.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm

from pipeline.descriptions.backends import Backend, Completion, Request, Sampling
from pipeline.descriptions.cache import AnswerCache, cache_key
from pipeline.descriptions.exemplars import Exemplar
from pipeline.descriptions.prompts import Prompt
from pipeline.descriptions.validate import coerce, parse_answer, qa_flags
from pipeline.settings.descriptions import DescriptionsConfig

__all__ = ["Attempt", "ClassItem", "Tally", "candidates_for", "describe", "kept_attempt", "max_attempts_for", "no_usable_answer"]


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


def kept_attempt(attempts: Sequence[Attempt]) -> Attempt | None:
    """The first valid answer, else the usable one with the fewest flags (earliest on ties), else None."""
    for a in attempts:
        if a.valid:
            return a
    usable = [a for a in attempts if coerce(a.sentences, 1)]
    return min(usable, key=lambda a: len(a.flags)) if usable else None


def candidates_for(cfg: DescriptionsConfig, backend: Backend) -> int:
    return cfg.candidates if backend.uses_prompt else 1  # a file gives the same answer every time


def max_attempts_for(cfg: DescriptionsConfig, backend: Backend) -> int:
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
    max_attempts = max_attempts_for(cfg, backend)
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
        if kept_attempt(attempts[j]) is not None:
            for key, entry in entries:
                cache.put(key, entry)  # type: ignore[union-attr]
    return attempts, tally


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
