"""Evaluation summaries: mean accuracy with its 95% interval, per-class accuracy, confusion, lineage, plots, report.

Input: the per-episode table of the evaluate stage, one row per (episode, method[, descriptions]) with
`accuracy`, `classes` (episode class names), `labels` (true label per query) and `predictions`.

`report.md` (and the Prefect evaluate artifact, built from the same `report_markdown`): the results
table, the protocol, per-class accuracy of the full model (worst first), the lineage (input artifacts
as `stage/dataset/version`, the checkpoint file relative to its artifact with its sha256, backbone,
LLM, prompt version) and the plots. No wall-clock times and no absolute paths: the same evaluation
gives the same bytes in any artifact root.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.artifacts import MANIFEST, ArtifactRef, ArtifactStore, sha256_file
from pipeline.evaluate.plots import METHOD_LABELS, accuracy_plot, confusion_plot, method_label, plot_title
from pipeline.evaluate.published import published_for, published_markdown
from pipeline.secrets import redact, redact_text

__all__ = [
    "METHOD_LABELS",
    "collect_lineage",
    "confusion",
    "mean_ci",
    "per_class_accuracy",
    "report_markdown",
    "summarise",
    "table_markdown",
    "write_plots",
    "write_report",
]

BENCHMARKS = ("hmdb51", "ucf101", "kinetics100", "ssv2_small", "ssv2_full")  # datasets the paper reports on


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
    """The results table: one row per (descriptions, method); below it the published figures for the same dataset,
    way and shot, with their sources (`pipeline.evaluate.published`), when any are known."""
    has_desc = any("descriptions" in r for r in summary["results"])
    has_pairs = any("order_pairs" in r for r in summary["results"])
    head = ("| descriptions " if has_desc else "") + "| method | accuracy (%) | 95% interval | episodes |"
    head += " order pairs (%) |" if has_pairs else ""
    sep = ("|---" if has_desc else "") + "|---|---|---|---|" + ("---|" if has_pairs else "")
    lines = [head, sep]
    for r in summary["results"]:
        desc = f"| {r.get('descriptions', '')} " if has_desc else ""
        line = f"{desc}| {method_label(r['method'])} | {100 * r['mean']:.2f} | +- {100 * r['ci95']:.2f} | {r['episodes']} |"
        if has_pairs:
            op = r.get("order_pairs")
            line += f" {100 * op['accuracy']:.1f} +- {100 * op['ci95']:.1f} |" if op else " |"
        lines.append(line)
    published = published_for(summary)
    if published:
        lines += ["", published_markdown(published), "", "published: each under its own protocol (docs/results.md), not "
                  "these episodes; a figure beside ours compares like with like only under the same protocol and scores"]
    return "\n".join(lines)


def protocol_markdown(summary: Mapping[str, Any]) -> str:
    """N, K, Q, T, S, episodes, split, seed, task context (and scores, query order unless fsar's) as a one-row table."""
    keys = [("way", "N (way)"), ("shot", "K (shot)"), ("query", "Q (queries per class)"), ("num_frames", "T (frames)"),
            ("num_sub_actions", "S (sub-actions)"), ("episodes", "episodes"), ("split", "split"), ("seed", "seed"),
            ("task_context", "task context"), ("scores", "scores"), ("query_order", "query order")]
    present = [(k, name) for k, name in keys if summary.get(k) is not None]
    return "\n".join(["| " + " | ".join(n for _, n in present) + " |", "|" + "---|" * len(present),
                      "| " + " | ".join(str(summary[k]) for k, _ in present) + " |"])


def per_class_markdown(summary: Mapping[str, Any], method: str = "task_adapter_pp") -> str:
    """Per-class accuracy (%) of one method, one column per descriptions corpus, worst first (by the first column)."""
    rows = [r for r in summary["results"] if r["method"] == method and r.get("per_class")]
    if not rows:
        return "_no per-class accuracy_"
    cols = [str(r.get("descriptions", "accuracy")) for r in rows]
    names = sorted(set().union(*(r["per_class"] for r in rows)), key=lambda c: (rows[0]["per_class"].get(c, math.inf), c))
    head = "| class | " + " | ".join(f"{c} (%)" if len(rows) > 1 else "accuracy (%)" for c in cols) + " |"
    lines = [head, "|---|" + "---|" * len(rows)]
    for name in names:
        vals = [f"{100 * r['per_class'][name]:.1f}" if name in r["per_class"] else "" for r in rows]
        lines.append(f"| {name} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------ lineage
def _ref_str(d: Mapping[str, Any] | ArtifactRef | None) -> str | None:
    if d is None:
        return None
    ref = d if isinstance(d, ArtifactRef) else ArtifactRef.from_dict(d)
    return str(ref)


def _manifest_of(ref: ArtifactRef | None) -> dict[str, Any]:
    if ref is None:
        return {}
    try:
        return ArtifactStore(ref.root).manifest(ref)
    except Exception:  # noqa: BLE001 - lineage is best effort: a missing manifest leaves its fields empty
        return {}


def _file_in_artifact(path: Path) -> tuple[str | None, str]:
    """('stage/dataset/version', file name) when `path` lies in a published artifact folder, else (None, file name)."""
    folder = path.parent / MANIFEST
    if folder.is_file():
        try:
            m = json.loads(folder.read_text())
            return f"{m['stage']}/{m['dataset']}/{m['version']}", path.name
        except (ValueError, KeyError):
            pass
    return None, path.name


def _weights(pretrained: str | None) -> str:
    """The backbone weights without absolute paths: an open_clip tag, `stage/dataset/version/file`, or a file name."""
    if not pretrained:
        return "none (random init)"
    path = Path(str(pretrained)).expanduser()
    if path.suffix or path.is_file():
        artifact, name = _file_in_artifact(path)
        return f"{artifact}/{name}" if artifact else f"file {name}"
    return str(pretrained)


def collect_lineage(cfg: Any, inputs: Mapping[str, ArtifactRef], checkpoint: Path, ckpt: Mapping[str, Any]) -> dict[str, Any]:
    """What this evaluation scored, read from the input artifacts' manifests: no absolute paths, no clock."""
    emb = inputs.get("embeddings")
    emb_manifest = _manifest_of(emb)
    desc_dict = emb_manifest.get("inputs", {}).get("descriptions")
    desc_ref = ArtifactRef.from_dict(desc_dict) if desc_dict else None
    desc_cfg = _manifest_of(desc_ref).get("config", {})
    artifact, name = _file_in_artifact(Path(checkpoint))
    return {
        "train": _ref_str(inputs.get("train")) if not cfg.evaluate.checkpoint else artifact,
        "checkpoint": {"artifact": artifact, "file": name, "sha256": sha256_file(checkpoint), "step": ckpt.get("step"),
                       "val_accuracy": ckpt.get("val_accuracy"),
                       **({"val_split": ckpt["val_split"]} if "val_split" in ckpt else {})},  # picked on another split than val
        "embeddings": _ref_str(emb),
        "descriptions": _ref_str(desc_ref),
        "frames": _ref_str(inputs.get("frames")),
        "backbone": {"clip": cfg.model.clip, "weights": _weights(cfg.model.pretrained),
                     "weights_sha256": emb_manifest.get("config", {}).get("pretrained_checksum")},
        "llm": {"backend": desc_cfg.get("backend"), "model": desc_cfg.get("model"), "prompt_version": desc_cfg.get("prompt")},
    }


def _lineage_cells(lin: Mapping[str, Any]) -> dict[str, str]:
    ck, bb, llm = lin.get("checkpoint") or {}, lin.get("backbone") or {}, lin.get("llm") or {}
    where = f" of `{ck['artifact']}`" if ck.get("artifact") else " (given with evaluate.checkpoint)"
    step = f", step {ck['step']}" if ck.get("step") is not None else ""
    split = ck.get("val_split", "val")
    picked = "" if split == "val" else f" (picked on {split}: optimistic)"
    val = f", {split} accuracy {100 * ck['val_accuracy']:.1f}%{picked}" if ck.get("val_accuracy") is not None else ""
    code = lambda v: f"`{v}`" if v else "-"  # noqa: E731
    return {
        "train artifact": code(lin.get("train")),
        "checkpoint": f"`{ck.get('file', '?')}`{where}{step}{val}",
        "checkpoint sha256": code(ck.get("sha256")),
        "embeddings": code(lin.get("embeddings")),
        "descriptions": code(lin.get("descriptions")),
        "frames": code(lin.get("frames")),
        "backbone": f"{bb.get('clip', '?')}, weights {bb.get('weights', '?')}" + (f" (sha256 `{bb['weights_sha256'][:16]}...`)" if bb.get("weights_sha256") else ""),
        "LLM backend / model": f"{llm.get('backend') or '-'} / {llm.get('model') or '-'}",
        "prompt version": llm.get("prompt_version") or "- (no prompt: descriptions from a file)",
    }


def lineage_markdown(lineage: Mapping[str, Mapping[str, Any]]) -> str:
    """One row per lineage field, one column per descriptions corpus."""
    if not lineage:
        return "_no lineage recorded_"
    cells = {name: _lineage_cells(lin) for name, lin in lineage.items()}
    fields = list(next(iter(cells.values())))
    head = "| | " + " | ".join(cells) + " |" if len(cells) > 1 else "| what | value |"
    lines = [head, "|---|" + "---|" * len(cells)]
    lines += [f"| {f} | " + " | ".join(c[f] for c in cells.values()) + " |" for f in fields]
    return "\n".join(lines)


# ------------------------------------------------------------------ files
def write_plots(df: pd.DataFrame, summary: dict[str, Any], out: Path) -> list[str]:
    """accuracy.png (every method) and confusion.png (the full model, one panel per corpus). Returns the file names."""
    out = Path(out)
    accuracy_plot(summary, out / "accuracy.png")
    names = ["accuracy.png"]
    full = df[df["method"] == "task_adapter_pp"]
    if len(full):
        corpora = list(dict.fromkeys(full["descriptions"])) if "descriptions" in full.columns else [None]
        panels = {str(c): confusion(full if c is None else full[full["descriptions"] == c]) for c in corpora}
        names_all = sorted(set().union(*(set(p.index) for p in panels.values())))
        panels = {k: p.reindex(index=names_all, columns=names_all, fill_value=0) for k, p in panels.items()}
        confusion_plot(panels, out / "confusion.png", plot_title(summary, f"confusion of {method_label('task_adapter_pp')}", "\n"))
        names.append("confusion.png")
    return names


def report_markdown(summary: Mapping[str, Any], title: str, notes: Sequence[str] = (), plots: bool = True) -> str:
    """The report's Markdown: results, protocol, per-class accuracy, lineage (and the plots when `plots`)."""
    body = [f"# {title}", "", "## Results", "", table_markdown(dict(summary)), ""]
    body += [f"- {n}" for n in notes]
    if summary.get("dataset") in BENCHMARKS and not published_for(summary):
        body.append("- no published figure for this dataset, way and shot is recorded (`pipeline/evaluate/published.py`)")
    body += ["", "## Protocol", "", protocol_markdown(summary), ""]
    body += ["## Per-class accuracy of the full model (worst first)", "", per_class_markdown(summary), ""]
    body += ["## Lineage", "", lineage_markdown(summary.get("lineage") or {}), ""]
    if plots:
        body += ["## Plots", "", "![accuracy](accuracy.png)", "", "![confusion of the full model](confusion.png)", ""]
    return "\n".join(body)


def write_report(summary: dict[str, Any], out: Path, title: str, notes: Sequence[str] = ()) -> Path:
    """report.md and summary.json (no wall-clock fields: keep those in the manifest's `run`)."""
    path = Path(out) / "report.md"
    path.write_text(redact_text(report_markdown(summary, title, notes)), encoding="utf-8")  # no secret in a report
    (Path(out) / "summary.json").write_text(json.dumps(redact(summary), indent=2), encoding="utf-8")
    return path
