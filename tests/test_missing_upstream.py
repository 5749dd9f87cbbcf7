"""A missing upstream explains itself: the versions that exist, how each differs, the flags that use one (issue 22)."""

from __future__ import annotations

import re

from typer.testing import CliRunner

from pipeline.cli import app

runner = CliRunner()


def test_missing_upstream_names_the_existing_versions_and_the_fix(synthetic_root, tiny_overrides, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no run file
    root = tmp_path / "art"
    common = ["--dataset", "synthetic", "--video-root", str(synthetic_root), "--artifacts", str(root)]
    sets = [a for o in tiny_overrides for a in ("--set", o)]
    made = runner.invoke(app, ["descriptions", *common, *sets, "--set", "descriptions.max_chars=150"])
    assert made.exit_code == 0, made.output
    version = made.output.strip().splitlines()[-1].split("/")[-1]  # "descriptions: descriptions/synthetic/<version>"
    assert re.fullmatch(r"[0-9a-f]{12}", version), made.output

    out = runner.invoke(app, ["embeddings", *common, *sets])  # this run: max_chars 200 (the default)
    assert out.exit_code == 2 and "Traceback" not in out.output, out.output
    err = out.stderr
    assert err.startswith("error: embeddings needs the descriptions artifact synthetic/") and "does not exist" in err
    assert len(err.strip().splitlines()) <= 6  # a short block
    assert version in err and "made 20" in err and "UTC" in err
    assert "descriptions.max_chars: 150 vs 200" in err  # that version vs this run
    assert f"--input descriptions={version}" in err and f"INPUT=descriptions={version}" in err
    assert "--set descriptions.max_chars=150" in err  # or the settings it was made with

    pinned = runner.invoke(app, ["embeddings", *common, *sets, "--input", f"descriptions={version}"])
    assert pinned.exit_code == 0, pinned.output
    same = runner.invoke(app, ["embeddings", *common, *sets, "--set", "descriptions.max_chars=150"])
    assert same.exit_code == 0 and "already exists, skipped" in same.output, same.output


def test_without_other_versions_it_stays_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = runner.invoke(app, ["embeddings", "--dataset", "hmdb51", "--artifacts", str(tmp_path / "art")])
    assert out.exit_code == 2 and len(out.stderr.strip().splitlines()) == 1, out.output
    assert "--input descriptions=VERSION" in out.stderr


def test_a_late_field_absent_from_an_older_version_counts_as_its_default():
    from pipeline.registry import _differences

    old = {"model.clip": "fsar-tiny", "inputs.frames": "abc"}  # made before model.scores existed
    assert _differences(old, {**old, "model.scores": "query_class"}) == []
    assert _differences(old, {**old, "model.scores": "released"}) == [("model.scores", "query_class", "released")]
    assert _differences(old, {**old, "model.other": 1}) == [("model.other", "(absent)", 1)]
