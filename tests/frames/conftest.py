"""Fixtures of the frames tests: one folder of good and bad videos, written once per session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# The suite imports test files with --import-mode=importlib; make the helper module next to this file importable.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from frames_helpers import write_dataset  # noqa: E402


@pytest.fixture(scope="session")
def video_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """(folder holding videos/ and videos.csv, true frames of the good videos by file name)."""
    root = tmp_path_factory.mktemp("frames-videos")
    return root, write_dataset(root)
