"""Choosing among a class's candidates: the kept answer of every class, and refusing classes without one.

The kept answer of a class is the best candidate by this deterministic rule:
  1. fewest qa flags, counting `same_as_other_class` when it equals an answer already kept for an
     earlier class (classes in split order);
  2. most agreement with the class's other candidates (mean, over them, of the position-wise word
     overlap, see exemplars.closeness), i.e. the consensus answer;
  3. lowest candidate index.
A class with no usable answer at all is always an error naming it; a kept answer that is invalid stays
with its flags (cut or padded to S sentences), or, under `strict`, the stage fails listing those classes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.contract import StageError
from pipeline.descriptions.asking import Attempt, ClassItem, kept_attempt, no_usable_answer
from pipeline.descriptions.exemplars import closeness
from pipeline.descriptions.validate import FLAGS, coerce, normalize
from pipeline.settings.descriptions import DescriptionsConfig

__all__ = ["Choice", "check_choices", "choose"]

log = logging.getLogger("fsar")


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
        kept = [kept_attempt(attempts[i * candidates + c]) for c in range(candidates)]
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


def _listing(items: Sequence[ClassItem], idx: Sequence[int], why: Mapping[int, str], limit: int = 20) -> str:
    shown = [f"{items[i].split}/{items[i].name!r} ({why[i]})" for i in idx[:limit]]
    more = f"; and {len(idx) - limit} more" if len(idx) > limit else ""
    return "; ".join(shown) + more


def check_choices(items: Sequence[ClassItem], attempts: list[list[Attempt]], choices: Sequence[Choice | None], cfg: DescriptionsConfig,
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
        log.info(f"descriptions: kept {len(flagged)} classes with qa flags: {_listing(items, flagged, why, limit=10)}")
    return flagged
