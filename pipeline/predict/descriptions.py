"""Sub-action descriptions of the support classes, in order of precedence:

1. a user file (`--descriptions FILE`: YAML/JSON, read as the descriptions stage's `file` backend reads it),
2. the bundle, when it knows the class (the trained run's descriptions artifact),
3. the descriptions stage's LLM backends with the same config keys (`descriptions.*`, from the bundle,
   overridable) and the same per-answer cache under the artifact root.

Classes are matched by folder name, then display name, then ignoring case, `_` and spaces.

    found = resolve_descriptions(["jump", "my new class"], bundle, corpus="mine.yaml", overrides=[...])
    found["jump"].sentences, found["jump"].source      # ["...", "...", "..."], "bundle"
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.contract import StageError

__all__ = ["ClassText", "resolve_descriptions"]


@dataclass(frozen=True)
class ClassText:
    """The S ordered sentences of one support class and where they came from."""

    display_name: str  # written into the prompt as {c}
    sentences: list[str]  # exactly S, in temporal order
    source: str  # "file <name>" | "bundle" | "llm <backend>/<model>"


def _lookup(table: Mapping[str, Any], name: str, display: str) -> Any:
    # start-up: fsar predict loads only what it uses
    from pipeline.descriptions.validate import normalize

    for key in (name, display):
        if key in table:
            return table[key]
    by_norm = {normalize(k): v for k, v in table.items()}
    for key in (name, display):
        if normalize(key) in by_norm:
            return by_norm[normalize(key)]
    return None


def _exact(cls: str, sentences: Sequence[str], s: int, where: str) -> list[str]:
    sentences = [" ".join(str(t).split()) for t in sentences]
    if len(sentences) != s or not all(sentences):
        raise StageError(f"class {cls!r}: {where} gives {len(sentences)} sentences, this model needs exactly {s} non-empty ones (protocol.num_sub_actions)")
    return sentences


def resolve_descriptions(
    classes: Sequence[str],
    bundle: Any,
    corpus: str | os.PathLike[str] | Mapping[str, Sequence[str]] | None = None,
    overrides: Sequence[str] = (),
    artifacts: str | None = None,
) -> dict[str, ClassText]:
    """{class: ClassText} for every class; a class nothing describes is an error naming the ways to fix it."""
    # start-up: fsar predict loads only what it uses
    from pipeline.datasets.registry import humanize

    s = bundle.num_sub_actions
    user, label = _user_corpus(corpus)
    out: dict[str, ClassText] = {}
    todo: list[tuple[str, str]] = []
    for cls in classes:
        known = _lookup(bundle.descriptions, cls, humanize(cls))
        display = known["display_name"] if known else humanize(cls)
        mine = _lookup(user, cls, display) if user else None
        if mine is not None:
            out[cls] = ClassText(display, _exact(cls, mine, s, f"--descriptions {label}"), f"file {label}")
        elif known is not None:
            out[cls] = ClassText(display, _exact(cls, known["sentences"], s, "the bundle"), "bundle")
        else:
            todo.append((cls, display))
    if todo:
        out.update(_ask_llm(todo, bundle, overrides, artifacts))
    return {c: out[c] for c in classes}


def _user_corpus(corpus: str | os.PathLike[str] | Mapping[str, Sequence[str]] | None) -> tuple[dict[str, list[str]], str]:
    if corpus is None:
        return {}, ""
    if isinstance(corpus, Mapping):
        return {str(k): [str(t) for t in v] for k, v in corpus.items()}, "mapping"
    from pathlib import Path

    # start-up: fsar predict loads only what it uses
    from pipeline.descriptions.backends.corpus_file import read_corpus

    return read_corpus(corpus), Path(corpus).name


def _descriptions_config(bundle: Any, overrides: Sequence[str]):
    """The bundle's descriptions settings with `descriptions.key=value` overrides (the stage's config keys)."""
    # start-up: fsar predict loads only what it uses
    from pipeline.config import load_config

    sets = [o if o.startswith("descriptions.") else f"descriptions.{o}" for o in overrides]
    base = {k: v for k, v in bundle.meta.get("descriptions", {}).items()}
    return load_config(None, descriptions=base).override(*sets).descriptions


def _ask_llm(todo: list[tuple[str, str]], bundle: Any, overrides: Sequence[str], artifacts: str | None) -> dict[str, ClassText]:
    """Describe unknown classes with the descriptions stage's backend, validation and answer cache."""
    # start-up: fsar predict loads only what it uses
    from pipeline.artifacts import ArtifactStore
    from pipeline.descriptions.backends import make_backend
    from pipeline.descriptions.cache import AnswerCache
    from pipeline.descriptions.prompts import load_prompt
    from pipeline.descriptions.asking import ClassItem, describe, kept_attempt
    from pipeline.descriptions.validate import coerce

    cfg = _descriptions_config(bundle, overrides)
    names = ", ".join(repr(c) for c, _ in todo[:5]) + (f" and {len(todo) - 5} more" if len(todo) > 5 else "")
    if cfg.backend == "file":
        raise StageError(
            f"no descriptions for class(es) {names}: the bundle does not know them; pass --descriptions FILE (YAML/JSON "
            f"{{class: [{bundle.num_sub_actions} sentences]}}) or an LLM with --set descriptions.backend=openai|local|vllm"
        )
    backend = make_backend(cfg)
    backend.check()
    items = [ClassItem("predict", cls, display) for cls, display in todo]
    backend.prepare([(i.name, i.action) for i in items])
    prompt = load_prompt(cfg.prompt)
    cache = AnswerCache(ArtifactStore(artifacts)) if cfg.cache and backend.uses_cache else None
    with backend:
        attempts, _ = describe(items, backend, prompt, cfg, bundle.num_sub_actions, cache)
    out = {}
    for item, tries in zip(items, attempts, strict=True):
        kept = kept_attempt(tries)
        if kept is None:
            why = tries[-1].completion.error or ", ".join(tries[-1].flags) if tries else "never asked"
            raise StageError(f"the {cfg.backend} LLM gave no usable description of class {item.name!r} ({why}); pass --descriptions FILE")
        out[item.name] = ClassText(item.action, coerce(kept.sentences, bundle.num_sub_actions), f"llm {cfg.backend}/{backend.model_label}")
    return out
