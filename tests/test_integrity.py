"""Nothing corrupt is ever used, anywhere: bundles, exports, "already exists", and every OS error as one line.

The tiny real pipeline (synthetic mp4s, fsar-micro with seeded random weights) is built once through the CLI;
each test damages a copy the way a disk, a copy or an editor would, and checks what the user sees.
"""

from __future__ import annotations

import csv
import errno
import json
import logging
import os
import shutil
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.artifacts import ArtifactStore
from pipeline.cli import app
from pipeline.registry import PIPELINE

runner = CliRunner()
STAGE_NAMES = [s.name for s in PIPELINE]


@pytest.fixture(autouse=True)
def _no_stale_log_handlers(monkeypatch):
    """A Prefect flow run earlier in this process (the demo's tests) can leave its console handler on the root
    logger, bound to a stream CliRunner has closed since: its "Logging error" traceback is not the command's."""
    for logger in (logging.getLogger(), logging.getLogger("fsar")):
        monkeypatch.setattr(logger, "handlers", [h for h in logger.handlers if not type(h).__module__.startswith("prefect")])


def _cli(*args: str):
    res = runner.invoke(app, list(args))
    return res.exit_code, res.output


def _one_error(out: str) -> str:
    """The one `error: ...` line of a CLI output (progress lines aside); fails on a traceback or several errors."""
    lines = [line.split("\r")[-1].split("]")[-1] for line in out.splitlines()]  # after a progress bar, on its line
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in out, out
    return errors[0]


def _args(root: Path, synthetic_root: Path, overrides: list[str]) -> list[str]:
    out = ["--dataset", "synthetic", "--video-root", str(synthetic_root), "--artifacts", str(root)]
    for o in overrides:
        out += ["--set", o]
    return out


def _moved(args: list[str], old: Path, new: Path) -> list[str]:
    return [str(new) if a == str(old) else a for a in args]


def _flip(path: Path, at: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2 if at is None else at] ^= 0x5A
    path.write_bytes(bytes(data))


def _replace_once(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert text.count(old) >= 1, (old, path)
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def _only_version(root: Path, stage: str) -> Path:
    (folder,) = [p for p in (root / stage / "synthetic").iterdir() if p.is_dir()]
    return folder


@pytest.fixture(scope="module")
def built(synthetic_root, tiny_overrides, tmp_path_factory):
    """(root, stage args, export args, bundle folder): the tiny pipeline through train, and its bundle."""
    root = tmp_path_factory.mktemp("integrity") / "art"
    args = _args(root, synthetic_root, tiny_overrides)
    for name in ("descriptions", "frames", "embeddings", "train"):
        code, out = _cli(name, *args)
        assert code == 0, out
    export = ["export", "--dataset", "synthetic", "--artifacts", str(root), "--set", f"dataset.video_root={synthetic_root}"]
    for o in tiny_overrides:
        export += ["--set", o]
    bundle = root.parent / "bundle"
    code, out = _cli(*export, "--out", str(bundle))
    assert code == 0, out
    return root, args, export, bundle


@pytest.fixture(scope="module")
def support_and_queries(synthetic_root, tmp_path_factory) -> tuple[Path, list[str]]:
    """A support folder (2 test classes, 1 clip each, linked) and one query clip of each."""
    by_class: dict[str, list[str]] = {}
    with open(synthetic_root / "synthetic.csv", newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            if row["split"] == "test":
                by_class.setdefault(row["path"].split("/")[0], []).append(str(synthetic_root / row["path"]))
    support = tmp_path_factory.mktemp("support")
    classes = sorted(by_class)[:2]
    for cls in classes:
        (support / cls).mkdir()
        os.symlink(by_class[cls][0], support / cls / Path(by_class[cls][0]).name)
    return support, [by_class[c][1] for c in classes]


def _predict(bundle: Path, support: Path, *queries: str, extra: tuple[str, ...] = ()):
    return _cli("predict", "--model", str(bundle), "--support", str(support), "--query", *queries, *extra)


# ------------------------------------------------------------------------------------------------ bundles


@pytest.mark.slow
@pytest.mark.parametrize(
    "name,damage",
    [
        ("weights.safetensors", lambda p: _flip(p)),
        ("bundle.json", lambda p: _replace_once(p, '"template": "', '"template": "X')),  # model.prompt_template's copy
        ("bundle.json", lambda p: _replace_once(p, '"prompt_template": "', '"prompt_template": "X')),
        ("bundle.json", lambda p: _replace_once(p, '"train": "train/synthetic/', '"train": "train/synthetic/0')),  # lineage
        ("descriptions.json", lambda p: _replace_once(p, '"sentences": [\n      "', '"sentences": [\n      "X')),
    ],
    ids=["weights-byte", "prompt-template", "model-prompt-template", "lineage", "description-sentence"],
)
def test_a_changed_bundle_is_refused(built, support_and_queries, tmp_path, name, damage):
    _, _, _, bundle = built
    support, queries = support_and_queries
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    damage(copy / name)
    code, out = _predict(copy, support, *queries)
    assert code == 2, out
    line = _one_error(out)
    assert repr(name) in line and "re-export" in line and "fsar export" in line, line
    assert "score:" not in out  # nothing was predicted
    from pipeline.predict import FewShotClassifier
    from pipeline.predict.bundle import BundleError

    with pytest.raises(BundleError, match=name.replace(".", r"\.")):
        FewShotClassifier.load(copy, device="cpu")


@pytest.mark.slow
def test_an_intact_bundle_predicts_and_a_missing_manifest_is_refused(built, support_and_queries, tmp_path):
    _, _, _, bundle = built
    support, queries = support_and_queries
    code, out = _predict(bundle, support, *queries)
    assert code == 0 and "score:" in out, out
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert set(manifest["files"]) == {"bundle.json", "weights.safetensors", "descriptions.json"}
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    (copy / "manifest.json").unlink()  # deleting the checksums must not switch the check off
    code, out = _predict(copy, support, *queries)
    assert code == 2 and "manifest.json" in _one_error(out) and "re-export" in out, out


@pytest.mark.slow
def test_bundle_files_share_one_file_mode(built):
    _, _, _, bundle = built
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in bundle.iterdir()}
    assert len(set(modes.values())) == 1, modes


@pytest.mark.slow
def test_export_refuses_a_damaged_checkpoint(built, tmp_path):
    root, _, export, _ = built
    copy = tmp_path / "art"
    shutil.copytree(root, copy)
    train = _only_version(copy, "train")
    _flip(train / "last.pt")
    moved = _moved(export, root, copy)
    out_dir = tmp_path / "b1"
    code, out = _cli(*moved, "--checkpoint", str(train / "last.pt"), "--out", str(out_dir))
    assert code == 2 and "'last.pt'" in _one_error(out) and "sha256" in out, out
    assert not out_dir.exists()
    # the same refusal as `fsar evaluate --checkpoint` on that file
    code, ev = _cli("evaluate", "--dataset", "synthetic", *moved[3:], "--checkpoint", str(train / "last.pt"))
    assert code == 2 and "'last.pt'" in _one_error(ev), ev
    # and from the train artifact itself
    _flip(train / "best.pt")
    code, out = _cli(*moved, "--out", str(tmp_path / "b2"))
    assert code == 2 and "'best.pt'" in _one_error(out) and not (tmp_path / "b2").exists(), out


# ------------------------------------------------------------------------------ "exists" means intact


@pytest.mark.slow
@pytest.mark.parametrize("keep_mtime", [False, True], ids=["flipped", "flipped-mtime-restored"])
def test_a_flipped_byte_is_never_already_exists(built, tmp_path, keep_mtime):
    root, args, _, _ = built
    copy = tmp_path / "art"
    shutil.copytree(root, copy)
    moved = _moved(args, root, copy)
    code, out = _cli("frames", *moved)
    assert code == 0 and "already exists, skipped" in out, out  # intact: skipped (and its check cached)
    index = _only_version(copy, "frames") / "index.parquet"
    st = index.stat()
    _flip(index)
    if keep_mtime:
        os.utime(index, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert index.stat().st_size == st.st_size
    code, out = _cli("frames", *moved)
    line = _one_error(out)
    assert code == 2 and "'index.parquet'" in line and "sha256" in line and "re-run the frames stage" in line, out
    assert "skipped" not in out
    code, out = _cli("catalog", "--artifacts", str(copy))
    assert code == 0 and "'index.parquet' does not match its sha256" in out, out
    code, out = _cli("plan", *moved, "--json")
    frames = next(p for p in json.loads(out) if p["stage"] == "frames")
    assert frames["status"] == "build" and "index.parquet" in frames["reason"], frames


def test_the_existence_check_hashes_once_then_trusts_its_cache(store, monkeypatch):
    import pandas as pd

    from pipeline import artifacts
    from pipeline.contract import build_once

    def build(st):
        st.write_parquet("t.parquet", pd.DataFrame({"a": list(range(1000))}))
        st.path("more.bin").write_bytes(os.urandom(4096))

    ref = build_once(store, "toy", "ds", config={"k": 1}, inputs={}, main="t.parquet", build=build)
    calls: list[str] = []
    real = artifacts.sha256_file
    monkeypatch.setattr(artifacts, "sha256_file", lambda path, *a, **k: calls.append(str(path)) or real(path, *a, **k))
    cache = Path(store.root) / ".cache" / "verified"
    # files written less than RACY_NS ago are never remembered (a change in the same timestamp tick would not show)
    assert build_once(store, "toy", "ds", config={"k": 1}, inputs={}, main="t.parquet", build=build).skipped
    assert build_once(store, "toy", "ds", config={"k": 1}, inputs={}, main="t.parquet", build=build).skipped
    assert sorted(Path(c).name for c in calls) == ["more.bin", "more.bin", "t.parquet", "t.parquet"]
    monkeypatch.setattr(artifacts, "RACY_NS", 0)  # as if the files were old: no test waits for the clock
    calls.clear()
    assert build_once(store, "toy", "ds", config={"k": 1}, inputs={}, main="t.parquet", build=build).skipped
    assert sorted(Path(c).name for c in calls) == ["more.bin", "t.parquet"]  # every file hashed once
    assert len(list(cache.rglob("*.json"))) == 1 and not list(cache.rglob("*.part"))
    calls.clear()
    assert store.exists("toy", "ds", ref.version) == ref and ArtifactStore(store.root).catalog()["problem"].isna().all()
    assert calls == []  # unchanged files (same size, mtime and ctime): no re-hash
    _flip(Path(ref.path) / "more.bin")
    with pytest.raises(artifacts.ArtifactError, match="'more.bin' does not match its sha256"):
        store.exists("toy", "ds", ref.version)
    assert [Path(c).name for c in calls] == ["more.bin"]  # only the changed file is hashed again
    assert ArtifactStore(store.root).problems(ref) != []  # `fsar verify` (full) always re-hashes


# --------------------------------------------------------------------------------------- manifests


@pytest.mark.slow
def test_an_edited_manifest_is_reported_by_verify_and_never_skipped(built, tmp_path):
    root, args, _, _ = built
    copy = tmp_path / "art"
    shutil.copytree(root, copy)
    manifest = _only_version(copy, "frames") / "manifest.json"
    _replace_once(manifest, '"storage_size": 40', '"storage_size": 41')
    code, out = _cli("verify", "--artifacts", str(copy))
    assert code == 2 and "BROKEN  frames/synthetic/" in out and "1 broken" in out, out
    assert "version" in out and "config" in out, out
    code, out = _cli("frames", *_moved(args, root, copy))
    assert code == 2 and "manifest.json" in _one_error(out) and "skipped" not in out, out


@pytest.mark.slow
def test_a_flipped_byte_in_a_manifest_file_list_is_a_manifest_problem(built, tmp_path):
    root, _, _, _ = built
    copy = tmp_path / "art"
    shutil.copytree(root, copy)
    manifest = _only_version(copy, "frames") / "manifest.json"
    text = manifest.read_text()
    _replace_once(manifest, '"index.parquet": "', '"indey.parquet": "')  # one byte: x -> y in a name of the file list
    assert len(manifest.read_text()) == len(text)
    code, out = _cli("verify", "--artifacts", str(copy))
    assert code == 2 and "manifest.json" in out and "is missing" not in out, out


def test_a_version_that_does_not_match_its_config_is_reported(store):
    import pandas as pd

    from pipeline.contract import build_once

    ref = build_once(store, "toy", "ds", config={"k": 1}, inputs={}, main="t.parquet",
                     build=lambda st: st.write_parquet("t.parquet", pd.DataFrame({"a": [1]})))
    path = Path(ref.path) / "manifest.json"
    m = json.loads(path.read_text())
    m.pop("manifest_sha256", None)  # a manifest of an older fsar (no checksum of its own): the version still tells
    m["config"]["k"] = 2
    path.write_text(json.dumps(m))
    problems = store.problems(ref)
    assert any("version" in p and "config" in p for p in problems), problems


# ------------------------------------------------------------------------------------ OS errors, one line


def test_a_video_list_that_is_not_utf8_names_its_line(tmp_path):
    videos = tmp_path / "list.csv"
    videos.write_bytes(b"path,label,split\na.mp4,walk,train\nb\xe9.mp4,run,train\n")
    code, out = _cli("frames", "--dataset", "custom", "--video-list", str(videos), "--artifacts", str(tmp_path / "art"))
    line = _one_error(out)
    assert code == 2 and "line 3" in line and "UTF-8" in line and str(videos) in line, out


def test_a_split_file_that_is_not_utf8_names_its_line(tmp_path):
    from pipeline.datasets import DatasetError
    from pipeline.datasets.benchmarks import _read_lines

    split = tmp_path / "test.txt"
    split.write_bytes(b"test0 a/b.avi\ntest1 c/\xff.avi\n")
    with pytest.raises(DatasetError, match=r"split file .*test\.txt' is not UTF-8 text: line 2, column 9 holds the byte 0xff"):
        _read_lines(split)


def test_an_unreadable_video_list_is_one_line(tmp_path, monkeypatch):
    videos = tmp_path / "list.csv"
    videos.write_text("path,label,split\na.mp4,walk,train\n")
    import io

    real = io.open

    def denied(file, *a, **k):  # what reading a file of another user without rights gives (tests may run as root)
        if isinstance(file, (str, os.PathLike)) and os.fspath(file) == str(videos):
            raise PermissionError(errno.EACCES, "Permission denied", str(videos))
        return real(file, *a, **k)

    monkeypatch.setattr(io, "open", denied)
    code, out = _cli("frames", "--dataset", "custom", "--video-list", str(videos), "--artifacts", str(tmp_path / "art"))
    line = _one_error(out)
    assert code == 2 and "Permission denied" in line and str(videos) in line, out


@pytest.mark.parametrize("command", ["frames", "catalog", "verify", "plan", "export", "evaluate"])
@pytest.mark.parametrize("url", ["s3://bucket/x", "gcs://bucket/x", "simplecache::s3://bucket/x"])
def test_an_unsupported_url_scheme_is_refused_before_any_backend_import(command, url, tmp_path):
    args = [command, "--artifacts", url]
    if command in ("frames", "plan", "evaluate"):
        args += ["--dataset", "synthetic", "--video-root", str(tmp_path)]
    if command == "export":
        args += ["--dataset", "synthetic", "--out", str(tmp_path / "b")]
    code, out = _cli(*args)
    line = _one_error(out)
    assert code == 2 and "is not supported" in line and "file://" in line, out


@pytest.mark.slow
@pytest.mark.parametrize("where", ["frames", "frames/synthetic"])
def test_a_file_where_a_stage_folder_must_go_is_refused_before_decoding(synthetic_root, tiny_overrides, tmp_path, where):
    root = tmp_path / "art"
    (root / where).parent.mkdir(parents=True, exist_ok=True)
    (root / where).write_text("mine")
    code, out = _cli("frames", *_args(root, synthetic_root, tiny_overrides))
    line = _one_error(out)
    assert code == 2 and str(root / where) in line and "not a folder" in line, out
    assert "frames: building" not in out and not (root / ".staging" / "frames").exists()  # nothing decoded
    assert (root / where).read_text() == "mine"


@pytest.mark.slow
def test_no_space_left_is_one_line_and_the_rerun_matches(built, synthetic_root, tiny_overrides, tmp_path, monkeypatch):
    from pipeline.frames import stage as frames_stage

    ref_root = built[0]
    root = tmp_path / "art"
    args = _args(root, synthetic_root, tiny_overrides)
    real = frames_stage._write_index

    def full(staging, rows):
        raise OSError(errno.ENOSPC, "No space left on device", str(staging.dir / "index.parquet"))

    monkeypatch.setattr(frames_stage, "_write_index", full)
    code, out = _cli("frames", *args)
    line = _one_error(out)
    assert code == 2 and "no space left" in line.lower() and str(root) in line, out
    assert not (root / "frames").exists()  # nothing published
    monkeypatch.setattr(frames_stage, "_write_index", real)
    code, out = _cli("frames", *args)
    assert code == 0, out
    got, want = _only_version(root, "frames"), _only_version(ref_root, "frames")
    assert got.name == want.name
    assert json.loads((got / "manifest.json").read_text())["files"] == json.loads((want / "manifest.json").read_text())["files"]


@pytest.mark.slow
def test_no_space_left_in_train_is_one_line(built, tmp_path, monkeypatch):
    import torch

    root, args, _, _ = built
    copy = tmp_path / "art"
    shutil.copytree(root, copy)
    moved = _moved(args, root, copy)

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    code, out = _cli("train", *moved, "--set", "train.seed=3")
    line = _one_error(out)
    assert code == 2 and "no space left" in line.lower() and str(copy) in line, out


def test_os_errors_become_one_line_naming_the_file():
    from pipeline.errors import os_error_message

    msg = os_error_message(PermissionError(errno.EACCES, "Permission denied", "/data/x.parquet"))
    assert "/data/x.parquet" in msg and "Permission denied" in msg and "\n" not in msg
    msg = os_error_message(OSError(errno.ENOSPC, "No space left on device", "/data/y"))
    assert "no space left" in msg.lower() and "/data/y" in msg
    msg = os_error_message(OSError(errno.EROFS, "Read-only file system", "/ro/z"))
    assert "/ro/z" in msg and "read-only" in msg.lower()


# ------------------------------------------------------------------------------------------- predict


@pytest.mark.slow
def test_every_unreadable_query_is_an_error_row(built, support_and_queries, tmp_path):
    _, _, _, bundle = built
    support, queries = support_and_queries
    empty = tmp_path / "looks_like.mp4"
    empty.mkdir()  # an empty folder named like a video
    table = tmp_path / "out.csv"
    code, out = _predict(bundle, support, queries[0], str(empty), queries[1], extra=("--out", str(table)))
    assert code == 2 and "1 of 3 queries" in _one_error(out), out
    import pandas as pd

    df = pd.read_csv(table)
    assert df["query"].tolist() == [queries[0], str(empty), queries[1]]
    assert df["prediction"].isna().tolist() == [False, True, False]
    assert "folder" in df.loc[1, "error"], df.loc[1, "error"]


@pytest.mark.slow
def test_a_skipped_entry_in_a_support_class_folder_is_reported(built, support_and_queries, tmp_path):
    _, _, _, bundle = built
    support, queries = support_and_queries
    copy = tmp_path / "support"
    shutil.copytree(support, copy, symlinks=True)
    cls = sorted(p.name for p in copy.iterdir())[0]
    (copy / cls / "extra_clip.mp4").mkdir()  # a folder named like a video inside a class folder
    (copy / cls / "notes.txt").write_text("x")
    code, out = _predict(bundle, copy, *queries)
    assert code == 0, out
    assert "extra_clip.mp4" in out and "skipped" in out and "notes.txt" in out, out
