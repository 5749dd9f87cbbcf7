"""Bad input is one `error:` line on stderr, exit code 2, no traceback, and no artifact published (issue 16)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.artifacts import ArtifactStore
from pipeline.cli import app

runner = CliRunner()


def _refused(args: list[str], *needles: str, env: dict[str, str] | None = None) -> str:
    out = runner.invoke(app, args, env=env)
    assert out.exit_code == 2, out.output
    errors = [line for line in out.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, out.output
    assert "Traceback" not in out.output
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def _without(args: list[str], key: str) -> list[str]:
    """`args` less its `--set key=...` pair (a key may be given once: a second value is an error)."""
    out: list[str] = []
    for a in args:
        if a.startswith(f"{key}=") and out and out[-1] == "--set":
            out.pop()
        else:
            out.append(a)
    return out


def _published(root: Path, stage: str) -> list[Path]:
    folder = root / stage
    return [p for p in folder.rglob("manifest.json")] if folder.is_dir() else []


@pytest.fixture(scope="module")
def built(synthetic_root: Path, tiny_overrides: list[str], tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], Path]:
    """(common CLI arguments, artifact root) with descriptions, frames and embeddings of the synthetic set built."""
    root = tmp_path_factory.mktemp("bad-input-artifacts")
    common = ["--dataset", "synthetic", "--video-root", str(synthetic_root), "--artifacts", str(root)]
    for item in tiny_overrides:
        common += ["--set", item]
    for stage in ("descriptions", "frames", "embeddings"):
        out = runner.invoke(app, [stage, *common])
        assert out.exit_code == 0, out.output
    return common, root


def test_protocol_the_splits_cannot_hold(built: tuple[list[str], Path]) -> None:
    common, root = built
    _refused(["train", *common, "--set", "protocol.way=10"], "split 'val'", "N=10 (protocol.way", "lower protocol.way")
    _refused(["train", *common, "--set", "protocol.shot=3"], "K+Q=3+1=4", "protocol.shot")
    _refused(["train", *common, "--set", "protocol.query=3"], "K+Q=1+3=4", "protocol.query")
    assert _published(root, "train") == []
    assert not any(p.is_file() for p in (root / ".staging").rglob("*") if "train" in p.parts)


@pytest.mark.slow
def test_evaluate_shots_beyond_the_split(built: tuple[list[str], Path]) -> None:
    common, root = built
    out = runner.invoke(app, ["train", *common])
    assert out.exit_code == 0, out.output
    _refused(["evaluate", *common, "--shots", "3"], "split 'test'", "K+Q=3+1=4", "--shots")
    assert _published(root, "evaluate") == [] and not (root / ".staging" / "evaluate").exists()  # refused before building


def test_config_time_refusals(tmp_path: Path) -> None:
    art = tmp_path / "art"
    for stage in ("config", "frames"):
        _refused([stage, "--dataset", "hmdb51", "--artifacts", str(art), "--set", "protocol.num_frames=3"], "at least S+1=4")
    _refused(["train", "--dataset", "hmdb51", "--artifacts", str(art), "--set", "train.device=gpu7"], "train.device", "'gpu7'", "cuda:N")
    _refused(["config", "--dataset", "hmdb51", "--set", "evaluate.device=cuda:one"], "evaluate.device")
    assert not art.exists()


def test_unwritable_artifact_root(synthetic_root: Path, tiny_overrides: list[str], tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    sets = [a for item in tiny_overrides for a in ("--set", item)]
    args = ["descriptions", "--dataset", "synthetic", "--video-root", str(synthetic_root), "--artifacts", str(blocker / "art"), *sets]
    _refused(args, "cannot write under the artifact root", "--artifacts")


def test_unknown_clip_model(built: tuple[list[str], Path]) -> None:
    common, root = built
    _refused(["embeddings", *_without(common, "model.clip"), "--set", "model.clip=nope"], "unknown clip 'nope'")
    assert len(_published(root, "embeddings")) == 1  # only the fixture's


def test_offline_missing_weights_fail_fast(tmp_path: Path) -> None:
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "HF_HUB_CACHE": str(tmp_path / "hf" / "hub")}
    line = _refused(["model-info", "--preset", "hmdb51"], "model.pretrained=/path/to/file", "HF_HUB_OFFLINE", env=env)
    assert "retry" not in line.lower()


def test_folder_dataset_whose_split_cannot_hold_an_episode(tmp_path: Path) -> None:
    """10 class folders split 6/2/2: `fsar frames` prints the split and stops before decoding, naming
    dataset.split_ratios and protocol.way; ratios that give every split 5 classes pass that check."""
    root = tmp_path / "videos"
    for c in range(10):
        (root / f"class{c}").mkdir(parents=True)
        for v in range(3):
            (root / f"class{c}" / f"v{v}.mp4").write_bytes(b"")
    art = tmp_path / "art"
    args = ["frames", "--dataset", "custom", "--video-root", str(root), "--artifacts", str(art)]
    out = runner.invoke(app, args)
    assert "class split of custom: train 6 classes / 18 videos, val 2 classes / 6 videos, test 2 classes / 6 videos" in out.output
    _refused(args, "split 'val'", "dataset.split_ratios (now [0.6, 0.2, 0.2])", "protocol.way")
    assert not art.exists() or not any(p.is_file() for p in art.rglob("*"))
    ok = runner.invoke(app, [*args, "--set", "dataset.split_ratios=[0.5,0.5,0.0]", "--set", "protocol.way=5"])
    assert "split 'val'" not in ok.output and "class split of custom: train 5 classes" in ok.output, ok.output


def test_listed_dataset_split_too_small_is_a_warning(tmp_path: Path, capfd: pytest.CaptureFixture[str], fsar_lines) -> None:
    """A CSV (or benchmark) split is the user's: the frames stage warns, naming protocol.way, and goes on."""
    from pipeline.config import load_config
    from pipeline.datasets.registry import VideoEntry
    from pipeline.frames.stage import report_split

    videos = [VideoEntry(f"{c}/{v}", c, s, f"/v/{c}/{v}") for s, cs in (("train", "ab"), ("val", "cdefg")) for c in cs for v in "12"]
    cfg = load_config(None, overrides={"dataset.name": "custom", "dataset.video_list": str(tmp_path / "x.csv")})
    counts = report_split(cfg, videos)
    assert counts["train"] == {"classes": 2, "videos": 4, "episode_classes": 2}
    err = capfd.readouterr().err
    assert "split 'train'" in err and "protocol.way" in err and "split 'val'" not in err
