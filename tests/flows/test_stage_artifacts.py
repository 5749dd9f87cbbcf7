"""Prefect artifacts per stage: one `<stage>-<dataset>` artifact per stage after a flow run, read through the Prefect client."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


def _artifacts():
    import anyio
    from prefect.client.orchestration import get_client

    async def read():
        async with get_client() as client:
            return await client.read_artifacts()

    return anyio.run(read)


def _logs() -> list[str]:
    import anyio
    from prefect.client.orchestration import get_client

    async def read():
        async with get_client() as client:
            return await client.read_logs()

    return [log.message for log in anyio.run(read)]


def test_every_stage_publishes_its_own_prefect_artifact(prefect_harness, synthetic_root, tiny_overrides, tmp_path):
    from flows.fsar import ALL_STAGES, fsar

    root = str(tmp_path / "art")
    versions = fsar(dataset="synthetic", preset="demo", video_root=str(synthetic_root), artifacts=root,
                    overrides=[*tiny_overrides, "train.log_every=1"])
    found = _artifacts()
    by_key: dict[str, list] = {}
    for a in found:
        by_key.setdefault(a.key, []).append(a)
    for stage in ALL_STAGES:
        mine = [a for a in by_key.get(f"{stage}-synthetic", []) if versions[stage] in (a.data or "")]
        assert mine, f"no Prefect artifact with key {stage}-synthetic for version {versions[stage]}"
    evaluate = next(a for a in by_key["evaluate-synthetic"] if versions["evaluate"] in a.data)
    assert f"train/synthetic/{versions['train']}" in evaluate.data  # the report's lineage names the train version it scored
    assert "## Per-class accuracy" in evaluate.data and "report.md" in evaluate.data
    table = by_key.get("audit-synthetic-table", [])  # the audit also publishes its per-class figures as a table
    assert table and all(a.type == "table" for a in table) and "order_agreement" in table[0].data
    frames = next(a for a in by_key["frames-synthetic"] if versions["frames"] in a.data)
    assert "frames stored" in frames.data and "failed" in frames.data
    progress = by_key.get("train-synthetic-progress", [])
    assert progress and all(a.type == "progress" for a in progress) and any(float(a.data) == 100.0 for a in progress)
    lines = [m for m in _logs() if m.startswith("[fsar] train synthetic: episode")]
    assert any("episode 2/2" in m and "episodes/s" in m and "ETA" in m for m in lines)  # progress went to the run logger


def test_outside_prefect_nothing_is_published(tmp_path, monkeypatch):
    from flows import stage_artifacts
    from pipeline.artifacts import ArtifactRef

    calls = []
    monkeypatch.setattr(stage_artifacts, "stage_markdown", lambda *a: calls.append(a) or "")
    stage_artifacts.publish_stage_artifact("train", ArtifactRef("train", "synthetic", "v", str(tmp_path)))
    assert calls == []
