"""Plots a person can read and a report worth reading: no warnings from 2 to 51 classes, lineage, protocol, no clock."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest

from pipeline.artifacts import ArtifactStore
from pipeline.evaluate import plots, report
from pipeline.evaluate import stage as evaluate
from pipeline.registry import run_stage
from pipeline.train import stage as train

LONG = "pretending to pick something up from the floor slowly and then put it back"


def _episodes(n_classes: int, way: int, episodes: int, corpora=("script",)) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    names = [f"{i:02d} {LONG}" for i in range(n_classes)]
    rows = []
    for corpus in corpora:
        for e in range(episodes):
            classes = list(rng.choice(names, size=way, replace=False))
            labels = list(range(way))
            for method in ("task_adapter_pp", "visual_only", "semantic_only", "clip_prototype"):
                preds = [t if rng.random() < 0.7 else int(rng.integers(way)) for t in labels]
                rows.append({"episode": e, "method": method, "descriptions": corpus, "accuracy": float(np.mean(np.equal(preds, labels))),
                             "classes": classes, "labels": labels, "predictions": preds})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("n_classes, way, corpora", [(2, 2, ("script",)), (51, 5, ("script", "llm"))])
def test_plots_render_without_warnings_for_2_and_51_classes_with_long_names(tmp_path, n_classes, way, corpora):
    df = _episodes(n_classes, way, 60 if n_classes == 2 else 300, corpora)
    summary = report.summarise(df, {"dataset": "hmdb51", "way": way, "shot": 1, "episodes": df["episode"].nunique(), "split": "test"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        names = report.write_plots(df, summary, tmp_path)
    assert names == ["accuracy.png", "confusion.png"]
    assert all((tmp_path / n).stat().st_size > 1000 for n in names)


def test_long_or_many_class_names_become_numbers_with_a_legend():
    ticks, legend = plots.class_ticks(["run", "jump"])
    assert ticks == ["run", "jump"] and legend == []
    ticks, legend = plots.class_ticks([LONG, "jump"])
    assert ticks == ["1", "2"] and legend[0].endswith(LONG)
    ticks, legend = plots.class_ticks([f"c{i}" for i in range(51)])
    assert len(ticks) == 51 and len(legend) == 51


def test_report_tables_name_methods_protocol_and_sort_classes_worst_first():
    df = _episodes(6, 5, 40)
    summary = report.summarise(df, {"dataset": "synthetic", "way": 5, "shot": 1, "query": 1, "episodes": 40, "num_frames": 8,
                                    "num_sub_actions": 3, "task_context": "faithful"})
    md = report.report_markdown(summary, "t")
    assert "Task-Adapter++ (vis x sem)" in md and "task_adapter_pp" not in md
    assert "| 5 | 1 | 1 | 8 | 3 | 40 |" in md  # N K Q T S episodes
    per_class = [ln for ln in md.split("## Per-class")[1].splitlines() if ln.startswith("| 0")]
    values = [float(ln.split("|")[2]) for ln in per_class]
    assert len(values) == 6 and values == sorted(values)
    assert "published" not in md  # no published figure for synthetic: no table, no note


def test_published_figures_appear_for_their_dataset_way_and_shot_with_their_source():
    df = _episodes(6, 5, 10)
    known = report.table_markdown(report.summarise(df, {"dataset": "ssv2_small", "way": 5, "shot": 1, "episodes": 10}))
    assert "| Task-Adapter++ | 63.6 |" in known and "Table 6" in known and "first-party, quoted by a third party" in known
    assert "| TS-FSAR | 60.5 |" in known and "| TS-FSAR | 70.3 |" not in known  # 70.3 is the 5-shot figure
    other_way = report.summarise(df, {"dataset": "ssv2_small", "way": 3, "shot": 1, "episodes": 10})
    assert "published" not in report.table_markdown(other_way)
    assert "no published figure" in report.report_markdown(other_way, "t")


@pytest.fixture(scope="module")
def evaluated(tiny, tmp_path_factory):
    cfg, _, refs = tiny
    store = ArtifactStore(tmp_path_factory.mktemp("report-art"))
    tr = train.run(cfg, refs, store)
    ev = run_stage("evaluate", cfg, {**refs, "train": tr}, store=store)
    return store, {**refs, "train": tr}, ev


def test_report_holds_the_lineage_and_no_clock_or_absolute_path(evaluated):
    store, refs, ev = evaluated
    folder = store.local_path(ev)
    text = (folder / "report.md").read_text()
    summary = json.loads((folder / "summary.json").read_text())
    for stage in ("train", "embeddings", "descriptions", "frames"):
        assert f"`{refs[stage]}`" in text, stage  # stage/dataset/version
    ckpt = store.local_path(refs["train"]) / "best.pt"
    from pipeline.artifacts import sha256_file

    assert sha256_file(ckpt) in text and "`best.pt` of `" in text
    lin = summary["lineage"]["file"]  # the tiny descriptions come from a file: label `file`
    assert lin["checkpoint"]["file"] == "best.pt" and lin["train"] == str(refs["train"])
    assert lin["backbone"]["clip"] == "fsar-micro" and "backbone" in text and "prompt version" in text
    assert "## Per-class accuracy" in text and "## Protocol" in text
    for blob in (text, json.dumps(summary)):
        assert str(store.root) not in blob and "seconds" not in blob and "episodes_per_second" not in blob
    assert "seconds" in store.manifest(ev)["run"]  # timings live in the manifest
