"""Evaluation plots a person can read: `accuracy.png` (methods as in the table) and `confusion.png`.

accuracy.png: one horizontal bar per (descriptions corpus, method) with its 95% interval and value,
the chance line 1/N, and a title naming the dataset, N-way K-shot and the episode count.
confusion.png: scikit-learn's `ConfusionMatrixDisplay` of the full model, rows normalised to % of the
true class's queries, one panel per descriptions corpus, with a colour bar. Class names are wrapped
when there are few and short ones; otherwise the axes show numbers and a legend maps them to names,
so the plot stays readable from 2 to 100 classes. Figures are saved with `bbox_inches="tight"`
(no tight-layout warnings) and no software metadata, so the PNG bytes depend only on the data.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["METHOD_LABELS", "accuracy_plot", "class_ticks", "confusion_plot", "method_label", "plot_title"]

METHOD_LABELS = {
    "task_adapter_pp": "Task-Adapter++ (vis x sem)",
    "visual_only": "visual score only",
    "semantic_only": "semantic score only",
    "clip_prototype": "frozen CLIP prototype (no adapters)",
    "untrained": "Task-Adapter++ before training",
    "by_support": "Task-Adapter++, descriptions chosen by the supports",
    "task_adapter_pp_queries_shuffled": "Task-Adapter++, queries shuffled",
    "task_adapter_pp_queries_by_class": "Task-Adapter++, queries in class order",
}
CORPUS_COLOURS = ("#4878a8", "#e08a3c", "#5a9e5a", "#9467bd", "#8c564b")
NAMES_MAX_CLASSES = 16  # up to this many classes with short names: names on the axes
NAME_WRAP = 14  # wrap names longer than this on the axes
NAME_MAX_CHARS = 42  # a longer name (more than three wrapped lines) switches the axes to numbers + legend


def method_label(method: str) -> str:
    return METHOD_LABELS.get(method, method)


def plot_title(summary: dict[str, Any], what: str, sep: str = ": ") -> str:
    """'<what><sep><dataset>, N-way K-shot, <episodes> episodes of split S' from the summary's protocol fields."""
    parts = [f"{what}{sep}{summary.get('dataset', '?')}"]
    if summary.get("way") is not None:
        parts.append(f"{summary['way']}-way {summary.get('shot', '?')}-shot")
    if summary.get("episodes") is not None:
        split = f" of split {summary['split']}" if summary.get("split") else ""
        parts.append(f"{summary['episodes']:,} episodes{split}")
    return ", ".join(parts)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    fig.savefig(path, dpi=110, bbox_inches="tight", metadata={"Software": None})
    _pyplot().close(fig)
    return path


def accuracy_plot(summary: dict[str, Any], path: Path) -> Path:
    """Horizontal bars of mean accuracy (%) with 95% intervals, values on the bars, chance line, titled."""
    plt = _pyplot()
    res = summary["results"]
    corpora = list(dict.fromkeys(r.get("descriptions") for r in res))
    labels = [method_label(r["method"]) if len(corpora) < 2 else f"{r.get('descriptions')}: {method_label(r['method'])}" for r in res]
    colours = [CORPUS_COLOURS[corpora.index(r.get("descriptions")) % len(CORPUS_COLOURS)] for r in res]
    means = np.array([100 * r["mean"] for r in res])
    cis = np.array([100 * r["ci95"] for r in res])
    y = np.arange(len(res))[::-1]
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.42 * len(res)))
    ax.barh(y, means, xerr=cis, color=colours, capsize=3, height=0.65, error_kw={"elinewidth": 1})
    for yi, m, c in zip(y, means, cis):
        ax.text(min(m + c + 1.5, 101), yi, f"{m:.1f} ± {c:.1f}", va="center", fontsize=8)
    ax.set_yticks(y, labels, fontsize=9)
    ax.set_xlim(0, 115)
    ax.set_xticks(range(0, 101, 20))
    ax.set_xlabel("accuracy (%), 95% interval")
    if summary.get("way"):
        chance = 100 / summary["way"]
        ax.axvline(chance, color="#555555", ls="--", lw=1)
        ax.text(chance + 0.8, y.max() + 0.55, f"chance {chance:.0f}%", fontsize=8, color="#555555", va="bottom")
    ax.set_ylim(-0.6, len(res) - 0.1)
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(plot_title(summary, "accuracy"), fontsize=10)
    return _save(fig, Path(path))


def class_ticks(names: Sequence[str]) -> tuple[list[str], list[str]]:
    """(tick labels, legend lines): wrapped names for few short names, else numbers and a 'number: name' legend."""
    names = [str(n) for n in names]
    if len(names) <= NAMES_MAX_CLASSES and all(len(n) <= NAME_MAX_CHARS for n in names):
        return [textwrap.fill(n.replace("_", " "), NAME_WRAP, break_long_words=True) for n in names], []
    return [str(i + 1) for i in range(len(names))], [f"{i + 1:>3}: {n}" for i, n in enumerate(names)]


def _sizes(n: int, named: bool) -> tuple[float, int, int]:
    """(cell size in inches, tick font size, value font size or 0 for no values in the cells)."""
    if n <= 6:
        return (0.9 if named else 0.7), 8, 10
    if n <= 20:
        return (0.6 if named else 0.42), 7, 7 if n <= 12 else 6
    return (0.22, 6, 0) if n <= 60 else (0.15, 5, 0)


def confusion_plot(panels: dict[str, pd.DataFrame], path: Path, title: str) -> Path:
    """Row-normalised confusion matrices (% of the true class's queries), one panel per corpus, colour bar, legend."""
    from sklearn.metrics import ConfusionMatrixDisplay

    plt = _pyplot()
    first = next(iter(panels.values()))
    n = len(first)
    ticks, legend = class_ticks(list(first.index))
    cell, tick_font, value_font = _sizes(n, not legend)
    side = max(2.6, 0.8 + cell * n)
    fig, axes = plt.subplots(1, len(panels), figsize=(side * len(panels) + 1.3, side + 0.9), squeeze=False, layout="constrained")
    for ax, (name, cm) in zip(axes[0], panels.items()):
        counts = cm.to_numpy(dtype=np.float64)
        rates = 100 * counts / np.maximum(counts.sum(1, keepdims=True), 1)  # (true, predicted) in %
        disp = ConfusionMatrixDisplay(rates, display_labels=ticks)
        disp.plot(ax=ax, cmap="Blues", include_values=value_font > 0, values_format=".0f", colorbar=False,
                  im_kw={"vmin": 0, "vmax": 100}, text_kw={"fontsize": value_font or 1})
        ax.set_xticks(range(n), ticks, rotation=90 if legend else 45, ha="center" if legend else "right",
                      rotation_mode="default" if legend else "anchor", fontsize=tick_font)
        ax.set_yticks(range(n), ticks, fontsize=tick_font)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        queries = int(counts.sum())
        ax.set_title(f"{name}: {queries:,} queries" if len(panels) > 1 else f"{queries:,} queries", fontsize=9)
    bar = fig.colorbar(disp.im_, ax=axes[0].tolist(), shrink=0.8)
    bar.set_label("% of the true class's queries")
    fig.suptitle(title, fontsize=10 if side < 8 else 13)
    if legend:
        _legend(fig, legend)
    return _save(fig, Path(path))


def _legend(fig: Any, lines: Sequence[str], size: float = 7) -> None:
    """'number: name' lines in columns below the axes (kept by bbox_inches='tight'); column width measured, not guessed."""
    renderer = fig.canvas.get_renderer()
    probe = fig.text(0, 0, max(lines, key=len), fontsize=size, family="monospace")
    col_in = probe.get_window_extent(renderer).width / fig.dpi + 0.3
    probe.remove()
    width_in = fig.get_size_inches()[0]
    cols = max(1, min(len(lines), int(width_in // col_in)))
    rows = math.ceil(len(lines) / cols)
    for c in range(math.ceil(len(lines) / rows)):
        chunk = lines[c * rows : (c + 1) * rows]
        fig.text(0.01 + c * col_in / width_in, -0.01, "\n".join(chunk), fontsize=size, va="top", ha="left", family="monospace")
