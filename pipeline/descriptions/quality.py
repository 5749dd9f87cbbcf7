"""The descriptions' quality report where a dataset knows its true scripts (synthetic, or a scripts.yaml).

Every sentence's closeness to the truth (`truth_similarity`) is in the tables; `quality` summarises it
(overall, by split, per class, and what the best candidate would give), and `order_right` says per class
whether its sentences are closer to its own script than to its order partner's. The summary goes to the
stage log and the manifest (`run.quality`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import pandas as pd

from pipeline.datasets import get_dataset
from pipeline.descriptions.exemplars import closeness

__all__ = ["log_quality", "order_right", "quality", "spec_pairs"]

log = logging.getLogger("fsar")


def order_right(table: pd.DataFrame, truth: Mapping[str, list[str]], pairs: Mapping[str, str]) -> dict[str, bool]:
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


def log_quality(q: dict[str, Any]) -> None:
    splits = ", ".join(f"{sp} {v:.2f}" for sp, v in q["by_split"].items())
    log.info(
        f"descriptions: closeness to the true scripts ({q['truth']}): {q['similarity']:.2f} mean word overlap "
        f"({splits}); {100 * q['exact_sentences']:.0f}% of sentences exact; best candidate per class would give "
        f"{q['best_candidate_similarity']:.2f}"
        + (f"; closer to their own script than to their order partner's: {100 * q['order_right']:.0f}% of classes" if q["order_right"] is not None else "")
    )
    right = set(q["order_right_classes"])
    for name, v in q["per_class"].items():
        mark = "  order right" if name in right else ""
        log.info(f"  {v:.2f}  {name}{mark}")


def spec_pairs(config: Any) -> dict[str, str]:
    """The dataset's order pairs (class -> its temporal reverse), where it names them."""
    spec = get_dataset(config.dataset)
    return dict(spec.order_pairs()) if hasattr(spec, "order_pairs") else {}
