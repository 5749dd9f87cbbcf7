"""Miniature replicas of the five benchmarks, built from their standard split files, run end to end.

Each replica has the real folder layout and file names (the first two videos of every class of every
split, and the first video whose name holds each unusual character, named as the split files name them: `<class dir>/<file>.avi` for HMDB51 and UCF101,
`<class dir>/<ytid>_<start>_<end>.mp4` for Kinetics-100, `<id>.webm` for SSv2, plus SSv2-Full's label
JSON files), tiny clips in the originals' codec and container (MPEG-4 Part 2 with B-frames in AVI, H.264
with B-frames in mp4, VP9 in WebM). The split files given to fsar hold those lines only, verbatim. Then
`fsar descriptions` (a corpus file), `fsar frames --dataset D --video-root DIR`, `fsar audit`, `fsar embeddings`,
`fsar train` and `fsar evaluate` run with fsar-micro and a few episodes, as a user would type them.
Skips without the split files (`../shared/splits`, or $FSAR_SHARED).
"""

from __future__ import annotations

import io
import json
import sys
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "frames"))

from clips import CLIP_KINDS, independent_decode, write_clip  # noqa: E402

from pipeline.cli import app  # noqa: E402
from pipeline.frames.decode import frame_jpeg  # noqa: E402

PER_CLASS = 2  # videos per class (K + Q = 2): every class of every split, the first two of its lines
SPLITS = ("train", "val", "test")
KINDS = {"hmdb51": "hmdb51", "ucf101": "ucf101", "kinetics100": "kinetics", "ssv2_small": "ssv2", "ssv2_full": "ssv2"}
SSV2_LABELS = ("something-something-v2-train.json", "something-something-v2-validation.json")
STORAGE, MAX_FRAMES, T = 40, 8, 4
MICRO = [
    "model.clip=fsar-micro", "model.pretrained=null", "model.image_size=32", "model.vision_adapted_layers=1",
    "model.text_adapted_layers=1", f"protocol.num_frames={T}", f"frames.storage_size={STORAGE}", f"frames.max_frames={MAX_FRAMES}",
    "frames.workers=2", "frames.videos_per_shard=40", "train.device=cpu", "evaluate.device=cpu", "train.epochs=1",
    "train.episodes_per_epoch=2", "train.val_episodes=2", "train.warmup_epochs=0", "evaluate.episodes=3",
]  # fmt: skip


def _subset(lines: list[str]) -> list[str]:
    """The first PER_CLASS lines of every class key, and the first line holding each character other than
    letters, digits and `_/.-` (HMDB51 names hold `! # & ( ) + ; @ [ ]`), in file order."""
    seen: dict[str, int] = defaultdict(int)
    odd: set[str] = set()
    out = []
    for line in lines:
        key = line.split("/", 1)[0]
        new = {c for c in line if not (c.isascii() and (c.isalnum() or c in "_/.-"))} - odd
        if seen[key] < PER_CLASS or new:
            seen[key] += 1
            odd |= new
            out.append(line)
    return out


def _relative(dataset: str, line: str) -> str:
    rest = line.split("/", 1)[1].strip("/")
    if dataset.startswith("ssv2"):
        return f"{rest}.webm"
    return "/".join(rest.split("/")[-2:])  # <class dir>/<file>: the release's videos/ or train_256/ folder is not part of the root


def _ssv2_templates(splits_dir: Path, lines: dict[str, list[str]]) -> dict[str, str]:
    """video id -> template: SSv2-Small's class names where the CMN lists know the video, else a placeholder per class."""
    known = {}
    for split in SPLITS:
        for line in (splits_dir / "cmn" / "smsm-100" / f"{split}.list").read_text(encoding="utf-8").splitlines():
            if line.strip():
                name, vid = line.strip().rsplit("/", 1)
                known[vid] = name
    by_key: dict[tuple[str, str], str] = {}
    for split in SPLITS:
        for line in lines[split]:
            key, vid = line.split("/", 1)
            if vid in known:
                by_key.setdefault((split, key), known[vid])
    out = {}
    for split in SPLITS:
        for line in lines[split]:
            key, vid = line.split("/", 1)
            out[vid] = by_key.get((split, key), f"Moving [something] in way {split} {key}")
    return out


def build_replica(dataset: str, splits_dir: Path, root: Path) -> tuple[Path, Path, dict[str, str], list[str]]:
    """(video root, split dir, {relative path: split}, extra --set options) of a miniature `dataset`."""
    split_dir = root / "splits"
    videos = root / "videos"
    split_dir.mkdir(parents=True)
    lines = {}
    for split in SPLITS:
        lines[split] = _subset([x.strip() for x in (splits_dir / dataset / f"{split}.txt").read_text(encoding="utf-8").splitlines() if x.strip()])
        (split_dir / f"{split}.txt").write_text("\n".join(lines[split]) + "\n", encoding="utf-8")
    kind = replace(CLIP_KINDS[KINDS[dataset]], width=64, height=48, gop=6, bit_rate=300_000)
    if kind.codec == "libvpx-vp9":
        kind = replace(kind, options=(("cpu-used", "8"),))  # encoder speed only: same stream features (alt-ref frames)
    files = {}
    for i, split in enumerate(SPLITS):
        for j, line in enumerate(lines[split]):
            rel = _relative(dataset, line)
            write_clip(videos / rel, kind, 10 + (j % 3), seed=100 * i + j)
            files[rel] = split
    extra = []
    if dataset == "ssv2_full":
        templates = _ssv2_templates(splits_dir, lines)
        label_dir = root / "labels"
        label_dir.mkdir()
        for name, splits in zip(SSV2_LABELS, (("train",), ("val", "test"))):
            items = [{"id": line.split("/", 1)[1], "label": templates[line.split("/", 1)[1]].replace("[", "").replace("]", ""),
                      "template": templates[line.split("/", 1)[1]], "placeholders": ["something"]}
                     for split in splits for line in lines[split]]  # fmt: skip
            (label_dir / name).write_text(json.dumps(items), encoding="utf-8")
        extra.append(f"dataset.label_dir={label_dir}")
    return videos, split_dir, files, extra


@pytest.mark.slow
@pytest.mark.parametrize("dataset", list(KINDS))
def test_replica_runs_end_to_end(dataset, splits_dir, tmp_path, monkeypatch):
    from pipeline.config import load_config
    from pipeline.datasets import get_dataset

    videos, split_dir, files, extra = build_replica(dataset, splits_dir, tmp_path)
    monkeypatch.setenv("FSAR_SPLITS", str(split_dir.parent / "split-home"))  # the folder the user points at
    (split_dir.parent / "split-home").mkdir()
    split_dir.rename(split_dir.parent / "split-home" / dataset)
    # descriptions from a corpus file: three ordered sentences for every class the registry lists
    cfg = load_config(dataset, overrides=[f"dataset.video_root={videos}", *extra])
    spec = get_dataset(cfg.dataset)
    classes = [c for split in SPLITS for c in spec.classes(split)]
    corpus = tmp_path / "corpus.yaml"
    corpus.write_text(yaml.safe_dump({c: [f"first {c} begins", f"then {c} goes on", f"finally {c} ends"] for c in classes}), encoding="utf-8")
    sets = [*MICRO, *extra, "descriptions.backend=file", f"descriptions.corpus={corpus}"]
    common = ["--dataset", dataset, "--video-root", str(videos), "--artifacts", str(tmp_path / "art")] + [a for s in sets for a in ("--set", s)]
    runner = CliRunner()
    for command in ("descriptions", "frames", "audit", "embeddings", "train", "evaluate"):
        result = runner.invoke(app, [command, *common])
        assert result.exit_code == 0, f"fsar {command} on the {dataset} replica: {result.output[-3000:]}"

    from pipeline import artifacts

    index = artifacts.load("frames", dataset, root=tmp_path / "art")
    assert len(index) == len(files) and (index["status"] == "ok").all(), index[index["status"] != "ok"][["video_id", "reason", "error"]]
    assert sorted(Path(p).relative_to(videos).as_posix() for p in index["source_path"]) == sorted(files)
    assert dict(zip(index["source_path"].map(lambda p: Path(p).relative_to(videos).as_posix()), index["split"])) == files
    assert (index["decoder"] == "pyav").all() and index["warnings"].isna().all()
    # stored frames are the sequential decode's frames at their indices (a sample of videos)
    from pipeline.frames import FrameStore

    fs = FrameStore.open(dataset, root=tmp_path / "art")
    for _, row in index.iloc[:: max(1, len(index) // 6)].iterrows():
        reference = independent_decode(Path(row["source_path"]))
        assert row["num_frames"] == len(reference)
        stored = list(row["stored_indices"])
        got = np.asarray(fs.frames(row["video_id"], stored))
        for k, i in enumerate(stored):
            want = np.asarray(Image.open(io.BytesIO(frame_jpeg(reference[i], STORAGE, 90))).convert("RGB"))
            assert np.abs(got[k].astype(int) - want).mean() < 1.0, (row["video_id"], i)
    # the audit looked at every video of every train and val class (2-4 here: fewer than audit.min_videos, so flagged)
    audit = artifacts.load("audit", dataset, root=tmp_path / "art")
    assert sorted(zip(audit["split"], audit["class"])) == sorted((s, c) for s in ("train", "val") for c in spec.classes(s))
    assert audit["chosen"].all() and audit["too_few_videos"].all() and audit["order_agreement"].between(0, 1).all()
    per_class = index.groupby(["split", "class"]).size()
    assert all(per_class[(r["split"], r["class"])] == r["videos"] for _, r in audit.iterrows())
    episodes = artifacts.load("evaluate", dataset, root=tmp_path / "art")
    assert len(episodes) >= 3 and isinstance(episodes, pd.DataFrame)
