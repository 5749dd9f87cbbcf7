"""Parse an LLM answer into sentences and check it; every problem becomes a named qa flag.

    sentences = parse_answer('{"sub_actions": ["Grip the brush.", "Pull it through the hair.", "Lower the brush."]}')
    qa_flags(sentences, num_sub_actions=3, action="brush hair", max_chars=200)   # [] = valid

Flags (a valid answer has none):
    unparseable      no sentence could be read from the answer
    wrong_count      not exactly S sentences
    empty            a sentence with no letter or digit
    duplicate        two sentences equal (ignoring case and punctuation)
    too_long         a sentence longer than max_chars
    class_name_only  a sentence that only repeats the class name
    refusal          refusal text ("I can't", "as an AI", ...)
    copies_exemplar  the answer repeats one of the prompt's worked examples (its sentences, in order)
    same_as_other_class  the kept answer equals another class's kept answer (set by the stage)
    request_failed   the request itself failed (after transport retries)
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

__all__ = ["FLAGS", "coerce", "copies", "normalize", "parse_answer", "qa_flags"]

FLAGS = (
    "unparseable", "wrong_count", "empty", "duplicate", "too_long", "class_name_only", "refusal",
    "copies_exemplar", "same_as_other_class", "request_failed",
)  # fmt: skip

_FENCE = re.compile(r"^```[a-zA-Z]*\s*|\s*```$")
_BULLET = re.compile(r"^\s*(?:[-*\u2022]+|\(?\d{1,2}[.):]|(?:step|sub-?action)\s*\d{1,2}\s*(?:[.):-]|$))\s*", re.IGNORECASE)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'])")
_REFUSAL = re.compile(
    r"\b(?:i\s*(?:can['\u2019]?t|cannot|can not|am unable|['\u2019]m unable|won['\u2019]?t be able)|as an ai\b|"
    r"ai (?:language )?model|language model|i['\u2019]m sorry|i am sorry|i apologi[sz]e)",
    re.IGNORECASE,
)


def normalize(text: str) -> str:
    """Lower case, letters and digits only, single spaces: what 'equal' means for sentences."""
    return " ".join(re.sub(r"[^0-9a-z]+", " ", text.lower().replace("_", " ")).split())


def _clean(sentence: str) -> str:
    s = " ".join(str(sentence).split())
    s = _BULLET.sub("", s, count=1).strip()
    if len(s) >= 2 and s[0] == s[-1] and s[0] in "\"'":
        s = s[1:-1].strip()
    return s


def _strings(items: list[Any]) -> list[str]:
    out = []
    for item in items:
        if isinstance(item, dict):  # {"step": 1, "description": "..."}: take the longest string value
            values = [v for v in item.values() if isinstance(v, str)]
            item = max(values, key=len) if values else ""
        out.append(_clean(item) if isinstance(item, (str, int, float)) else "")
    return out


def _from_json(text: str) -> list[str] | None:
    candidates = [text]
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        candidates.append(text[start : end + 1])
    start, end = text.find("["), text.rfind("]")
    if 0 <= start < end:
        candidates.append(text[start : end + 1])
    for cand in candidates:
        try:
            data = json.loads(cand)
        except (json.JSONDecodeError, ValueError):
            continue
        if isinstance(data, list):
            return _strings(data)
        if isinstance(data, dict):
            if isinstance(data.get("sub_actions"), list):
                return _strings(data["sub_actions"])
            lists = [v for v in data.values() if isinstance(v, list)]
            if len(lists) == 1:
                return _strings(lists[0])
    return None


def _from_text(text: str) -> list[str]:
    if "{" in text or "[" in text:  # broken JSON: not a list of sentences either
        return []
    lines = [line for line in text.splitlines() if line.strip()]
    bulleted = [line for line in lines if _BULLET.match(line)]
    if len(bulleted) >= 2:
        return [_clean(line) for line in bulleted]
    if len(lines) >= 2:
        return [_clean(line) for line in lines]
    return [_clean(s) for s in _SENTENCE_END.split(text.strip()) if s.strip()]


def parse_answer(text: str | None) -> list[str]:
    """The sentences of an answer: JSON `{"sub_actions": [...]}` (or close to it), else a plain list."""
    if not text or not text.strip():
        return []
    body = _FENCE.sub("", text.strip()).strip()
    found = _from_json(body)
    return found if found is not None else _from_text(body)


def copies(sentences: Sequence[str], other: Sequence[str]) -> bool:
    """The same sentences in the same order, ignoring case and punctuation."""
    return bool(sentences) and [normalize(s) for s in sentences] == [normalize(s) for s in other]


def qa_flags(
    sentences: list[str], num_sub_actions: int, action: str, max_chars: int, raw: str | None = None,
    exemplars: Sequence[Sequence[str]] = (),
) -> list[str]:  # fmt: skip
    """The problems of an answer, in FLAGS order (empty list: valid); `exemplars`: the prompt's example answers."""
    flags: set[str] = set()
    if any(copies(sentences, e) for e in exemplars):
        flags.add("copies_exemplar")
    if not sentences:
        flags.add("unparseable")
    elif len(sentences) != num_sub_actions:
        flags.add("wrong_count")
    norms = [normalize(s) for s in sentences]
    if any(not n for n in norms):
        flags.add("empty")
    seen = [n for n in norms if n]
    if len(set(seen)) < len(seen):
        flags.add("duplicate")
    if any(len(s) > max_chars for s in sentences):
        flags.add("too_long")
    name = normalize(action)
    if name and any(n == name or n in (f"a video of {name}", f"{name} video") for n in norms):
        flags.add("class_name_only")
    if any(_REFUSAL.search(s) for s in sentences) or (raw is not None and not sentences and _REFUSAL.search(raw)):
        flags.add("refusal")
    return [f for f in FLAGS if f in flags]


def coerce(sentences: list[str], num_sub_actions: int) -> list[str]:
    """Exactly S sentences from a kept invalid answer: empties dropped, extra cut, the last repeated to fill."""
    kept = [s for s in sentences if normalize(s)] or list(sentences)
    if not kept:
        return []
    kept = kept[:num_sub_actions]
    return kept + [kept[-1]] * (num_sub_actions - len(kept))
