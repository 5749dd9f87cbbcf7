"""Evaluation summaries: mean accuracy with its 95% interval, per-class accuracy, confusion, plots, report.

Input: the per-episode table of the evaluate stage, one row per (episode, method[, descriptions]) with
`accuracy`, `classes` (episode class names), `labels` (true label per query) and `predictions`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["confusion", "mean_ci", "per_class_accuracy", "summarise", "write_plots", "write_report"]

METHOD_LABELS = {
    "task_adapter_pp": "Task-Adapter++ (vis x sem)",
    "visual_only": "visual score only",
    "semantic_only": "semantic score only",
    "clip_prototype": "frozen CLIP prototype (no adapters)",
    "untrained": "Task-Adapter++ before training",
}


def mean_ci(values: Sequence[float]) -> tuple[float, float]:
    """Mean and the 95% interval half-width 1.96 * std / sqrt(n) (population std, as the released code)."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return float("nan"), float("nan")
    return float(arr.mean()), float(1.96 * arr.std() / math.sqrt(arr.size))


def _queries(df: pd.DataFrame) -> pd.DataFrame:
    """One row per query: true and predicted class names."""
    rows = []
    for r in df.itertuples(index=False):
        classes = list(r.classes)
        for t, p in zip(r.labels, r.predictions):
            rows.append((classes[int(t)], classes[int(p)]))
    return pd.DataFrame(rows, columns=["true", "pred"])


def per_class_accuracy(df: pd.DataFrame) -> dict[str, float]:
    q = _queries(df)
    if q.empty:
        return {}
    return {str(k): float(v) for k, v in (q["true"] == q["pred"]).groupby(q["true"]).mean().sort_index().items()}


def confusion(df: pd.DataFrame) -> pd.DataFrame:
    """Counts [true class x predicted class] over every query."""
    q = _queries(df)
    names = sorted(set(q["true"]) | set(q["pred"]))
    return pd.crosstab(q["true"], q["pred"]).reindex(index=names, columns=names, fill_value=0)


def _groups(df: pd.DataFrame) -> list[tuple[dict[str, Any], pd.DataFrame]]:
    keys = [k for k in ("descriptions", "method") if k in df.columns]
    out = []
    for values, part in df.groupby(keys, sort=False):
        values = values if isinstance(values, tuple) else (values,)
        out.append((dict(zip(keys, values)), part))
    return out


def summarise(df: pd.DataFrame, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The summary JSON: per method (and descriptions corpus) mean, 95% interval, n, per-class accuracy."""
    results = []
    for key, part in _groups(df):
        mean, ci = mean_ci(part["accuracy"].tolist())
        res = {**key, "mean": mean, "ci95": ci, "episodes": int(len(part)), "per_class": per_class_accuracy(part)}
        if "pair_asked" in part.columns and part["pair_asked"].sum() > 0:
            res["order_pairs"] = pair_accuracy(part)
        results.append(res)
    return {"results": results, **(extra or {})}


def pair_accuracy(df: pd.DataFrame) -> dict[str, float]:
    """Share of queries whose true class outscores its order partner (chance 0.5), with a binomial 95% interval."""
    right, asked = int(df["pair_right"].sum()), int(df["pair_asked"].sum())
    p = right / asked
    return {"accuracy": p, "ci95": 1.96 * math.sqrt(p * (1 - p) / asked), "queries": asked}


def table_markdown(summary: dict[str, Any]) -> str:
    has_desc = any("descriptions" in r for r in summary["results"])
    has_pairs = any("order_pairs" in r for r in summary["results"])
    head = ("| descriptions " if has_desc else "") + "| method | accuracy (%) | 95% interval | episodes |"
    head += " order pairs (%) |" if has_pairs else ""
    sep = ("|---" if has_desc else "") + "|---|---|---|---|" + ("---|" if has_pairs else "")
    lines = [head, sep]
    for r in summary["results"]:
        desc = f"| {r.get('descriptions', '')} " if has_desc else ""
        line = f"{desc}| {METHOD_LABELS.get(r['method'], r['method'])} | {100 * r['mean']:.2f} | +- {100 * r['ci95']:.2f} | {r['episodes']} |"
        if has_pairs:
            op = r.get("order_pairs")
            line += f" {100 * op['accuracy']:.1f} +- {100 * op['ci95']:.1f} |" if op else " |"
        lines.append(line)
    return "\n".join(lines)


def write_plots(df: pd.DataFrame, summary: dict[str, Any], out: Path) -> list[str]:
    """accuracy.png (bars with 95% intervals) and confusion.png (the full model). Returns the file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    res = summary["results"]
    labels = [f"{r.get('descriptions', '')} {r['method']}".strip() for r in res]
    fig, ax = plt.subplots(figsize=(max(5, 1.3 * len(res)), 3.5))
    ax.bar(range(len(res)), [100 * r["mean"] for r in res], yerr=[100 * r["ci95"] for r in res], capsize=4, color="#4878a8")
    ax.set_xticks(range(len(res)), labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=110)
    plt.close(fig)
    names.append("accuracy.png")

    full = df[df["method"] == "task_adapter_pp"]
    if len(full):
        if "descriptions" in full.columns:
            full = full[full["descriptions"] == full["descriptions"].iloc[0]]
        cm = confusion(full)
        fig, ax = plt.subplots(figsize=(1 + 0.45 * len(cm), 1 + 0.45 * len(cm)))
        ax.imshow(cm.to_numpy(), cmap="Blues")
        ax.set_xticks(range(len(cm)), cm.columns, rotation=90, fontsize=6)
        ax.set_yticks(range(len(cm)), cm.index, fontsize=6)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        fig.tight_layout()
        fig.savefig(out / "confusion.png", dpi=110)
        plt.close(fig)
        names.append("confusion.png")
    return names


def write_report(summary: dict[str, Any], out: Path, title: str, notes: Sequence[str] = ()) -> Path:
    """report.md: the accuracy table, notes, and the plots."""
    body = [f"# {title}", "", table_markdown(summary), ""]
    body += [f"- {n}" for n in notes]
    body += ["", "![accuracy](accuracy.png)", "", "![confusion of the full model](confusion.png)", ""]
    path = out / "report.md"
    path.write_text("\n".join(body), encoding="utf-8")
    (out / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return path
