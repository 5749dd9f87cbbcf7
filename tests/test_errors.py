"""One user-facing error type: every bad-input error is an FsarError (and keeps its built-in base)."""

from __future__ import annotations

import pytest

from pipeline.errors import FsarError


@pytest.mark.parametrize("module,name,base", [
    ("pipeline.config", "ConfigError", ValueError),
    ("pipeline.datasets.registry", "DatasetError", ValueError),
    ("pipeline.artifacts", "ArtifactError", RuntimeError),
    ("pipeline.contract", "StageError", RuntimeError),
    ("pipeline.fewshot.episodes", "EpisodeError", ValueError),
    ("pipeline.frames.reader", "FrameStoreError", LookupError),
    ("pipeline.model.backbone", "BackboneError", ValueError),
    ("pipeline.predict.bundle", "BundleError", RuntimeError),
])
def test_every_user_error_is_an_fsar_error(module, name, base):
    import importlib

    cls = getattr(importlib.import_module(module), name)
    assert issubclass(cls, FsarError) and issubclass(cls, base)


def test_the_cli_turns_any_fsar_error_into_one_line(monkeypatch):
    from typer.testing import CliRunner

    from pipeline import cli
    from pipeline.frames.reader import FrameStoreError

    def boom(*args, **kwargs):
        raise FrameStoreError("video 'x' is not in this frames artifact; pick one from FrameStore.usable_videos()")

    monkeypatch.setattr(cli, "run_stage", boom)
    out = CliRunner().invoke(cli.app, ["frames", "--dataset", "synthetic"])
    assert out.exit_code == 2 and out.output.strip().startswith("error: video 'x'") and "Traceback" not in out.output
