"""Helpers of the predict tests: support folders of linked clips."""

from __future__ import annotations

import os
from pathlib import Path


def link_support(root: Path, videos: dict[str, list[str]], shots: int) -> Path:
    """A support folder: one folder per class holding symlinks to its first `shots` videos."""
    for cls, paths in videos.items():
        folder = root / cls
        folder.mkdir(parents=True, exist_ok=True)
        for p in paths[:shots]:
            os.symlink(p, folder / Path(p).name)
    return root
