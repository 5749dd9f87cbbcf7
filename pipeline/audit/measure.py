"""Per-class audit figures from frozen features: the order agreement, its margin, relevance, flags and the choice.

    result = audit_classes(cands, videos, prompt_rows, text, frames, settings)
    result.table      # one row per (class, candidate): AUDIT_SCHEMA
    result.per_video  # one row per (class, candidate, video): the stated and reversed order's fit

What each figure means, with its formula: docs/audit.md. Everything here is arithmetic on features the stage has
already computed (each frame and each sentence through the frozen towers once).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
from torch import Tensor

from pipeline.audit.alignment import best_option, cosines, monotone_fit, order_fits, orders

__all__ = ["AUDIT_SCHEMA", "AuditResult", "Settings", "VIDEO_SCHEMA", "audit_classes", "mean_ci"]

AUDIT_SCHEMA = pa.schema(
    [
        ("dataset", pa.string()),
        ("split", pa.string()),
        ("class", pa.string()),
        ("candidate", pa.int32()),  # the descriptions stage's candidate index
        ("kept", pa.bool_()),  # the descriptions stage's rule kept this candidate
        ("chosen", pa.bool_()),  # the candidate embeddings, training and evaluation use (descriptions.choose)
        ("chosen_by", pa.string()),  # rule | videos (on the chosen row; null elsewhere)
        ("chosen_order", pa.list_(pa.int32())),  # order of the sentences used (indices into `sentences`; null: not chosen)
        ("sentences", pa.list_(pa.string())),  # the candidate's S sentences in its stated order
        ("symmetric", pa.bool_()),  # the sentences read the same reversed: their order cannot be judged (agreement 0.5)
        ("videos", pa.int32()),  # videos audited
        ("test_videos", pa.bool_()),  # these are test videos (audit.splits lists test)
        ("order_agreement", pa.float64()),  # share of videos on which the stated order fits better than the reversed (ties: half)
        ("margin_mean", pa.float64()),  # mean over videos of fit(stated) - fit(reversed)
        ("margin_ci95", pa.float64()),  # 95% interval half-width of that mean: 1.96 std / sqrt(videos)
        ("relevance", pa.float64()),  # share of (video, other class) where this description fits better than the other class's (ties: half)
        ("order_contradicted", pa.bool_()),  # the reversed order fits better on most videos
        ("fits_other_class", pa.bool_()),  # another class's description fits these videos better, on average
        ("closest_other_class", pa.string()),  # the other class whose description fits these videos best
        ("too_few_videos", pa.bool_()),  # fewer than audit.min_videos videos audited
        ("stated_fit", pa.float64()),  # mean fit of the stated order
        ("best_order", pa.list_(pa.int32())),  # the order with the best mean fit among those scored
        ("best_order_fit", pa.float64()),
        ("orders_scored", pa.int32()),  # S! when S <= audit.all_orders_up_to, else 2 (stated and reversed)
    ]
)

VIDEO_SCHEMA = pa.schema(
    [
        ("split", pa.string()),
        ("class", pa.string()),
        ("candidate", pa.int32()),
        ("video_id", pa.string()),
        ("stated_fit", pa.float64()),
        ("reversed_fit", pa.float64()),
        ("margin", pa.float64()),
    ]
)


@dataclass(frozen=True)
class Settings:
    dataset: str
    choose: str  # descriptions.choose: rule | videos
    min_videos: int
    all_orders_up_to: int


@dataclass
class AuditResult:
    table: pd.DataFrame  # AUDIT_SCHEMA
    per_video: pd.DataFrame  # VIDEO_SCHEMA


def mean_ci(values: np.ndarray) -> tuple[float, float]:
    """Mean and 95% interval half-width 1.96 * std / sqrt(n) (population std, as evaluation reports); nan when empty."""
    if values.size == 0:
        return math.nan, math.nan
    return float(values.mean()), float(1.96 * values.std() / math.sqrt(values.size))


def _share(wins: Tensor, ties: Tensor) -> float:
    return float(wins.float().mean() + 0.5 * ties.float().mean())


def audit_classes(cands: pd.DataFrame, videos: Mapping[tuple[str, str], Sequence[str]], prompt_rows: Mapping[tuple[str, str, int], list[int]],
                  text: Tensor, frames: Tensor, video_rows: Mapping[str, int], settings: Settings) -> AuditResult:  # fmt: skip
    """Audit every candidate of the classes in `videos` ({(split, class): audited video ids}).

    `cands`: every usable candidate of every class (split, class, candidate, kept, sentences); `prompt_rows`:
    (split, class, candidate) -> the rows of its S sentence prompts in `text` (P, E); `frames` (V, T, E) holds the
    audited videos' frozen frame features at `video_rows[video_id]`.
    """
    kept = cands[cands["kept"]].reset_index(drop=True)
    kept_rows = torch.as_tensor([prompt_rows[(s, c, int(j))] for s, c, j in zip(kept["split"], kept["class"], kept["candidate"])])  # (C, S)
    names = kept["class"].tolist()
    sim_all = cosines(text, frames)  # (V, P, T): every audited frame against every sentence, once
    by_class = {key: part.sort_values("candidate") for key, part in cands.groupby(["split", "class"], sort=False)}
    rows: list[dict] = []
    per_video: list[dict] = []
    for (split, cls), ids in videos.items():
        mine = by_class[(split, cls)]
        sim = sim_all[[video_rows[v] for v in ids]]  # (n, P, T)
        others = [i for i, name in enumerate(names) if name != cls]
        other_fit = monotone_fit(sim[:, kept_rows[others]])  # (n, C-1): every other class's kept description, stated order
        class_rows, options = [], []
        for cand, is_kept, sentences in zip(mine["candidate"], mine["kept"], mine["sentences"]):
            row, fits, order_list, reverse = _candidate(sim[:, prompt_rows[(split, cls, int(cand))]], other_fit, [names[i] for i in others], settings)
            row.update(dataset=settings.dataset, split=split, **{"class": cls}, candidate=int(cand), kept=bool(is_kept),
                       sentences=list(sentences), symmetric=list(sentences) == list(sentences)[::-1], videos=len(ids),
                       test_videos=split == "test", too_few_videos=len(ids) < settings.min_videos)
            class_rows.append(row)
            means = fits.mean(0) if len(ids) else torch.full((len(order_list),), -math.inf)
            options += [(not is_kept, o, len(class_rows) - 1, order_list[o], float(means[o])) for o in range(len(order_list))]
            per_video += [{"split": split, "class": cls, "candidate": int(cand), "video_id": v, "stated_fit": float(a),
                           "reversed_fit": float(b), "margin": float(a - b)} for v, a, b in zip(ids, fits[:, 0], reverse)]
        _choose(class_rows, options, settings)
        rows += class_rows
    table = pd.DataFrame(rows, columns=AUDIT_SCHEMA.names)
    return AuditResult(table, pd.DataFrame(per_video, columns=VIDEO_SCHEMA.names))


def _candidate(sim: Tensor, other_fit: Tensor, other_names: list[str], settings: Settings
               ) -> tuple[dict, Tensor, list[tuple[int, ...]], Tensor]:  # fmt: skip
    """The figures of one candidate from its (n, S, T) cosines; also its (n, O) fits, the orders scored and the (n,) fits of
    the reversed order (the stated one's when S = 1)."""
    n, s = sim.shape[0], sim.shape[1]
    order_list = orders(s, settings.all_orders_up_to)
    fits = order_fits(sim, order_list)  # (n, O)
    stated = fits[:, 0]
    reverse = fits[:, 1] if len(order_list) > 1 else stated  # `orders` lists the reversed order second
    margin = (stated - reverse).double().numpy()
    row: dict = {"orders_scored": len(order_list)}
    if n == 0:
        return {**row, "order_agreement": math.nan, "margin_mean": math.nan, "margin_ci95": math.nan, "relevance": math.nan,
                "order_contradicted": False, "fits_other_class": False, "closest_other_class": None, "stated_fit": math.nan,
                "best_order": None, "best_order_fit": math.nan}, fits, order_list, reverse
    row["order_agreement"] = _share(stated > reverse, stated == reverse)
    row["margin_mean"], row["margin_ci95"] = mean_ci(margin)
    row["order_contradicted"] = bool((stated < reverse).float().mean() > 0.5)
    if other_names:
        row["relevance"] = _share(stated[:, None] > other_fit, stated[:, None] == other_fit)
        beaten = (other_fit > stated[:, None]).float().mean(0)  # (C-1,) share of videos on which that class's description fits better
        best = best_option(beaten + 1e-3 * other_fit.mean(0))  # the most often better one (ties: the better mean fit)
        row["closest_other_class"] = other_names[best]
        row["fits_other_class"] = bool(beaten[best] > 0.5)
    else:
        row.update(relevance=math.nan, closest_other_class=None, fits_other_class=False)
    means = fits.mean(0)
    best = best_option(means)
    row.update(stated_fit=float(means[0]), best_order=list(order_list[best]), best_order_fit=float(means[best]))
    return row, fits, order_list, reverse


def _choose(class_rows: list[dict], options: list[tuple], settings: Settings) -> None:
    """Mark the chosen candidate (and order) of one class: the rule's, or under choose=videos the option with the best mean fit
    (ties: the kept candidate, then its stated order, first)."""
    for row in class_rows:
        row.update(chosen=False, chosen_by=None, chosen_order=None)
    by_videos = settings.choose == "videos" and class_rows and not class_rows[0]["too_few_videos"]
    if by_videos:
        ranked = sorted(options, key=lambda o: (o[0], o[2], o[1]))  # kept first, then candidate index, then order index
        pick = ranked[best_option(torch.tensor([o[4] for o in ranked], dtype=torch.float64))]
        row, order = class_rows[pick[2]], list(pick[3])
    else:
        row = next((r for r in class_rows if r["kept"]), class_rows[0])
        order = list(range(len(row["sentences"])))
    row.update(chosen=True, chosen_by="videos" if by_videos else "rule", chosen_order=order)
