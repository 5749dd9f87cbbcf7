import collections
import json
from pathlib import Path

import pytest

from pipeline.datasets import DatasetError, get_dataset, humanize, list_datasets
from pipeline.datasets.synthetic import CLASSES, class_split, script
from pipeline.settings.datasets import DatasetConfig


def test_registry_lists_every_dataset():
    assert {"hmdb51", "ucf101", "kinetics100", "ssv2_small", "ssv2_full", "custom", "synthetic"} <= set(list_datasets())
    with pytest.raises(DatasetError, match="unknown dataset 'nope'; choose one of"):
        get_dataset("nope")


@pytest.mark.parametrize(
    "name, classes, videos",
    [
        ("hmdb51", (31, 10, 10), (4280, 1194, 1292)),
        ("ucf101", (70, 10, 21), (9154, 1421, 2745)),
        ("kinetics100", (64, 12, 24), (6400, 1200, 2400)),
        ("ssv2_small", (64, 12, 24), (6400, 1200, 2400)),
    ],
)
def test_benchmark_counts_match_the_standard_splits(name, classes, videos, splits_dir, tmp_path):
    spec = get_dataset(DatasetConfig(name=name, split_dir=str(splits_dir / name), video_root=str(tmp_path)))
    assert tuple(len(spec.classes(s)) for s in ("train", "val", "test")) == classes
    assert tuple(len(spec.videos(s)) for s in ("train", "val", "test")) == videos
    all_classes = [c for s in ("train", "val", "test") for c in spec.classes(s)]
    assert len(set(all_classes)) == len(all_classes)  # splits never share classes
    for split in ("train", "val", "test"):
        counts = collections.Counter(v.class_name for v in spec.videos(split))
        assert set(counts) == set(spec.classes(split))
        if name in ("kinetics100", "ssv2_small"):
            assert set(counts.values()) == {100}
    ids = [v.video_id for s in ("train", "val", "test") for v in spec.videos(s)]
    assert len(set(ids)) == len(ids)


def test_shipped_class_partition_matches_the_split_files(splits_dir, tmp_path):
    # class names are derived from the video paths (hmdb51, ucf101, kinetics100) or the CMN lists (ssv2_small)
    for name in ("hmdb51", "ucf101", "kinetics100"):
        spec = get_dataset(DatasetConfig(name=name, split_dir=str(splits_dir / name), video_root=str(tmp_path)))
        for split in ("train", "val", "test"):
            for v in spec.videos(split):
                assert Path(v.path).parent.name == v.class_name
    spec = get_dataset(DatasetConfig(name="ssv2_small", split_dir=str(splits_dir / "ssv2_small"), video_root=str(tmp_path)))
    for split in ("train", "val", "test"):
        truth = dict(reversed(line.strip().rsplit("/", 1)) for line in (splits_dir / "cmn/smsm-100" / f"{split}.list").read_text().splitlines() if line.strip())
        for v in spec.videos(split):
            assert truth[v.video_id] == v.class_name


def test_hmdb51_paths_and_names(splits_dir, tmp_path):
    spec = get_dataset(DatasetConfig(name="hmdb51", split_dir=str(splits_dir / "hmdb51"), video_root=str(tmp_path)))
    first = spec.videos("train")[0]
    assert first.path == str(tmp_path / "brush_hair" / "April_09_brush_hair_u_nm_np1_ba_goo_0.avi")
    assert first.class_name == "brush_hair" and spec.display_name("brush_hair") == "brush hair"
    assert humanize("ApplyEyeMakeup") == "apply eye makeup" and humanize("YoYo") == "yo yo"
    assert humanize("Pushing something from left to right") == "Pushing something from left to right"


def test_missing_inputs_are_clear_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("FSAR_SPLITS", raising=False)
    spec = get_dataset(DatasetConfig(name="hmdb51", video_root=str(tmp_path)))
    assert len(spec.classes("test")) == 10  # class names need no files
    with pytest.raises(DatasetError, match="split_dir"):
        spec.videos("train")
    with pytest.raises(DatasetError, match="VIDEO_ROOT"):
        get_dataset(DatasetConfig(name="hmdb51", split_dir=str(tmp_path))).videos("train")
    with pytest.raises(DatasetError, match="is not a folder"):
        get_dataset(DatasetConfig(name="hmdb51", split_dir=str(tmp_path), video_root=str(tmp_path / "nope"))).videos("train")
    with pytest.raises(DatasetError, match="label_dir"):
        get_dataset("ssv2_full").classes("train")


def test_ssv2_full_names_come_from_its_own_label_files(splits_dir, tmp_path):
    # a fake label set: every video of class <split><c> gets template "Action <split> <c> [something]"
    items = {"train": [], "validation": []}
    for split in ("train", "val", "test"):
        for line in (splits_dir / "ssv2_full" / f"{split}.txt").read_text().split():
            key, vid = line.split("/")
            items["train" if split == "train" else "validation"].append({"id": vid, "template": f"Action {key} [something]"})
    for name, rows in items.items():
        (tmp_path / f"something-something-v2-{name}.json").write_text(json.dumps(rows))
    spec = get_dataset(DatasetConfig(name="ssv2_full", split_dir=str(splits_dir / "ssv2_full"), label_dir=str(tmp_path)))
    assert [len(spec.classes(s)) for s in ("train", "val", "test")] == [64, 12, 24]
    assert spec.classes("test")[3] == "Action test3 [something]"
    assert spec.display_name("Action test3 [something]") == "Action test3 something"


def test_custom_folder_dataset_with_odd_names(tmp_path):
    names = ["jump rope", "kick [ball]", "café au lait", "a", "b", "c", "d", "e", "f", "g"]
    for n in names:
        (tmp_path / n).mkdir()
        (tmp_path / n / "clip 1.mp4").write_bytes(b"")
        (tmp_path / n / "[x].mp4").write_bytes(b"")
        (tmp_path / n / "notes.txt").write_text("not a video")
    spec = get_dataset(DatasetConfig(name="custom", video_root=str(tmp_path), split_ratios=(0.6, 0.2, 0.2), split_seed=3))
    sizes = [len(spec.classes(s)) for s in ("train", "val", "test")]
    assert sizes == [6, 2, 2]
    vids = spec.all_videos()
    assert len(vids) == 20 and {Path(v.path).name for v in vids} == {"clip 1.mp4", "[x].mp4"}
    assert {v.class_name for v in vids} == set(names)
    again = get_dataset(DatasetConfig(name="custom", video_root=str(tmp_path), split_seed=3))
    assert [again.classes(s) for s in ("train", "val", "test")] == [spec.classes(s) for s in ("train", "val", "test")]


def test_custom_csv_dataset(tmp_path):
    csv_path = tmp_path / "list.csv"
    csv_path.write_text("path,label,split\nv/a.mp4,run,train\nv/b.mp4,walk,val\n/abs/c.mp4,sit,test\n")
    spec = get_dataset(DatasetConfig(name="custom", video_list=str(csv_path)))
    assert spec.classes("train") == ["run"] and spec.videos("test")[0].path == "/abs/c.mp4"
    assert spec.videos("val")[0].path == str(tmp_path / "v" / "b.mp4")
    bad = tmp_path / "bad.csv"
    bad.write_text("path,label,split\nv/a.mp4,run,train\nv/b.mp4,run,test\n")
    with pytest.raises(DatasetError, match="several splits"):
        get_dataset(DatasetConfig(name="custom", video_list=str(bad))).classes("train")
    with pytest.raises(DatasetError, match="lacks column"):
        (tmp_path / "cols.csv").write_text("file,label\n")
        get_dataset(DatasetConfig(name="custom", video_list=str(tmp_path / "cols.csv"))).classes("train")


def test_synthetic_classes_are_order_pairs_split_whole():
    assert len(CLASSES) >= 20
    spec = get_dataset("synthetic")
    sizes = {s: len(spec.classes(s)) for s in ("train", "val", "test")}
    assert min(sizes.values()) >= 5 and sum(sizes.values()) == len(CLASSES)
    by_pair = collections.defaultdict(set)
    for c in CLASSES:
        by_pair[c.pair].add(class_split(c.name))
    assert all(len(s) == 1 for s in by_pair.values()) and all(len([c for c in CLASSES if c.pair == p]) == 2 for p in by_pair)
    # the two classes of a pair have different scripts, made of S sentences
    for p in by_pair:
        a, b = [c.name for c in CLASSES if c.pair == p]
        assert script(a, 3) != script(b, 3) and len(script(a, 5)) == 5


def test_synthetic_videos_decode_back(synthetic_root):
    import av
    import numpy as np

    spec = get_dataset(DatasetConfig(name="synthetic", video_root=str(synthetic_root)))
    videos = spec.all_videos()
    assert len(videos) == 3 * len(CLASSES)
    with av.open(videos[0].path) as container:
        decoded = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    assert decoded.shape == (16, 64, 64, 3)
    # deterministic for a seed: regenerating gives the same pixels
    from pipeline.datasets.synthetic import VideoParams, render_video, sample_video_params, _BY_NAME

    cls = _BY_NAME[videos[0].class_name]
    rng1, rng2 = np.random.default_rng([0, 0, 0]), np.random.default_rng([0, 0, 0])
    a = render_video(cls, sample_video_params(rng1, cls), 16, 64, rng1)
    b = render_video(cls, sample_video_params(rng2, cls), 16, 64, rng2)
    assert np.array_equal(a, b)
    assert np.abs(decoded.astype(int) - a.astype(int)).mean() < 12  # H.264 at crf 18, noise included


def test_synthetic_videos_encode_to_the_same_bytes_every_time(tmp_path):
    """`fsar synthetic` twice gives the same files (x264's lookahead made repeated encodes differ: 7 files in 12)."""
    import numpy as np

    from pipeline.datasets.synthetic import CLASSES, render_video, sample_video_params, write_video

    ci, cls = next((i, c) for i, c in enumerate(CLASSES) if c.name == "moving left to right")
    rng = np.random.default_rng([0, ci, 0])
    frames = render_video(cls, sample_video_params(rng, cls), 24, 64, rng)
    files = set()
    for i in range(12):
        write_video(frames, tmp_path / f"{i}.mp4")
        files.add((tmp_path / f"{i}.mp4").read_bytes())
    assert len(files) == 1


def test_synthetic_needs_its_folder(tmp_path):
    with pytest.raises(DatasetError, match="fsar synthetic --out"):
        get_dataset("synthetic").videos("train")
    with pytest.raises(DatasetError, match="holds no synthetic.csv"):
        get_dataset(DatasetConfig(name="synthetic", video_root=str(tmp_path))).videos("train")
