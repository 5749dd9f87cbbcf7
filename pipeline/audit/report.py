"""What the audit says, in words: the per-split summary, `report.md` and `agreement.png`.

    summary = summarise(table, splits, excluded)   # JSON-ready, the manifest's `summary`
    for line in summary_lines(summary): log.info(line)
    write_report(table, summary, folder, about)    # report.md + agreement.png (classes sorted by agreement)

When `audit.splits` lists test, the summary, every line and the report say that test videos were looked at.
No wall-clock times and no absolute paths: the same audit gives the same bytes in any artifact root.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["FLAGS", "TEST_WARNING", "flags_of", "report_markdown", "summarise", "summary_lines", "write_report"]

FLAGS = ("order_contradicted", "fits_other_class", "too_few_videos")
TEST_WARNING = ("TEST VIDEOS WERE LOOKED AT (audit.splits lists test): figures and choices made from them are not a clean basis "
                "for a test result")
SHOWN_NAMES = 8  # class names listed per flag in a summary line


def _mean(values: pd.Series) -> float | None:
    v = values.dropna()
    return None if v.empty else round(float(v.mean()), 6)


def summarise(table: pd.DataFrame, splits: Sequence[str], excluded: Mapping[str, int]) -> dict[str, Any]:
    """Per split, over each class's kept candidate (the descriptions stage's rule) in its stated order: classes, videos, mean
    order agreement and relevance, the flagged classes; and how many classes the videos chose another candidate or order for."""
    out: dict[str, Any] = {"test_videos_audited": "test" in splits, "excluded_videos": dict(excluded), "splits": {}}
    for split in splits:
        part = table[table["split"] == split]
        kept, chosen = part[part["kept"]], part[part["chosen"]]
        by_videos = chosen[chosen["chosen_by"] == "videos"]
        entry: dict[str, Any] = {
            "classes": int(len(kept)),
            "candidates": int(len(part)),
            "videos": int(kept["videos"].sum()),
            "order_agreement": _mean(kept["order_agreement"]),
            "relevance": _mean(kept["relevance"]),
            "best_candidate_agreement": _mean(part.groupby("class")["order_agreement"].max()),
            "chosen_by_videos": int(len(by_videos)),
            "another_candidate": int((~by_videos["kept"]).sum()),
            "another_order": int(sum(list(o) != sorted(o) for o in by_videos["chosen_order"])),
            "symmetric": sorted(kept.loc[kept["symmetric"], "class"]),
        }
        for flag in FLAGS:
            entry[flag] = sorted(kept.loc[kept[flag], "class"])
        out["splits"][split] = entry
    return out


def _names(names: Sequence[str]) -> str:
    if not names:
        return "0"
    more = f", and {len(names) - SHOWN_NAMES} more" if len(names) > SHOWN_NAMES else ""
    return f"{len(names)} ({', '.join(names[:SHOWN_NAMES])}{more})"


def summary_lines(summary: Mapping[str, Any]) -> list[str]:
    """One line per audited split (the stage logs them; the demo prints them)."""
    lines = []
    for split, e in summary["splits"].items():
        head = f"audit {split}" + (f" ({TEST_WARNING})" if split == "test" else "")
        agree = "n/a" if e["order_agreement"] is None else f"{e['order_agreement']:.2f}"
        best = e.get("best_candidate_agreement")
        also = f", best candidate per class {best:.2f}" if e["candidates"] > e["classes"] and best is not None else ""
        by_videos = (f"; choose=videos: {e['chosen_by_videos']} classes chosen by their videos ({e['another_candidate']} another "
                     f"candidate, {e['another_order']} another order)") if e["chosen_by_videos"] else ""
        lines.append(
            f"{head}: {e['classes']} classes, {e['videos']} videos; order agreement {agree} (mean over classes, kept candidates{also}); "
            f"order contradicted: {_names(e['order_contradicted'])}; fits another class better: {_names(e['fits_other_class'])}; "
            f"too few videos: {_names(e['too_few_videos'])}{by_videos}"
        )
    return lines


def flags_of(row: Any) -> str:
    names = [f for f in FLAGS if bool(row[f])]
    if row["fits_other_class"] and row["closest_other_class"]:
        names[names.index("fits_other_class")] = f"fits_other_class ({row['closest_other_class']})"
    if row["symmetric"]:
        names.append("symmetric")
    return ", ".join(names) or "-"


def _num(value: Any, fmt: str = ".2f") -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


def _order(value: Any) -> str:
    return "-" if value is None else "".join(str(int(i) + 1) for i in value)


def _class_table(rows: pd.DataFrame) -> list[str]:
    lines = ["| split | class | candidate | videos | order agreement | margin (95% interval) | relevance | flags | best order | used order |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for _, r in rows.iterrows():
        margin = "-" if r["videos"] == 0 else f"{r['margin_mean']:+.3f} +- {r['margin_ci95']:.3f}"
        used = f"{_order(r['chosen_order'])} ({r['chosen_by']})" if r["chosen"] else ""
        lines.append(f"| {r['split']} | {r['class']} | {r['candidate']}{' (kept)' if r['kept'] else ''} | {r['videos']} | "
                     f"{_num(r['order_agreement'])} | {margin} | {_num(r['relevance'])} | {flags_of(r)} | {_order(r['best_order'])} | {used} |")
    return lines


def report_markdown(table: pd.DataFrame, summary: Mapping[str, Any], about: Mapping[str, Any], plot: bool = True) -> str:
    """The report: what was audited, the summary lines, the kept candidates sorted by agreement, every candidate."""
    lines = [f"# fsar audit: {about['dataset']}", ""]
    if summary["test_videos_audited"]:
        lines += [f"**{TEST_WARNING}.**", ""]
    lines += [
        f"Classes of split(s) {', '.join(about['splits'])}; up to {about['videos_per_class']} videos per class (a class with fewer "
        f"than {about['min_videos']} is flagged too_few_videos), {about['num_frames']} frames each, {about['num_sub_actions']} "
        f"sentences per description; frozen backbone {about['clip']} ({about['weights']}), no adapters. Chosen candidates: "
        f"descriptions.choose={about['choose']}. The measure and how to read it: docs/audit.md.",
        "",
        "order agreement: share of videos on which the stated order of the sentences fits better than the reversed order "
        "(ties, e.g. a symmetric description, count half); margin: mean fit(stated) - fit(reversed); relevance: share of "
        "(video, other class) pairs where this description fits better than the other class's. Orders are written as "
        "sentence numbers in the stated order (123 = as stated).",
        "",
        *[f"- {line}" for line in summary_lines(summary)],
        "",
        "## Classes, the kept candidate (the descriptions stage's rule), lowest order agreement first",
        "",
        *_class_table(_sorted(table[table["kept"]])),
    ]
    if table.groupby(["split", "class"]).size().max() > 1:
        lines += ["", "## Every candidate", "", *_class_table(table.sort_values(["split", "class", "candidate"], kind="stable"))]
    if plot:
        lines += ["", "## Plot", "", "![order agreement per class](agreement.png)"]
    return "\n".join(lines) + "\n"


def _sorted(rows: pd.DataFrame) -> pd.DataFrame:
    return rows.assign(_a=rows["order_agreement"].fillna(-1.0)).sort_values(["_a", "split", "class"], kind="stable").drop(columns="_a")


def write_report(table: pd.DataFrame, summary: Mapping[str, Any], out: Path, about: Mapping[str, Any]) -> Path:
    """report.md and agreement.png in `out`."""
    agreement_plot(table, Path(out) / "agreement.png", about, bool(summary["test_videos_audited"]))
    path = Path(out) / "report.md"
    path.write_text(report_markdown(table, summary, about), encoding="utf-8")
    return path


SPLIT_COLOURS = {"train": "#4878a8", "val": "#5a9e5a", "test": "#c0504d"}


def agreement_plot(table: pd.DataFrame, path: Path, about: Mapping[str, Any], test: bool) -> Path:
    """One bar per class (its kept candidate's order agreement), sorted; other candidates as dots; flags marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    kept = _sorted(table[table["kept"]]).iloc[::-1]  # y = 0 is the bottom: the lowest agreement on top, read first
    n = len(kept)
    fig, ax = plt.subplots(figsize=(8, 1.4 + 0.28 * n))
    y = np.arange(n)
    values = kept["order_agreement"].fillna(0.0).to_numpy()
    ax.barh(y, values, color=[SPLIT_COLOURS.get(s, "#888888") for s in kept["split"]], height=0.7)
    position = {(s, c): i for i, (s, c) in enumerate(zip(kept["split"], kept["class"]))}
    others = table[~table["kept"]]
    if len(others):
        oy = [position[(s, c)] for s, c in zip(others["split"], others["class"])]
        ax.scatter(others["order_agreement"].fillna(0.0), oy, s=14, color="black", marker="o", zorder=3)
    for yi, (_, r) in zip(y, kept.iterrows()):
        flags = flags_of(r)
        ax.text(1.02, yi, "" if flags == "-" else flags, va="center", fontsize=7, color="#a03030")
    ax.axvline(0.5, color="#555555", ls="--", lw=1)
    ax.set_yticks(y, [f"{c} ({s})" for s, c in zip(kept["split"], kept["class"])], fontsize=7)
    ax.set_xlim(0, 1.0)
    ax.set_xlabel("order agreement (share of videos where the stated order fits better than the reversed; 0.5 = no preference)")
    handles = [Patch(color=colour, label=split) for split, colour in SPLIT_COLOURS.items() if split in set(kept["split"])]
    if len(others):
        handles.append(Line2D([], [], color="black", marker="o", ls="", markersize=4, label="other candidates of the class"))
    ax.legend(handles=handles, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.6 / max(n, 1) - 0.06), ncol=len(handles),
              frameon=False)
    title = f"audit: {about['dataset']}, {about['clip']} frozen, classes sorted by order agreement"
    ax.set_title(title + ("\nTEST VIDEOS WERE LOOKED AT" if test else ""), fontsize=9)
    fig.savefig(path, dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return path
