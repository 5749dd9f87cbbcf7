"""The demo's last step (bundle + `fsar predict` on held-out clips), called directly on the tiny trained pipeline."""

from __future__ import annotations

import pandas as pd
import pytest

pytestmark = pytest.mark.slow


def test_demo_ending_exports_and_predicts(trained, capsys, fsar_lines):
    from flows.demo import PREDICT_QUERIES, predict_demo

    cfg, store, refs = trained
    out = predict_demo(cfg, store, cfg.dataset.video_root, refs["train"])
    root = store.root
    assert out["bundle"] == f"{root}/bundles/demo" and (store.local_path(refs["train"]).parents[2] / "bundles" / "demo" / "bundle.json").is_file()
    table = pd.read_csv(f"{root}/predict-demo/predictions.csv")
    assert len(table) == out["queries"] == 6 * PREDICT_QUERIES and table["error"].isna().all()
    printed = capsys.readouterr().out
    assert "fsar predict --model" in printed and "correct" in printed and "s per query" in printed
    assert f"{out['correct']}/{out['queries']} correct" in printed
