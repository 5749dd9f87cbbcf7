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


def test_an_error_starts_its_own_line_after_a_live_progress_bar(monkeypatch):
    """A stage that fails while its progress bar is live (a full disk mid-training) prints `error: ...` at the start
    of a line of its own, never glued to the bar (`... loss=2.095]error: no space left ...`)."""
    import errno
    import sys

    from tqdm import tqdm
    from typer.testing import CliRunner

    from pipeline import cli

    def full_disk(*args, **kwargs):
        bar = tqdm(total=4, desc="train", file=sys.stderr)
        bar.update(1)
        bar.set_postfix(loss="2.095")
        raise OSError(errno.ENOSPC, "No space left on device", "/art/train/x/best.pt")

    monkeypatch.setattr(cli, "run_stage", full_disk)
    out = CliRunner().invoke(cli.app, ["frames", "--dataset", "synthetic"])
    assert out.exit_code == 2 and "loss=2.095]" in out.output, out.output
    lines = out.output.replace("\r", "\n").splitlines()
    assert [ln for ln in lines if "error:" in ln] == [ln for ln in lines if ln.startswith("error: no space left on the device")], out.output
    assert not [b for b in tqdm._instances if not b.disable]  # the bar was closed, not left to redraw over later lines


def test_python_warnings_are_fsar_lines(capfd):
    """With fsar's printer installed, a `warnings.warn` of fsar or a library is one `[fsar] warning:` line, not a
    `file:line: UserWarning:` block."""
    import warnings

    from pipeline.logs import install

    install()
    warnings.warn("8 class(es) have fewer than K+Q=3 usable videos", UserWarning, stacklevel=1)
    err = capfd.readouterr().err
    assert err.startswith("[fsar] warning: 8 class(es) have fewer than K+Q=3 usable videos (UserWarning from test_errors.py:")
    assert err.count("\n") == 1
