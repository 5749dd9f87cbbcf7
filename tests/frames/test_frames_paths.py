"""Video paths are normalised before indexing, and one file listed twice (any spelling) is refused naming both."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.config import load_config
from pipeline.contract import StageError
from pipeline.datasets import DatasetError, get_dataset
from pipeline.frames.stage import list_videos


def _csv(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "split"])
        w.writerows(rows)
    return path


def _cfg(**sets: str):
    return load_config(None, overrides={"dataset.name": "custom", **{f"dataset.{k}": v for k, v in sets.items()}})


def test_spellings_are_normalised(tmp_path: Path) -> None:
    (tmp_path / "growing").mkdir()
    (tmp_path / "growing" / "x.mp4").write_bytes(b"")
    listing = _csv(tmp_path / "v.csv", [("./growing//x.mp4", "growing", "train")])
    (video,) = get_dataset(_cfg(video_list=str(listing)).dataset).videos("train")
    assert video.video_id == "growing/x.mp4"
    assert video.path == str(tmp_path / "growing" / "x.mp4")


@pytest.mark.parametrize("second", ["./growing/x.mp4", "growing//x.mp4", "ABS", "growing/../growing/x.mp4"])
def test_one_file_listed_twice_is_refused_naming_both(tmp_path: Path, second: str) -> None:
    (tmp_path / "growing").mkdir()
    (tmp_path / "growing" / "x.mp4").write_bytes(b"")
    second = str(tmp_path / "growing" / "x.mp4") if second == "ABS" else second
    listing = _csv(tmp_path / "v.csv", [("growing/x.mp4", "growing", "train"), (second, "growing", "train")])
    with pytest.raises(DatasetError, match="lists one file twice") as err:
        get_dataset(_cfg(video_list=str(listing)).dataset).videos("train")
    assert "line 2 as 'growing/x.mp4'" in str(err.value) and f"line 3 as {second!r}" in str(err.value)


def test_the_cli_refuses_a_duplicate_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "growing").mkdir()
    (tmp_path / "growing" / "x.mp4").write_bytes(b"")
    listing = _csv(tmp_path / "v.csv", [("growing/x.mp4", "growing", "train"), ("./growing/x.mp4", "growing", "train")])
    out = CliRunner().invoke(app, ["frames", "--dataset", "custom", "--video-list", str(listing), "--artifacts", str(tmp_path / "art")])
    assert out.exit_code == 2 and "Traceback" not in out.output, out.output
    assert [line for line in out.output.splitlines() if line.startswith("error:")] == [out.output.strip()]
    assert not (tmp_path / "art").exists()


def test_a_symlinked_video_in_a_folder_dataset_is_refused(tmp_path: Path) -> None:
    for c in ("alpha", "beta"):
        (tmp_path / "videos" / c).mkdir(parents=True)
    (tmp_path / "videos" / "alpha" / "a.mp4").write_bytes(b"x")
    os.symlink(tmp_path / "videos" / "alpha" / "a.mp4", tmp_path / "videos" / "beta" / "b.mp4")
    with pytest.raises(StageError, match="lists the file .* twice") as err:
        list_videos(_cfg(video_root=str(tmp_path / "videos")))
    assert "alpha/a.mp4" in str(err.value) and "beta/b.mp4" in str(err.value)
