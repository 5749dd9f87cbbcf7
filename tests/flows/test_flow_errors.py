"""A flow run that fails on bad input ends Failed with the one-line reason, without a traceback or retries (issue 22)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "descriptions"))
from fake_openai_server import FakeLLM  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_a_class_without_a_usable_answer_fails_the_flow_in_one_line(synthetic_root, tiny_overrides, tmp_path):
    """`python -m flows full` (what `make full` runs): exit 2, one `error:` line, the flow run Failed with that line,
    no traceback anywhere in its output, and no Prefect retry of a stage that refused its input."""
    overrides = [o for o in tiny_overrides if not o.startswith("descriptions.")]
    with FakeLLM(script={"moving up": ["malformed"] * 9}) as llm:
        sets = [*overrides, "descriptions.backend=openai", f"descriptions.base_url={llm.url}", "descriptions.model=m",
                "descriptions.max_attempts=2", "descriptions.max_retries=0"]  # fmt: skip
        cmd = [sys.executable, "-m", "flows", "full", "--dataset", "synthetic", "--preset", "demo", "--video-root", str(synthetic_root),
               "--artifacts", str(tmp_path / "art"), *[a for s in sets for a in ("--set", s)]]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_SERVER_ANALYTICS_ENABLED="false", PYTHONPATH=str(REPO))
        out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert llm.calls("moving up") == 2  # max_attempts, and no Prefect retry
    text = out.stdout + out.stderr
    assert out.returncode == 2, text[-3000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: descriptions: no usable answer for 1 of 24 classes: "), text[-3000:]
    assert "'moving up'" in errors[0] and "descriptions.max_attempts=4; now 2" in errors[0]
    assert "Traceback" not in text, text[-3000:]
    assert "Finished in state Failed('descriptions: no usable answer" in text  # the flow run's state carries the line
    assert not (tmp_path / "art" / "frames").exists()  # stopped at the first stage


def test_a_missing_dataset_fails_the_flow_in_one_line(prefect_harness, tmp_path, monkeypatch):
    from prefect.exceptions import FailedRun

    from flows.fsar import fsar

    monkeypatch.chdir(tmp_path)  # no fsar.yaml
    with pytest.raises(FailedRun, match="no dataset given"):
        fsar(stages=["frames"])
