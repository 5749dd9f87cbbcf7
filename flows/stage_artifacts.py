"""Prefect artifacts per stage, keyed `<stage>-<dataset>` so the Prefect UI shows each one's history.

Built from the published artifact's files and manifest only (a skipped stage publishes the same
artifact again), by `publish_stage_artifact(stage, ref)` after the stage's task returns:

- descriptions: a table of classes with their QA flags and first sub-action sentence,
- frames: videos ok / failed by reason, frames and bytes stored,
- audit: the report (summary per split, classes sorted by order agreement), and a table artifact
  `audit-<dataset>-table` with one row per class,
- embeddings: prompts and classes cached,
- train: the summary (steps, kept checkpoint, final loss) and the validation points (the live
  progress artifact `train-<dataset>-progress` comes from `pipeline.train.monitor`),
- evaluate: the report (results, protocol, per-class accuracy, lineage) with the report's path.

Outside a Prefect run nothing is published; a failure here is logged and never fails the stage.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.artifacts import ArtifactRef, ArtifactStore
from pipeline.logs import artifact_key, in_prefect_run
from pipeline.secrets import redact_text

__all__ = ["BUILDERS", "publish_stage_artifact", "stage_markdown"]

log = logging.getLogger("fsar")
_MB = 1024 * 1024


def _folder(ref: ArtifactRef) -> Path:
    return ArtifactStore(ref.root).local_path(ref)


def _header(ref: ArtifactRef, what: str) -> list[str]:
    status = "skipped: the artifact already existed" if ref.skipped else "built"
    return [f"# {what}: {ref.dataset}", "", f"artifact `{ref}` ({status}), folder `{ref.path}`", ""]


def _md_table(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return ["_none_"]
    cols = list(rows[0])
    cell = lambda v: str(v).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    return ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)] + ["| " + " | ".join(cell(r[c]) for c in cols) + " |" for r in rows]


def _first_sentence(text: Any) -> str:
    text = str(text or "").strip()
    end = min((i for i in (text.find(". "), text.find("? "), text.find("! ")) if i >= 0), default=-1)
    return text[: end + 1] if end >= 0 else text


def descriptions_markdown(ref: ArtifactRef, manifest: dict[str, Any]) -> str:
    """Classes with their QA flags and first sentence (the first sub-action), flagged classes first."""
    df = pd.read_parquet(_folder(ref) / "descriptions.parquet")
    rows = []
    for (split, cls), part in df.sort_values("k").groupby(["split", "class"], sort=True):
        first = part.iloc[0]
        flags = list(first["qa_flags"]) if "qa_flags" in part.columns and first["qa_flags"] is not None else []
        valid = bool(first["valid"]) if "valid" in part.columns else True
        rows.append({"split": split, "class": cls, "valid": "yes" if valid else "no", "qa flags": ", ".join(flags) or "-",
                     "first sentence": _first_sentence(first["text"])})
    rows.sort(key=lambda r: (r["qa flags"] == "-", r["split"], r["class"]))
    flagged = sum(r["qa flags"] != "-" for r in rows)
    cfg = manifest.get("config", {})
    lines = _header(ref, "descriptions")
    lines += [f"{len(rows)} classes, {flagged} with QA flags; backend {cfg.get('backend', '-')}, model {cfg.get('model', '-')}, "
              f"prompt {cfg.get('prompt', '-')}", ""]
    return "\n".join(lines + _md_table(rows))


def frames_markdown(ref: ArtifactRef, manifest: dict[str, Any]) -> str:
    """Videos ok / failed by reason, frames and bytes stored (the manifest's summary)."""
    s = manifest.get("summary", {})
    lines = _header(ref, "frames")
    rows = [{"what": "videos", "count": s.get("videos", "?")}, {"what": "ok", "count": s.get("ok", "?")},
            {"what": "failed", "count": s.get("failed", "?")}]
    rows += [{"what": f"failed: {reason}", "count": n} for reason, n in (s.get("failed_by_reason") or {}).items()]
    rows += [{"what": f"read by {dec}", "count": n} for dec, n in (s.get("by_decoder") or {}).items()]
    rows += [{"what": "frames stored", "count": s.get("frames_stored", "?")},
             {"what": "MiB stored", "count": f"{s.get('bytes_stored', 0) / _MB:.1f}"}]
    return "\n".join(lines + _md_table(rows))


def embeddings_markdown(ref: ArtifactRef, manifest: dict[str, Any]) -> str:
    """Prompts and classes cached, with the text model."""
    s, cfg = manifest.get("summary", {}), manifest.get("config", {})
    model = cfg.get("model", {})
    rows = [{"what": "prompts cached", "value": s.get("prompts", "?")}, {"what": "classes", "value": s.get("classes", "?")},
            {"what": "text model", "value": f"{model.get('clip', '?')} ({model.get('pretrained') or 'random init'})"},
            {"what": "descriptions", "value": _input(manifest, "descriptions")}]
    return "\n".join(_header(ref, "embeddings") + _md_table(rows))


def _input(manifest: dict[str, Any], name: str) -> str:
    d = manifest.get("inputs", {}).get(name)
    return f"`{ArtifactRef.from_dict(d)}`" if d else "-"


def train_markdown(ref: ArtifactRef, manifest: dict[str, Any]) -> str:
    """Summary (steps, episodes, kept checkpoint, final loss) and the validation points."""
    s = manifest.get("summary", {})
    best = s.get("best") or {}
    rows = [{"what": "steps", "value": s.get("steps", "?")}, {"what": "episodes", "value": s.get("episodes", "?")},
            {"what": "kept checkpoint", "value": f"best.pt, step {best['step']}, val accuracy {100 * best['accuracy']:.1f}%" if best else "best.pt = last (no validation)"},
            {"what": "final loss (mean of last 50 steps)", "value": f"{s['final_loss']:.4f}" if s.get("final_loss") is not None else "-"},
            {"what": "excluded videos", "value": json.dumps(s.get("excluded_videos", {}))},
            {"what": "frames / embeddings", "value": f"{_input(manifest, 'frames')} / {_input(manifest, 'embeddings')}"}]
    lines = _header(ref, "train") + _md_table(rows)
    path = _folder(ref) / "validation.parquet"
    if path.is_file():
        val = pd.read_parquet(path)
        lines += ["", "## Validation", ""]
        lines += _md_table([{"episode": int(r.episode), "accuracy (%)": f"{100 * r.accuracy:.2f}", "best so far": "yes" if r.best else ""}
                            for r in val.itertuples(index=False)])
    lines += ["", "Curves: `curves.png` and `tensorboard --logdir` on the train folder (`events.out.tfevents.fsar`)."]
    return "\n".join(lines)


def prefix_markdown(ref: ArtifactRef, manifest: dict[str, Any]) -> str:
    """What the stored vision prefix covers and what it was made from."""
    s, config = manifest.get("summary", {}), manifest.get("config", {})
    model = config.get("model", {})
    rows = [{"what": "videos", "value": f"{s.get('videos', '?')} of split {s.get('split', '?')}"},
            {"what": "stored dtype", "value": s.get("dtype", "?")},
            {"what": "backbone", "value": f"{model.get('clip', '?')} ({model.get('pretrained') or 'random init'}), "
                                          f"{model.get('vision_adapted_layers', '?')} adapted blocks after the stored ones"},
            {"what": "temporal embedding", "value": "at the input: holds the checkpoint's, reusable by that checkpoint only"
             if model.get("temporal_embedding_at") == "input" else "at the first adapted block: reusable by every checkpoint"},
            {"what": "frames / train", "value": f"{_input(manifest, 'frames')} / {_input(manifest, 'train')}"}]
    return "\n".join(_header(ref, "prefix") + _md_table(rows))


def audit_markdown(ref: ArtifactRef, manifest: dict[str, Any]) -> str:
    """The audit's report (summary per split, classes sorted by order agreement, every candidate) and where it lies."""
    path = _folder(ref) / "report.md"
    text = path.read_text(encoding="utf-8") if path.is_file() else "_no report.md_"
    text = text.split("\n## Plot")[0]  # the image is relative to the artifact folder: name it instead
    return "\n".join([text.rstrip(), "", f"report: `{path}`; plot: `agreement.png` next to it; artifact `{ref}`"])


def audit_table(ref: ArtifactRef) -> list[dict[str, Any]]:
    """One row per audited (class, candidate), lowest order agreement first: the Prefect table artifact's rows."""
    # start-up: the audit package loads torch; the flows import this module at start
    from pipeline.audit.report import flags_of

    df = pd.read_parquet(_folder(ref) / "audit.parquet").sort_values(["order_agreement", "split", "class", "candidate"], kind="stable",
                                                                      na_position="first")
    nan = lambda v, d=3: None if pd.isna(v) else round(float(v), d)  # noqa: E731
    return [{"split": r["split"], "class": r["class"], "candidate": int(r["candidate"]), "kept": bool(r["kept"]),
             "chosen": bool(r["chosen"]), "videos": int(r["videos"]), "order_agreement": nan(r["order_agreement"]),
             "margin": nan(r["margin_mean"], 4), "margin_ci95": nan(r["margin_ci95"], 4), "relevance": nan(r["relevance"]),
             "flags": flags_of(r)} for _, r in df.iterrows()]


def evaluate_markdown(ref: ArtifactRef, manifest: dict[str, Any]) -> str:
    """The report's own text (results, protocol, per-class accuracy, lineage) and where it lies."""
    path = _folder(ref) / "report.md"
    text = path.read_text(encoding="utf-8") if path.is_file() else "_no report.md_"
    text = text.split("\n## Plots")[0]  # the images are relative to the artifact folder: name them instead
    return "\n".join([text.rstrip(), "", f"report: `{path}`; plots: `accuracy.png`, `confusion.png` next to it; artifact `{ref}`"])


BUILDERS: dict[str, Callable[[ArtifactRef, dict[str, Any]], str]] = {
    "descriptions": descriptions_markdown,
    "frames": frames_markdown,
    "audit": audit_markdown,
    "embeddings": embeddings_markdown,
    "train": train_markdown,
    "prefix": prefix_markdown,
    "evaluate": evaluate_markdown,
}


def stage_markdown(stage: str, ref: ArtifactRef) -> str:
    """The Markdown of a stage's Prefect artifact (no Prefect needed: also for tests and the CLI)."""
    return redact_text(BUILDERS[stage](ref, ArtifactStore(ref.root).manifest(ref)))


def publish_stage_artifact(stage: str, ref: ArtifactRef) -> None:
    """A Markdown artifact `<stage>-<dataset>` for a stage's artifact, when inside a Prefect run; never raises."""
    if stage not in BUILDERS or not in_prefect_run():
        return
    try:
        from prefect.artifacts import create_markdown_artifact

        create_markdown_artifact(markdown=stage_markdown(stage, ref), key=artifact_key(stage, ref.dataset),
                                 description=f"fsar {stage} of {ref.dataset}: {ref}")
        if stage == "audit":  # and the per-class figures as a table the Prefect UI can sort
            from prefect.artifacts import create_table_artifact

            create_table_artifact(table=audit_table(ref), key=artifact_key(stage, ref.dataset, "table"),
                                  description=f"fsar audit of {ref.dataset}: {ref}, one row per class and candidate")
    except Exception as exc:  # noqa: BLE001 - a UI nicety must never fail a finished stage
        log.warning("%s: Prefect artifact not published (%s: %s)", stage, type(exc).__name__, exc)
