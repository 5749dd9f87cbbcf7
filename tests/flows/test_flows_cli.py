"""`python -m flows`: the typer app passes its options to the flows unchanged (no flow is run here)."""

from __future__ import annotations

import os

import pytest

import flows.__main__ as cli
from pipeline.secrets import restore_overrides


@pytest.fixture
def calls(monkeypatch):
    import flows.demo
    import flows.fsar

    seen: dict[str, dict] = {}
    monkeypatch.setattr(flows.fsar, "fsar", lambda **kw: seen.setdefault("full", kw) and {"frames": "abc123"})
    monkeypatch.setattr(flows.demo, "demo", lambda **kw: seen.setdefault("demo", kw))
    monkeypatch.setenv("FSAR_STASHED_OVERRIDES", "{}")  # restored afterwards, as the two variables the app sets
    for name in ("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "PREFECT_SERVER_ANALYTICS_ENABLED"):
        monkeypatch.setenv(name, os.environ.get(name, "180" if "TIMEOUT" in name else "false"))
    return seen


def test_full_passes_every_option(calls, tmp_path, capsys):
    secret = "descriptions.base_url=http://me:sk-verysecret@localhost:1/v1"
    root = "http://me:sk-rootsecret@store:8080/arts?sig=sk-signature"  # an fsspec root URL with credentials
    argv = ["full", "--dataset", "hmdb51", "--preset", "demo", "--video-root", str(tmp_path), "--artifacts", root,
            "--set", "train.steps=2", "--set", secret, "--stages", "frames,embeddings", "--task-runner", "dask",
            "--dask-address", "tcp://h:8786", "--input", "descriptions=v1", "--input", "frames=v2"]
    assert cli.main(argv) == 0
    kw = calls["full"]
    assert kw["dataset"] == "hmdb51" and kw["preset"] == "demo" and kw["artifacts"] == "http://***@store:8080/arts?sig=***"
    assert restore_overrides([kw["artifacts"]]) == [root]  # the flow gets the real root back
    assert kw["video_root"] == os.path.abspath(tmp_path) and kw["video_list"] is None
    assert kw["stages"] == ["frames", "embeddings"] and kw["task_runner"] == "dask" and kw["dask_address"] == "tcp://h:8786"
    assert kw["inputs"] == ["descriptions=v1", "frames=v2"]
    assert kw["overrides"][0] == "train.steps=2" and "sk-verysecret" not in kw["overrides"][1]  # stashed, not a flow parameter
    assert restore_overrides(kw["overrides"]) == ["train.steps=2", secret]
    assert "frames: abc123" in capsys.readouterr().out


def test_defaults_and_demo(calls, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no fsar.yaml here: nothing but the options reaches the flow
    assert cli.main(["full"]) == 0
    kw = calls["full"]
    assert kw["dataset"] is None and kw["task_runner"] == "local" and kw["stages"] is None and kw["overrides"] == []  # the run file may name it
    assert kw["config"] is None
    assert cli.main(["demo", "--artifacts", "a", "--set", "train.steps=1"]) == 0
    assert calls["demo"] == {"artifacts": "a", "overrides": ["train.steps=1"], "config": None}


def test_the_run_file_reaches_the_flows(calls, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fsar.yaml").write_text("dataset: hmdb51\n")
    other = tmp_path / "other.yaml"
    other.write_text("dataset: ucf101\n")
    assert cli.main(["full"]) == 0 and calls.pop("full")["config"] == str(tmp_path / "fsar.yaml")  # the default file
    assert cli.main(["full", "--config", str(other)]) == 0 and calls.pop("full")["config"] == str(other)
    assert cli.main(["demo", "--config", str(other)]) == 0 and calls["demo"]["config"] == str(other)
    assert cli.main(["full", "--config", str(tmp_path / "missing.yaml")]) == 2 and "full" not in calls


def test_a_failed_flow_run_is_one_line(monkeypatch, capsys):
    """A flow that ended Failed on bad input: `python -m flows` prints its one-line state message, exit 2."""
    import flows.fsar
    from prefect.exceptions import FailedRun

    def failed(**kw):
        raise FailedRun("descriptions: no usable answer for 1 of 24 classes: train/'x' ...")

    monkeypatch.setattr(flows.fsar, "fsar", failed)
    assert cli.main(["full", "--dataset", "synthetic"]) == 2
    err = capsys.readouterr().err
    assert "error: descriptions: no usable answer" in err and "Traceback" not in err


def test_bad_options_exit_2(calls):
    assert cli.main(["full", "--task-runner", "spark"]) == 2
    assert cli.main(["nope"]) == 2
    assert calls == {}
