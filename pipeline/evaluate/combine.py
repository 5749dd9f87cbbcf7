"""One evaluate artifact over several evaluations of the same saved episodes (the demo: one per description corpus)."""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from pipeline.artifacts import ArtifactRef, ArtifactStore, Staging
from pipeline.contract import StageError, build_once
from pipeline.evaluate.report import summarise, write_plots, write_report
from pipeline.evaluate.stage import FORMAT_VERSION

__all__ = ["combine"]


def combine(store: ArtifactStore, evaluations: dict[str, ArtifactRef], title: str) -> ArtifactRef:
    """One evaluate artifact holding several evaluations of the same episodes (e.g. one per description corpus).

    Its main table is the inputs' tables stacked (their `descriptions` column tells them apart), with a
    summary, report and plots over all of them; the inputs must share dataset and saved episodes.
    """
    tables, episode_lists = {}, {}
    for name, ref in evaluations.items():
        tables[name] = store.load("evaluate", ref.dataset, ref.version)
        episode_lists[name] = store.load("evaluate", ref.dataset, ref.version, table="episode_list.parquet")
    first = next(iter(episode_lists.values()))
    if any(not first.equals(e) for e in episode_lists.values()):
        raise StageError(f"evaluations {list(evaluations)} were made on different episodes; combine only runs with the same evaluate seed and split")
    dataset = next(iter(evaluations.values())).dataset

    def build(staging: Staging) -> None:
        df = pd.concat(tables.values(), ignore_index=True)
        staging.write_parquet("episodes.parquet", df)
        staging.write_parquet("episode_list.parquet", first)
        base = json.loads((store.local_path(next(iter(evaluations.values()))) / "summary.json").read_text())
        extra = {k: v for k, v in base.items() if k not in ("results", "seconds", "episodes_per_second")}
        lineage: dict[str, Any] = {}
        for ref in evaluations.values():  # each input's lineage, by its descriptions label
            lineage.update(json.loads((store.local_path(ref) / "summary.json").read_text()).get("lineage", {}))
        summary = summarise(df, {**extra, "lineage": lineage, "combined": {name: str(ref) for name, ref in evaluations.items()}})
        write_plots(df, summary, staging.dir)
        write_report(summary, staging.dir, title, [f"combines {', '.join(f'{k} ({v})' for k, v in evaluations.items())}; same saved episodes"])
        staging.extra["summary"] = {f"{r['method']}/{r.get('descriptions')}": [r["mean"], r["ci95"]] for r in summary["results"]}

    return build_once(
        store, "evaluate", dataset, config={"combine": sorted(evaluations)}, inputs=evaluations, build=build,
        main="episodes.parquet", format_version=FORMAT_VERSION,
    )
