"""`fsar/full` through a real Prefect server: make deploy, prefect deployment run, make worker-once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from pipeline import artifacts

pytestmark = [pytest.mark.server, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.fixture()
def server(prefect_server_env):
    return {**os.environ, **prefect_server_env}


def _run(cmd: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{' '.join(cmd)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


def test_deployment_completes_through_a_worker(server, synthetic_root, tiny_overrides, tmp_path):
    env = server
    root = tmp_path / "art"
    make = ["make", "--no-print-directory", f"VENV={BIN.parent}", f"ARTIFACTS={root}"]
    _run([*make, "deploy"], env, timeout=300)
    params = {"video_root": str(synthetic_root), "overrides": tiny_overrides, "preset": "demo"}
    out = _run(
        [str(BIN / "prefect"), "deployment", "run", "fsar/full", "-p", "dataset=synthetic", "--params", json.dumps(params)],
        env, timeout=120,
    )
    assert "fsar/full" in out.stdout
    _run([*make, "worker-once"], env, timeout=600)
    runs = httpx.post(f"{env['PREFECT_API_URL']}/flow_runs/filter", json={}, timeout=10).json()
    deployed = [r for r in runs if r.get("deployment_id")]
    assert [r["state"]["type"] for r in deployed] == ["COMPLETED"], runs
    assert all(r["state"]["type"] == "COMPLETED" for r in runs)  # the frames subflow too
    ev = artifacts.load("evaluate", "synthetic", root=str(root))
    assert set(ev["method"]) >= {"task_adapter_pp"}
