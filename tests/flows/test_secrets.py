"""No secret lands anywhere: the whole tiny flow with an API key in the environment and in the base URL.

`python -m flows full` runs in its own process with a private PREFECT_HOME (ephemeral Prefect API, so
the Prefect database is a file under that home); descriptions come from a fake OpenAI-compatible
server reached through a URL with user-info. Afterwards no file under the artifact root or the Prefect
home holds a canary.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "descriptions"))
from fake_openai_server import FakeLLM  # noqa: E402

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
KEY = "sk-canary-key-5e1f0c2a9b"
URL_SECRET = "canary-url-secret-77d3"
TOKEN = "canary-token-a41b9c"


def _files_with(folder: Path, needles: list[bytes]) -> list[str]:
    hits = []
    for path in folder.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            hits += [f"{path}: {n.decode()}" for n in needles if n in data]
    return hits


def test_no_canary_in_artifacts_or_prefect_home(synthetic_root, tiny_overrides, tmp_path):
    root, home = tmp_path / "art", tmp_path / "prefect-home"
    overrides = [o for o in tiny_overrides if not o.startswith("descriptions.")]
    with FakeLLM() as llm:
        url = llm.url.replace("http://", f"http://fsar:{URL_SECRET}@")
        sets = [*overrides, "descriptions.backend=openai", f"descriptions.base_url={url}", "descriptions.model=fake-model",
                "descriptions.max_attempts=1"]
        cmd = [sys.executable, "-m", "flows", "full", "--dataset", "synthetic", "--video-root", str(synthetic_root),
               "--artifacts", str(root)]
        for s in sets:
            cmd += ["--set", s]
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(OPENAI_API_KEY=KEY, FSAR_TEST_TOKEN=TOKEN, PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false",
                   PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180", OMP_NUM_THREADS="1")
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert llm.calls() > 0  # the descriptions really came through the URL with user-info
    needles = [KEY.encode(), URL_SECRET.encode(), TOKEN.encode()]
    assert (root / "train").is_dir() and (home / "prefect.db").is_file()
    assert _files_with(root, needles) == []
    assert _files_with(home, needles) == []
    assert not any(n.decode() in proc.stdout + proc.stderr for n in needles)
