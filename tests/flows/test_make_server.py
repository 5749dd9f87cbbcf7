"""`make server` points the UI at its own API (host and port as given)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_server_sets_the_ui_api_url_to_its_host_and_port():
    out = subprocess.run(["make", "-n", "server", "PORT=4317", "HOST=10.1.2.3"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    line = next(ln for ln in out.splitlines() if "server start" in ln)
    assert "PREFECT_UI_API_URL=http://10.1.2.3:4317/api" in line and "--port 4317" in line and "--host 10.1.2.3" in line
