"""The `file` backend: an existing corpus, so users can bring or hand-edit descriptions.

Formats (read with YAML, which also reads JSON):
- the Task-Adapter++ release layout: `<class>: {label: <class>, sub_act_en_li: [sentence, ...]}`;
- a plain mapping `{<class>: [sentence, ...]}` (JSON or YAML).

A class is found by its raw name, its display name, the entry's `label`, or the same ignoring case,
`_` and spaces. A class the corpus lacks is an error naming it, before any work. The answers go
through the same validation as an LLM's (one attempt: reading the file again gives the same).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from pipeline.contract import StageError
from pipeline.descriptions.backends import Backend, Completion, Request
from pipeline.descriptions.validate import normalize
from pipeline.errors import read_text_file

__all__ = ["FileBackend", "read_corpus"]


def read_corpus(path: str | Path, what: str = "backend 'file': corpus", hint: str = "CORPUS=... / --corpus / descriptions.corpus") -> dict[str, list[str]]:
    """{name: [sentences]} from a corpus file; entries with a `label` are also found under it.

    `what` and `hint` name the file's role in error messages (the corpus, or the exemplars).
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise StageError(f"{what} {str(p)!r} does not exist ({hint})")
    try:
        data = yaml.safe_load(read_text_file(p, what, StageError))
    except yaml.YAMLError as exc:
        raise StageError(f"{what} {str(p)!r} is neither valid YAML nor JSON ({exc})") from None
    if isinstance(data, list):  # [{label: ..., sub_act_en_li: [...]}, ...]
        data = {str(e.get("label")): e for e in data if isinstance(e, dict)}
    if not isinstance(data, dict):
        raise StageError(f"{what} {str(p)!r} must map class names to sentences, got {type(data).__name__}")
    out: dict[str, list[str]] = {}
    for key, entry in data.items():
        label = None
        if isinstance(entry, dict):
            label = entry.get("label")
            entry = entry.get("sub_act_en_li", entry.get("sub_actions"))
        if not isinstance(entry, list):
            raise StageError(
                f"{what.replace(' corpus', '')} entry {key!r} in {str(p)!r} is not a list of sentences "
                f"(expected {{label: ..., sub_act_en_li: [...]}} or [sentences])"
            )
        sentences = [str(s) for s in entry]
        out[str(key)] = sentences
        if label is not None:
            out.setdefault(str(label), sentences)
    return out


class FileBackend(Backend):
    name = "file"
    uses_prompt = False
    uses_cache = False
    max_attempts = 1

    _corpus: dict[str, list[str]] | None = None
    _sha: str = ""
    _found: dict[str, list[str]]

    def check(self) -> None:
        if not self.cfg.corpus:
            raise StageError("backend 'file' needs a corpus: CORPUS=path.yaml|json (make), --corpus (fsar) or descriptions.corpus=PATH")
        path = Path(self.cfg.corpus).expanduser()
        self._corpus = read_corpus(path)
        self._sha = hashlib.sha256(path.read_bytes()).hexdigest()
        self._path = path

    def prepare(self, classes: Sequence[tuple[str, str]]) -> None:
        assert self._corpus is not None, "check() first"
        by_norm: dict[str, list[str]] = {}
        for key, sentences in self._corpus.items():
            by_norm.setdefault(normalize(key), sentences)
        self._found, missing = {}, []
        for name, display in classes:
            for cand in (self._corpus.get(name), self._corpus.get(display), by_norm.get(normalize(name)), by_norm.get(normalize(display))):
                if cand is not None:
                    self._found[name] = cand
                    break
            else:
                missing.append(name)
        if missing:
            shown = ", ".join(repr(m) for m in missing[:20]) + (f" and {len(missing) - 20} more" if len(missing) > 20 else "")
            raise StageError(f"backend 'file': corpus {str(self._path)!r} lacks {len(missing)} of {len(classes)} classes: {shown}")

    def identity(self) -> dict[str, Any]:
        return {"model": f"file:{Path(self.cfg.corpus or '').name}", "corpus_sha256": self._sha}

    def run_info(self) -> dict[str, Any]:
        return {"corpus": str(self._path)}

    def generate(self, requests: Sequence[Request], on_done: Callable[[Request, Completion], None]) -> None:
        for req in requests:
            text = json.dumps({"sub_actions": self._found[req.class_name]}, ensure_ascii=False)
            on_done(req, Completion(text, mode="file"))
