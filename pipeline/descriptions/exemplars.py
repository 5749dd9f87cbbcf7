"""Worked examples for the prompt (`descriptions.exemplars`) and the true scripts for the quality report.

    pool = load_exemplars(cfg, config, items, s)      # training-class examples, checked
    pool.select(item, count=3, rule="name_overlap")   # never the described class; nearest last
    truth = truth_scripts(config, s)                  # {class: [sentences]} where the dataset knows them, else None

Sources: a corpus file in the format the `file` backend reads, or `dataset`: the dataset's own scripts
(the synthetic dataset's `script()`, or a `scripts.yaml` beside the videos), of its TRAIN classes only.
A file that describes a val/test class of the dataset is refused (the error names them): examples
come from classes whose descriptions may be known, never from the classes the model is tested on.
The described class itself is never among its own examples.

Selection rules (deterministic): `name_overlap` takes the examples whose names share the most words
with the described class (Jaccard of word sets; ties by name), `first` the first ones in the file.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pipeline.contract import StageError
from pipeline.datasets.synthetic import CLASSES, script
from pipeline.descriptions.backends.corpus_file import read_corpus
from pipeline.descriptions.validate import normalize

__all__ = ["DATASET_KEYWORD", "Exemplar", "ExemplarPool", "closeness", "load_exemplars", "name_overlap", "truth_scripts", "words"]

DATASET_KEYWORD = "dataset"
SCRIPTS_FILE = "scripts.yaml"
_WORD = re.compile(r"[0-9a-z]+")


class _Item(Protocol):
    split: str
    name: str
    action: str


@dataclass(frozen=True)
class Exemplar:
    name: str  # as written in the source (shown in the prompt as the example's action)
    sentences: tuple[str, ...]


def words(text: str) -> set[str]:
    """The set of lower-case words of a text."""
    return set(_WORD.findall(text.lower().replace("_", " ")))


def name_overlap(a: str, b: str) -> float:
    """Jaccard overlap of the word sets of two names (0..1)."""
    wa, wb = words(a), words(b)
    return len(wa & wb) / len(wa | wb) if wa | wb else 0.0


def _dice(a: str, b: str) -> float:
    wa, wb = words(a), words(b)
    return 2 * len(wa & wb) / (len(wa) + len(wb)) if wa or wb else 1.0


def closeness(sentences: Sequence[str], truth: Sequence[str]) -> float:
    """How close S sentences are to the true S, position by position: mean word Dice overlap (0..1)."""
    if not truth:
        return 0.0
    padded = list(sentences)[: len(truth)] + [""] * max(0, len(truth) - len(sentences))
    return sum(_dice(s, t) for s, t in zip(padded, truth, strict=True)) / len(truth)


@dataclass(frozen=True)
class ExemplarPool:
    exemplars: tuple[Exemplar, ...] = ()
    source: str | None = None  # "dataset" or the file's name (no absolute path: it goes into artifacts)
    sha256: str | None = None  # of the examples' content

    def __bool__(self) -> bool:
        return bool(self.exemplars)

    def select(self, item: _Item, count: int, rule: str = "name_overlap") -> list[Exemplar]:
        """Up to `count` examples for one class, never the class itself; the nearest comes last."""
        own = {normalize(item.name), normalize(item.action)}
        pool = [e for e in self.exemplars if normalize(e.name) not in own]
        if rule == "first":
            return pool[:count]
        if rule != "name_overlap":
            raise StageError(f"descriptions.exemplar_rule {rule!r} is unknown; choose name_overlap or first")
        ranked = sorted(pool, key=lambda e: (-name_overlap(item.action, e.name), e.name))[:count]
        return ranked[::-1]

    def identity(self, count: int, rule: str) -> dict[str, Any] | None:
        """What the artifact version hashes about the examples (None: no examples)."""
        return {"source": self.source, "sha256": self.sha256, "count": count, "rule": rule} if self else None


def truth_scripts(config: Any, s: int) -> dict[str, list[str]] | None:
    """The true S sentences of every class where the dataset knows them (synthetic), else None."""
    if config.dataset.name == "synthetic":
        return {c.name: script(c.name, s) for c in CLASSES}
    root = getattr(config.dataset, "video_root", None)
    path = Path(root).expanduser() / SCRIPTS_FILE if root else None
    if path is not None and path.is_file():
        return read_corpus(path, what="scripts", hint=f"{SCRIPTS_FILE} beside the videos")
    return None


def _hash(exemplars: Iterable[Exemplar]) -> str:
    data = [[e.name, list(e.sentences)] for e in exemplars]
    return hashlib.sha256(json.dumps(data, ensure_ascii=False).encode()).hexdigest()


def _unique(entries: Mapping[str, list[str]]) -> list[tuple[str, list[str]]]:
    """Corpus entries once each (read_corpus also files an entry under its label)."""
    seen: set[int] = set()
    out = []
    for name, sentences in entries.items():
        if id(sentences) not in seen:
            seen.add(id(sentences))
            out.append((name, sentences))
    return out


def _listing(names: Sequence[str], limit: int = 12) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def load_exemplars(source: str | None, config: Any, items: Sequence[_Item], s: int) -> ExemplarPool:
    """The checked examples of `descriptions.exemplars` (empty pool when None)."""
    if not source:
        return ExemplarPool()
    split_of: dict[str, tuple[str, str]] = {}
    for item in items:
        for key in (normalize(item.name), normalize(item.action)):
            split_of.setdefault(key, (item.split, item.name))
    if source == DATASET_KEYWORD:
        truth = truth_scripts(config, s)
        if truth is None:
            raise StageError(
                f"descriptions.exemplars=dataset: dataset {config.dataset.name!r} has no scripts of its own "
                f"(no {SCRIPTS_FILE} beside its videos); give a corpus file: descriptions.exemplars=PATH"
            )
        train = [(n, v) for n, v in _unique(truth) if split_of.get(normalize(n), ("train",))[0] == "train"]
        entries, label = train, DATASET_KEYWORD
    else:
        path = Path(source).expanduser()
        entries = _unique(read_corpus(path, what="descriptions.exemplars: file", hint="descriptions.exemplars=PATH or dataset"))
        label = path.name
        held_out = sorted({f"{split_of[normalize(n)][0]}/{split_of[normalize(n)][1]!r}" for n, _ in entries
                           if split_of.get(normalize(n), ("train",))[0] != "train"})  # fmt: skip
        if held_out:
            raise StageError(
                f"descriptions.exemplars: {path.name!r} describes {len(held_out)} val/test classes of dataset "
                f"{config.dataset.name!r} ({_listing(held_out)}); examples must come from training classes only: remove them"
            )
    bad = [f"{n!r} ({len(v)})" for n, v in entries if len(v) != s or not all(normalize(x) for x in v)]
    if bad:
        raise StageError(
            f"descriptions.exemplars: {label!r}: {len(bad)} entries do not have exactly S={s} non-empty sentences: "
            f"{_listing(bad)}; fix them or set protocol.num_sub_actions"
        )
    if not entries:
        raise StageError(f"descriptions.exemplars: {label!r} holds no training-class examples")
    exemplars = tuple(Exemplar(n, tuple(v)) for n, v in entries)
    return ExemplarPool(exemplars, label, _hash(exemplars))
