"""The frames stage's work units as Prefect tasks on a local Ray cluster (prefect-ray), as the Dask test does."""

from __future__ import annotations

import pytest

from pipeline import artifacts
from pipeline.artifacts import ArtifactStore
from pipeline.cli import build_config

pytestmark = pytest.mark.slow


def test_frames_units_run_on_a_local_ray_cluster(prefect_harness, synthetic_root, tiny_overrides, tmp_path):
    pytest.importorskip("prefect_ray")
    from prefect_ray import RayTaskRunner

    from flows.fsar import _task_runner, frames_subflow
    from pipeline import frames

    assert isinstance(_task_runner("ray", None), RayTaskRunner)  # what `--task-runner ray` picks
    root = tmp_path / "art"
    cfg = build_config("synthetic", "demo", [*tiny_overrides, "frames.videos_per_shard=16"], str(root), str(synthetic_root))
    runner = RayTaskRunner(init_kwargs={"num_cpus": 2, "include_dashboard": False, "log_to_driver": False})
    ref = frames_subflow.with_options(task_runner=runner)(cfg, {})
    index = artifacts.load("frames", "synthetic", root=str(root))
    assert len(index) == 72 and (index["status"] == "ok").all()
    assert index["shard"].nunique() == 5  # 72 videos in units of 16: every unit ran on Ray and published its shard

    # the same artifact as the default process pool, byte for byte in its files
    local = frames.run(cfg.override(f"artifacts={tmp_path / 'local'}"), {}, ArtifactStore(tmp_path / "local"))
    assert local.version == ref.version
    assert ArtifactStore(tmp_path / "local").manifest(local)["files"] == ArtifactStore(root).manifest(ref)["files"]
