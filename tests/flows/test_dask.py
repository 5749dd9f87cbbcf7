"""The frames stage's work units as Prefect tasks on a local Dask cluster (prefect-dask)."""

from __future__ import annotations

import pytest

from pipeline import artifacts
from pipeline.artifacts import ArtifactStore
from pipeline.cli import build_config

pytestmark = pytest.mark.slow


def test_frames_units_run_on_a_local_dask_cluster(prefect_harness, synthetic_root, tiny_overrides, tmp_path):
    pytest.importorskip("prefect_dask")
    from prefect_dask import DaskTaskRunner

    from flows.fsar import frames_subflow
    from pipeline import frames

    root = tmp_path / "art"
    cfg = build_config("synthetic", "demo", [*tiny_overrides, "frames.videos_per_shard=16"], str(root), str(synthetic_root))
    runner = DaskTaskRunner(cluster_kwargs={"n_workers": 2, "threads_per_worker": 1, "processes": True, "dashboard_address": None})
    ref = frames_subflow.with_options(task_runner=runner)(cfg, {})
    index = artifacts.load("frames", "synthetic", root=str(root))
    assert len(index) == 72 and (index["status"] == "ok").all()
    assert index["shard"].nunique() == 5  # 72 videos in units of 16: every unit ran and published its shard

    # the same artifact as the default process pool, byte for byte in its index
    local = frames.run(cfg.override(f"artifacts={tmp_path / 'local'}"), {}, ArtifactStore(tmp_path / "local"))
    assert local.version == ref.version
    assert ArtifactStore(tmp_path / "local").manifest(local)["files"] == ArtifactStore(root).manifest(ref)["files"]
